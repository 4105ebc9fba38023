//! Commands that look at configuration without running it: eval, sources, destinations.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use chrono::Utc;
use ktrigger_core::cel::{CelExpr, Vars};
use ktrigger_core::event::{CONTEXT_NAMES, rfc3339};
use ktrigger_core::registry::TypeDoc;
use serde_json::Value;

use ktrigger_sources::WebhookListener;

use crate::offline_registry;

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
pub fn list_sources() -> anyhow::Result<ExitCode> {
    let registry = offline_registry(WebhookListener::detached(), ktrigger_kube::Cluster::offline());
    print_docs(&registry.source_docs());
    Ok(ExitCode::SUCCESS)
}

/// `ktrigger destinations`.
pub fn list_destinations() -> anyhow::Result<ExitCode> {
    let registry = offline_registry(WebhookListener::detached(), ktrigger_kube::Cluster::offline());
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
