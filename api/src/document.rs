//! Splitting YAML text into TriggerService documents, in both the CRD form and kube-trigger's
//! plain `triggers:` file form.

use std::fmt;

use serde::Deserialize;
use serde_yaml::Value;

use crate::locate::Position;
use crate::types::{TriggerFile, TriggerServiceSpec};

/// API versions read as a TriggerService: ours, and kube-trigger's for migration.
const API_VERSIONS: [&str; 2] = ["ktrigger.dev/v1alpha1", "standard.oam.dev/v1alpha1"];

/// One TriggerService read from a YAML document.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// 1-based position of the document in its text.
    pub index: usize,
    /// `metadata.name`, or the default name given for plain `triggers:` files.
    pub name: String,
    /// `metadata.namespace`, when set.
    pub namespace: Option<String>,
    /// The spec, with kube-trigger aliases still as written.
    pub spec: TriggerServiceSpec,
}

/// Why a document could not be read as a TriggerService.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentError {
    /// The text is not valid YAML.
    Yaml {
        /// 1-based document position.
        index: usize,
        /// Where the parser stopped, when it knows.
        position: Option<Position>,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A TriggerService whose fields do not fit the API.
    Invalid {
        /// 1-based document position.
        index: usize,
        /// Path of the offending field, e.g. `spec.triggers[0].filters`.
        field: String,
        /// Name of the trigger the field belongs to, when there is one.
        trigger: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A document of another kind (e.g. a ConfigMap next to the triggers): skipped.
    OtherKind {
        /// 1-based document position.
        index: usize,
        /// Its `apiVersion`/`kind`.
        kind: String,
    },
}

impl DocumentError {
    /// Whether this only means the document is something else and may be skipped.
    pub fn is_other_kind(&self) -> bool {
        matches!(self, DocumentError::OtherKind { .. })
    }
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocumentError::Yaml { index, message, .. } => write!(f, "document {index}: invalid YAML: {message}"),
            DocumentError::Invalid { index, field, trigger: Some(trigger), message } => {
                write!(f, "document {index}: trigger {trigger:?}: {field}: {message}")
            }
            DocumentError::Invalid { index, field, trigger: None, message } => {
                write!(f, "document {index}: {field}: {message}")
            }
            DocumentError::OtherKind { index, kind } => {
                write!(f, "document {index}: {kind} is not a TriggerService; skipped")
            }
        }
    }
}

impl std::error::Error for DocumentError {}

/// Most problems reported for one document: past a type error, reading goes on without the
/// offending field, at most this many times.
pub const MAX_DOCUMENT_PROBLEMS: usize = 100;

/// Reads every document of `text`. Plain `triggers:` files are named `default_name`. A document
/// with invalid fields gives one error per field and no [`Document`].
pub fn parse_documents(text: &str, default_name: &str) -> Vec<Result<Document, DocumentError>> {
    read_documents(text, default_name, false)
}

/// Like [`parse_documents`], for checking only: after the errors of a document whose invalid
/// fields could all be left out, comes the document read without them, so that its other triggers
/// can be checked too. Such a document must never run.
pub fn check_documents(text: &str, default_name: &str) -> Vec<Result<Document, DocumentError>> {
    read_documents(text, default_name, true)
}

fn read_documents(text: &str, default_name: &str, keep_repaired: bool) -> Vec<Result<Document, DocumentError>> {
    let mut out = Vec::new();
    for (offset, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = offset + 1;
        match Value::deserialize(de) {
            Ok(Value::Null) => {}
            Ok(value) => {
                let (document, errors) = read_document(index, value, default_name);
                let failed = !errors.is_empty();
                out.extend(errors.into_iter().map(Err));
                if let Some(document) = document
                    && (keep_repaired || !failed)
                {
                    out.push(Ok(document));
                }
            }
            Err(e) => {
                let position = e.location().map(|l| Position { line: l.line(), column: l.column() });
                out.push(Err(DocumentError::Yaml { index, position, message: e.to_string() }));
                // The stream cannot be trusted past a syntax error.
                break;
            }
        }
    }
    out
}

/// The document (read without its invalid fields, if any could be left out) and its errors.
fn read_document(index: usize, value: Value, default_name: &str) -> (Option<Document>, Vec<DocumentError>) {
    match read_kind(index, value, default_name) {
        Ok(found) => found,
        Err(error) => (None, vec![error]),
    }
}

