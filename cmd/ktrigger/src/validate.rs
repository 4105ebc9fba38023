//! `ktrigger validate`: every problem of every file, one per line with where it is, or as JSON
//! or YAML for CI and editors.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use ktrigger_api::{Document, DocumentError, FieldPositions, check_documents, field_positions};
use ktrigger_core::{
    CEL_COST_LIMIT, CelExpr, CredentialPolicy, Engine, Registry, default_name, expand_paths, trigger_references,
};
use ktrigger_sources::WebhookListener;
use serde::Serialize;
use serde_json::Value;

use ktrigger_plugin::PluginManager;

use crate::{Output, offline_registry, suggest};

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Severity {
    Error,
    Warning,
    Note,
}

/// One problem, located as precisely as known.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Problem {
    severity: Severity,
    file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    column: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trigger: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    suggestion: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        };
        write!(f, "{severity}: {}", self.file)?;
        match (self.line, self.column, self.document) {
            (Some(line), Some(column), _) => write!(f, ":{line}:{column}")?,
            (_, _, Some(document)) => write!(f, ": document {document}")?,
            _ => {}
        }
        if let Some(trigger) = &self.trigger {
            write!(f, ": trigger {trigger}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(suggestion) = &self.suggestion {
            write!(f, " (did you mean `{suggestion}`?)")?;
        }
        Ok(())
    }
}

/// The whole answer, as printed with `-o json|yaml`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    ok: bool,
    trigger_services: usize,
    triggers: usize,
    errors: usize,
    warnings: usize,
    problems: Vec<Problem>,
}

/// What one file holds, with the positions of its fields.
struct FileCheck<'a> {
    file: String,
    positions: Vec<FieldPositions>,
    registry: &'a Arc<Registry>,
    strict: bool,
    problems: Vec<Problem>,
}

