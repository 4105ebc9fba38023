//! Commands that look at configuration without running it: validate, eval, sources, destinations.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;
use ktrigger_api::trigger_names;
use ktrigger_core::cel::limits::COST_LIMIT;
use ktrigger_core::cel::{CelExpr, Vars};
use ktrigger_core::config::load_paths;
use ktrigger_core::credentials::CredentialPolicy;
use ktrigger_core::engine::{Engine, EngineOptions};
use ktrigger_core::event::{CONTEXT_NAMES, rfc3339};
use ktrigger_core::registry::TypeDoc;
use ktrigger_core::secrets::trigger_references;
use ktrigger_plugin::PluginManager;
use serde_json::Value;

use ktrigger_sources::WebhookListener;

use crate::offline_registry;

/// `ktrigger validate`: every problem of every file, then a summary; non-zero if any.
pub fn validate(
    files: &[PathBuf],
    event_mappings: Option<&Path>,
    strict: bool,
    plugins: &PluginManager,
) -> anyhow::Result<ExitCode> {
    let config = load_paths(files);
    let mappings = match event_mappings {
        Some(path) => ktrigger_kube::presets::load_mappings_file(path)?,
        None => Vec::new(),
    };
    let cluster = ktrigger_kube::Cluster::offline_with_mappings(mappings);
    let registry = offline_registry(WebhookListener::detached(), cluster, plugins);
    // Credentials are the running process's business: offline, an unset variable or a missing
    // file is a warning unless `--strict`.
    let credentials = if strict { CredentialPolicy::unrestricted() } else { CredentialPolicy::offline() };
    let engine =
        Engine::new(Arc::new(registry), EngineOptions { credentials: credentials.clone(), ..Default::default() });
    let mut problems = config.errors.clone();
    let mut triggers = 0;
    let mut unread = 0;
    for service in &config.services {
        triggers += service.spec.triggers.len();
        unread += service.spec.triggers.iter().map(|t| trigger_references(t).len()).sum::<usize>();
        for problem in engine.check(&service.namespace, &service.name, &service.spec) {
            problems.push(format!("{}: {problem}", service.origin));
        }
        for (index, (trigger, name)) in service.spec.triggers.iter().zip(trigger_names(&service.spec)).enumerate() {
            let expressions =
                [("filter", trigger.filter.as_deref()), ("dedup.key", trigger.dedup.as_ref().map(|d| d.key.as_str()))];
            for (field, source) in expressions {
                let Some(cost) = source.and_then(|s| CelExpr::filter(s).ok()).map(|e| e.estimated_cost()) else {
                    continue;
                };
                if cost > COST_LIMIT / 10 {
                    eprintln!(
                        "note: {}: trigger {name}: triggers[{index}].{field}: estimated cost {cost} of the limit {COST_LIMIT}",
                        service.origin
                    );
                }
            }
        }
    }
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
    }
    for unread in credentials.unread() {
        eprintln!(
            "warning: {unread} cannot be read here; it is read when the triggers run (--strict makes this an error)"
        );
    }
    if unread > 0 {
        eprintln!(
            "note: {unread} secretKeyRef value(s) are read from the cluster when the triggers load; not checked here"
        );
    }
    for problem in &problems {
        println!("error: {problem}");
    }
    if problems.is_empty() {
        println!("ok: {} TriggerService(s), {triggers} trigger(s), no problems", config.services.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} problem(s) found", problems.len());
        Ok(ExitCode::FAILURE)
    }
}

/// `ktrigger eval`: compiles the filter, evaluates it against the document and prints the result.
pub fn eval(filter: &str, event: &Path) -> anyhow::Result<ExitCode> {
    let text = if event.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("cannot read stdin")?;
        text
    } else {
        std::fs::read_to_string(event).with_context(|| format!("cannot read {}", event.display()))?
    };
    let document: Value =
        serde_yaml::from_str(&text).with_context(|| format!("{} is not JSON or YAML", event.display()))?;
    let Value::Object(mut fields) = document else {
        anyhow::bail!("{} must hold a mapping with some of: {}", event.display(), CONTEXT_NAMES.join(", "));
    };
    if let Some(unknown) = fields.keys().find(|k| !CONTEXT_NAMES.contains(&k.as_str())) {
        anyhow::bail!(
            "unknown name {unknown:?} in {}; expected some of: {}",
            event.display(),
            CONTEXT_NAMES.join(", ")
        );
    }
    if let Some(object) = fields.get("object").cloned() {
        fields.entry("context").or_insert_with(|| serde_json::json!({"data": object}));
    }
    fields.entry("now").or_insert_with(|| Value::String(rfc3339(Utc::now())));
    let expr = match CelExpr::filter(filter) {
        Ok(expr) => expr,
        Err(e) => {
            println!("invalid filter: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let null = Value::Null;
    let pairs: Vec<(&str, &Value)> =
        CONTEXT_NAMES.iter().map(|name| (*name, fields.get(*name).unwrap_or(&null))).collect();
    match expr.eval_json(&Vars::from_json(&pairs)) {
        Ok(Value::Bool(matched)) => {
            println!("{matched}");
            Ok(if matched { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Ok(other) => {
            println!("{other}");
            println!("not matched: the result is not a bool, so as a filter it never matches");
            Ok(ExitCode::FAILURE)
        }
        Err(reason) => {
            println!("not matched: evaluation error: {reason}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `ktrigger sources`.
pub fn list_sources(plugins: &PluginManager) -> anyhow::Result<ExitCode> {
    let registry = offline_registry(WebhookListener::detached(), ktrigger_kube::Cluster::offline(), plugins);
    print_docs(&registry.source_docs());
    Ok(ExitCode::SUCCESS)
}

/// `ktrigger destinations`.
pub fn list_destinations(plugins: &PluginManager) -> anyhow::Result<ExitCode> {
    let registry = offline_registry(WebhookListener::detached(), ktrigger_kube::Cluster::offline(), plugins);
    print_docs(&registry.destination_docs());
    Ok(ExitCode::SUCCESS)
}

fn print_docs(docs: &[&TypeDoc]) {
    for doc in docs {
        let aliases =
            if doc.aliases.is_empty() { String::new() } else { format!(" (also: {})", doc.aliases.join(", ")) };
        println!("{}{aliases}\n  {}\n  properties:", doc.name, doc.summary);
        for property in doc.properties {
            let required = if property.required { " (required)" } else { "" };
            println!("    {}{required}: {}", property.name, property.description);
        }
        println!("  example:");
        for line in doc.example.trim_end().lines() {
            println!("    {line}");
        }
        println!();
    }
}