fn read_kind(
    index: usize,
    value: Value,
    default_name: &str,
) -> Result<(Option<Document>, Vec<DocumentError>), DocumentError> {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let kind = text(&value, "kind");
    let api_version = text(&value, "apiVersion").unwrap_or_default();
    match kind.as_deref() {
        Some("TriggerService") if API_VERSIONS.contains(&api_version.as_str()) => {
            let metadata = value.get("metadata").cloned().unwrap_or(Value::Null);
            let name = text(&metadata, "name").ok_or_else(|| DocumentError::Invalid {
                index,
                field: "metadata.name".into(),
                trigger: None,
                message: "a TriggerService needs a name".into(),
            })?;
            let spec_value = value.get("spec").cloned().unwrap_or(Value::Null);
            let (spec, errors) = deserialize::<TriggerServiceSpec>(index, "spec.", &spec_value);
            let namespace = text(&metadata, "namespace");
            Ok((spec.map(|spec| Document { index, name, namespace, spec }), errors))
        }
        Some(kind) => Err(DocumentError::OtherKind { index, kind: format!("{api_version}/{kind}") }),
        None if value.get("triggers").is_some() => {
            let (file, errors) = deserialize::<TriggerFile>(index, "", &value);
            let document = file.map(|file| Document {
                index,
                name: default_name.to_string(),
                namespace: None,
                spec: TriggerServiceSpec { triggers: file.triggers, ..Default::default() },
            });
            Ok((document, errors))
        }
        None => Err(DocumentError::Invalid {
            index,
            field: "kind".into(),
            trigger: None,
            message: "expected a TriggerService (kind: TriggerService) or a `triggers:` list".into(),
        }),
    }
}

/// Deserializes `value`, and after each error tries again without the field at fault, so that
/// one mistake does not hide the next. Gives up when the field cannot be left out (a missing
/// field of a list item, or of the document itself).
fn deserialize<T: serde::de::DeserializeOwned>(
    index: usize,
    prefix: &str,
    value: &Value,
) -> (Option<T>, Vec<DocumentError>) {
    let mut value = value.clone();
    let mut errors = Vec::new();
    let mut removed: Option<(Vec<Segment>, String)> = None;
    for _ in 0..MAX_DOCUMENT_PROBLEMS {
        let error = match serde_path_to_error::deserialize(value.clone()) {
            Ok(parsed) => return (Some(parsed), errors),
            Err(error) => error,
        };
        let path = error.path().clone();
        let message = error.into_inner().to_string();
        let segments: Vec<Segment> = path.iter().map(Segment::from).collect();
        // Leaving out a required field only moves its error to the parent: not a new problem,
        // but the parent goes next.
        let consequence = removed
            .as_ref()
            .is_some_and(|(parent, key)| *parent == segments && message.starts_with(&format!("missing field `{key}`")));
        if !consequence {
            let path = path.to_string();
            let trigger = trigger_name_at(&value, &path);
            let field = if path == "." { prefix.trim_end_matches('.').to_string() } else { format!("{prefix}{path}") };
            errors.push(DocumentError::Invalid { index, field, trigger, message: message.clone() });
        }
        let at_fault = if message.starts_with("missing field") { segments } else { unknown_field(segments, &message) };
        removed = remove(&mut value, &at_fault);
        if removed.is_none() {
            return (None, errors);
        }
    }
    (None, errors)
}

/// One step of a field path, owned so it can be compared across attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Item(usize),
    Other,
}

impl From<&serde_path_to_error::Segment> for Segment {
    fn from(segment: &serde_path_to_error::Segment) -> Self {
        match segment {
            serde_path_to_error::Segment::Map { key } => Segment::Key(key.clone()),
            serde_path_to_error::Segment::Seq { index } => Segment::Item(*index),
            _ => Segment::Other,
        }
    }
}

/// An unknown field's error points at its parent on some paths; the field is named in the message.
fn unknown_field(mut segments: Vec<Segment>, message: &str) -> Vec<Segment> {
    if let Some(name) = message.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next())
        && segments.last() != Some(&Segment::Key(name.to_string()))
    {
        segments.push(Segment::Key(name.to_string()));
    }
    segments
}