impl FileCheck<'_> {
    fn push(
        &mut self,
        severity: Severity,
        document: Option<usize>,
        trigger: Option<String>,
        field: Option<String>,
        message: String,
    ) {
        let positions = document.and_then(|index| self.positions.get(index.saturating_sub(1)));
        // The engine names fields from the spec; the CRD form has them under `spec.`.
        let field = field.map(|field| match positions {
            Some(positions) if field.starts_with("triggers[") && positions.find("spec").is_some() => {
                format!("spec.{field}")
            }
            _ => field,
        });
        let position = positions.zip(field.as_deref()).and_then(|(positions, field)| positions.find(field));
        let suggestion = suggest::did_you_mean(&message);
        self.problems.push(Problem {
            severity,
            file: self.file.clone(),
            line: position.map(|p| p.line),
            column: position.map(|p| p.column),
            document,
            trigger,
            field,
            message,
            suggestion,
        });
    }

    fn document_error(&mut self, error: DocumentError) {
        match error {
            DocumentError::Yaml { index, position, message } => self.problems.push(Problem {
                severity: Severity::Error,
                file: self.file.clone(),
                line: position.map(|p| p.line),
                column: position.map(|p| p.column),
                document: Some(index),
                trigger: None,
                field: None,
                message: format!("invalid YAML: {message}"),
                suggestion: None,
            }),
            DocumentError::Invalid { index, field, trigger, message } => {
                self.push(Severity::Error, Some(index), trigger, Some(field), message)
            }
            other @ DocumentError::OtherKind { index, .. } => {
                let message = other.to_string();
                let message = message.split_once(": ").map_or(message.clone(), |(_, rest)| rest.to_string());
                self.push(Severity::Warning, Some(index), None, None, message)
            }
        }
    }

    /// Checks a document as the engine would load it: types, properties, expressions.
    fn document(&mut self, document: &Document) {
        // Each document gets its own policy, so that what it could not read is its own.
        let credentials = if self.strict { CredentialPolicy::unrestricted() } else { CredentialPolicy::offline() };
        let engine = Engine::builder().registry(self.registry.clone()).credentials(credentials.clone()).build();
        let namespace = document.namespace.clone().unwrap_or_default();
        let index = Some(document.index);
        for problem in engine.check(&namespace, &document.name, &document.spec) {
            for message in &problem.messages {
                let (field, message) = split_field(message);
                self.push(Severity::Error, index, Some(problem.id.trigger.clone()), field, message);
            }
        }
        let names = ktrigger_api::trigger_names(&document.spec);
        for (position, (trigger, name)) in document.spec.triggers.iter().zip(&names).enumerate() {
            let expressions =
                [("filter", trigger.filter.as_deref()), ("dedup.key", trigger.dedup.as_ref().map(|d| d.key.as_str()))];
            for (field, source) in expressions {
                let Some(cost) = source.and_then(|s| CelExpr::filter(s).ok()).map(|e| e.estimated_cost()) else {
                    continue;
                };
                if cost > CEL_COST_LIMIT / 10 {
                    let message = format!("estimated cost {cost} of the limit {CEL_COST_LIMIT}");
                    self.push(
                        Severity::Note,
                        index,
                        Some(name.clone()),
                        Some(format!("triggers[{position}].{field}")),
                        message,
                    );
                }
            }
            let properties = serde_json::to_value(trigger).unwrap_or(Value::Null);
            for reference in trigger_references(trigger) {
                let field = find_field(&properties, &|key, value| {
                    key == "secretKeyRef"
                        && value.get("name").and_then(Value::as_str) == Some(reference.name.as_str())
                        && value.get("key").and_then(Value::as_str) == Some(reference.key.as_str())
                });
                let message = format!(
                    "Secret {:?} key {:?} is read from the cluster when the trigger loads; not checked here",
                    reference.name, reference.key
                );
                self.push(
                    Severity::Warning,
                    index,
                    Some(name.clone()),
                    field.map(|f| format!("triggers[{position}].{f}")),
                    message,
                );
            }
        }
        for unread in credentials.unread() {
            let (kind, what) = match unread.strip_prefix("environment variable ") {
                Some(name) => ("env", name),
                None => ("file", unread.strip_prefix("file ").unwrap_or(&unread)),
            };
            let found =
                document.spec.triggers.iter().zip(&names).enumerate().find_map(|(position, (trigger, name))| {
                    let value = serde_json::to_value(trigger).unwrap_or(Value::Null);
                    let field = find_field(&value, &|_, value| value.get(kind).and_then(Value::as_str) == Some(what))?;
                    Some((name.clone(), format!("triggers[{position}].{field}")))
                });
            let (trigger, field) = found.unzip();
            let message = format!(
                "{unread} cannot be read here; it is read when the triggers run (--strict makes this an error)"
            );
            self.push(Severity::Warning, index, trigger, field, message);
        }
    }
}