/// Removes the mapping entry at `path`; returns the parent's path and the key removed, or `None`
/// when `path` is not a mapping entry.
fn remove(value: &mut Value, path: &[Segment]) -> Option<(Vec<Segment>, String)> {
    let (Segment::Key(key), parent) = path.split_last()? else { return None };
    let mut node = value;
    for segment in parent {
        node = match segment {
            Segment::Key(key) => node.get_mut(key.as_str())?,
            Segment::Item(index) => node.get_mut(*index)?,
            Segment::Other => return None,
        };
    }
    node.as_mapping_mut()?.remove(key.as_str())?;
    Some((parent.to_vec(), key.clone()))
}

/// The name of the trigger a field path such as `triggers[2].filter` points into.
fn trigger_name_at(value: &Value, path: &str) -> Option<String> {
    let rest = path.strip_prefix("triggers[")?;
    let position: usize = rest.split(']').next()?.parse().ok()?;
    let trigger = value.get("triggers")?.get(position)?;
    Some(
        trigger
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("trigger-{position}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_forms_and_skips_other_kinds() {
        let text = r#"
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {name: a, namespace: apps}
spec:
  triggers:
  - name: t
    source: {type: cron, properties: {schedule: "* * * * *"}}
    destinations: [{type: log}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
---
triggers:
- source: {type: cronjob, properties: {schedule: "* * * * *"}}
  action: {type: log}
"#;
        let docs = parse_documents(text, "file");
        assert_eq!(docs.len(), 3);
        let first = docs[0].as_ref().unwrap();
        assert_eq!((first.name.as_str(), first.namespace.as_deref()), ("a", Some("apps")));
        assert!(docs[1].as_ref().unwrap_err().is_other_kind());
        let third = docs[2].as_ref().unwrap();
        assert_eq!(third.name, "file");
        assert_eq!(third.spec.triggers[0].action.as_ref().unwrap().type_name, "log");
    }

    #[test]
    fn unknown_fields_name_the_trigger_and_path() {
        let text = r#"
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {name: a}
spec:
  triggers:
  - name: first
    source: {type: cron}
    filters: "true"
    destinations: [{type: log}]
"#;
        let errors = parse_documents(text, "x");
        assert_eq!(errors.len(), 1);
        let message = errors.into_iter().next().unwrap().unwrap_err().to_string();
        assert!(
            message.starts_with("document 1: trigger \"first\": spec.triggers[0].filters: unknown field `filters`"),
            "{message}"
        );
    }

    #[test]
    fn every_type_error_of_a_document_is_reported() {
        let text = r#"
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {name: a}
spec:
  triggers:
  - name: first
    source: {type: cron}
    dedup: {key: x, window: 10}
    destinations: [{type: log, queueSize: many}]
  - name: second
    source: {type: cronn}
    filters: "true"
    destinations: [{type: log}]
"#;
        let fields: Vec<String> = parse_documents(text, "x")
            .into_iter()
            .map(|r| match r.unwrap_err() {
                DocumentError::Invalid { field, trigger, .. } => format!("{}: {field}", trigger.unwrap()),
                other => panic!("{other}"),
            })
            .collect();
        assert_eq!(
            fields,
            [
                "first: spec.triggers[0].dedup.window",
                "first: spec.triggers[0].destinations[0].queueSize",
                "second: spec.triggers[1].filters"
            ]
        );
    }

    #[test]
    fn checking_keeps_the_document_without_its_invalid_fields_and_running_does_not() {
        let text = "triggers:\n- source: {type: cron}\n  filters: x\n  action: {type: log}\n";
        assert!(parse_documents(text, "x").iter().all(Result::is_err));
        let checked = check_documents(text, "x");
        assert_eq!(checked.len(), 2);
        let repaired = checked[1].as_ref().unwrap();
        assert_eq!(repaired.spec.triggers[0].source.type_name, "cron");
    }

    #[test]
    fn a_missing_required_field_is_reported_once() {
        let text = "triggers:\n- source: {properties: {}}\n  action: {type: log}\n";
        let results = check_documents(text, "x");
        assert_eq!(results.len(), 1, "{results:?}");
        let message = results[0].as_ref().unwrap_err().to_string();
        assert!(message.contains("triggers[0].source: missing field `type`"), "{message}");
    }

    #[test]
    fn malformed_yaml_is_reported_with_its_document() {
        let err = parse_documents("triggers: [\n", "x").remove(0).unwrap_err();
        assert!(matches!(err, DocumentError::Yaml { index: 1, .. }), "{err}");
    }
}