/// `ktrigger validate`: every problem of every file, then a summary; non-zero if any error.
pub fn validate(
    files: &[PathBuf],
    event_mappings: Option<&Path>,
    strict: bool,
    output: Output,
    plugins: &PluginManager,
) -> anyhow::Result<ExitCode> {
    let mappings = match event_mappings {
        Some(path) => ktrigger_kube::presets::load_mappings_file(path)?,
        None => Vec::new(),
    };
    let cluster = ktrigger_kube::Cluster::offline_with_mappings(mappings);
    let registry = Arc::new(offline_registry(WebhookListener::detached(), cluster, plugins));
    let (paths, path_errors) = expand_paths(files);
    let mut problems: Vec<Problem> = path_errors
        .into_iter()
        .map(|(file, message)| Problem {
            severity: Severity::Error,
            file,
            line: None,
            column: None,
            document: None,
            trigger: None,
            field: None,
            message,
            suggestion: None,
        })
        .collect();
    let mut seen = HashSet::new();
    let (mut services, mut triggers) = (0, 0);
    for path in paths {
        let mut check = FileCheck {
            file: path.display().to_string(),
            positions: Vec::new(),
            registry: &registry,
            strict,
            problems: Vec::new(),
        };
        match std::fs::read_to_string(&path) {
            Err(e) => check.push(Severity::Error, None, None, None, format!("cannot read: {e}")),
            Ok(text) => {
                check.positions = field_positions(&text);
                let documents = check_documents(&text, &default_name(&path));
                if documents.is_empty() {
                    check.push(Severity::Error, None, None, None, "no documents".into());
                }
                let mut failed = HashSet::new();
                for document in documents {
                    match document {
                        Err(error) => {
                            if let DocumentError::Invalid { index, .. } = &error {
                                failed.insert(*index);
                            }
                            check.document_error(error);
                        }
                        Ok(document) => {
                            let namespace = document.namespace.clone().unwrap_or_default();
                            if !failed.contains(&document.index) {
                                services += 1;
                                triggers += document.spec.triggers.len();
                            }
                            if !seen.insert((namespace, document.name.clone())) {
                                let message = format!(
                                    "TriggerService {:?} is defined twice; names must be unique",
                                    document.name
                                );
                                check.push(Severity::Error, Some(document.index), None, None, message);
                                continue;
                            }
                            check.document(&document);
                        }
                    }
                }
            }
        }
        // Within a file, in reading order; problems without a line come first.
        check.problems.sort_by_key(|p| (p.document, p.line, p.column));
        problems.extend(check.problems);
    }
    let errors = problems.iter().filter(|p| p.severity == Severity::Error).count();
    let warnings = problems.iter().filter(|p| p.severity == Severity::Warning).count();
    let report = Report { ok: errors == 0, trigger_services: services, triggers, errors, warnings, problems };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(&report)?),
        Output::Text => print_text(&report),
    }
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Errors on stdout, warnings and notes on stderr, then the summary on stdout.
fn print_text(report: &Report) {
    for problem in report.problems.iter().filter(|p| p.severity != Severity::Error) {
        eprintln!("{problem}");
    }
    for problem in report.problems.iter().filter(|p| p.severity == Severity::Error) {
        println!("{problem}");
    }
    if report.ok {
        let warnings = if report.warnings == 0 {
            "no problems".to_string()
        } else {
            format!("no errors, {} warning(s)", report.warnings)
        };
        println!("ok: {} TriggerService(s), {} trigger(s), {warnings}", report.trigger_services, report.triggers);
    } else {
        println!("{} problem(s) found", report.errors);
    }
}

/// Splits `triggers[0].source: properties.url: message` into the whole field path
/// (`triggers[0].source.properties.url`) and the message.
fn split_field(message: &str) -> (Option<String>, String) {
    let mut path = Vec::new();
    let mut rest = message;
    while let Some((head, tail)) = rest.split_once(": ")
        && !head.is_empty()
        && head.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '[' | ']' | '_' | '-'))
        && head.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
    {
        path.push(head);
        rest = tail;
    }
    if path.is_empty() { (None, message.to_string()) } else { (Some(path.join(".")), rest.to_string()) }
}

/// Most nodes looked at while searching a trigger for where a reference is.
const MAX_SEARCH: usize = 10_000;

/// The path of the first property (depth first) whose key and value satisfy `matches`.
fn find_field(value: &Value, matches: &dyn Fn(&str, &Value) -> bool) -> Option<String> {
    let mut stack: Vec<(String, &Value)> = vec![(String::new(), value)];
    let mut visited = 0usize;
    while let Some((path, node)) = stack.pop() {
        visited += 1;
        if visited > MAX_SEARCH {
            return None;
        }
        match node {
            Value::Object(fields) => {
                for (key, field) in fields.iter().rev() {
                    let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                    if matches(key, field) {
                        return Some(child);
                    }
                    stack.push((child, field));
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate().rev() {
                    if matches("", item) {
                        return Some(format!("{path}[{index}]"));
                    }
                    stack.push((format!("{path}[{index}]"), item));
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_are_joined_across_nested_prefixes() {
        assert_eq!(
            split_field("triggers[1].source: properties.schedule: invalid cron: 6 fields"),
            (Some("triggers[1].source.properties.schedule".into()), "invalid cron: 6 fields".into())
        );
        assert_eq!(
            split_field("triggers[0].filter: line 1, column 8: unexpected"),
            (Some("triggers[0].filter".into()), "line 1, column 8: unexpected".into())
        );
        assert_eq!(split_field("no field here"), (None, "no field here".into()));
    }

    #[test]
    fn references_are_found_by_their_property_path() {
        let value = serde_json::json!({"destinations": [{"properties": {"webhookUrlFrom": {"env": "SLACK"}}}]});
        let field = find_field(&value, &|_, v| v.get("env").and_then(Value::as_str) == Some("SLACK"));
        assert_eq!(field.as_deref(), Some("destinations[0].properties.webhookUrlFrom"));
    }
}
