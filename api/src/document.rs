//! Splitting YAML text into TriggerService documents, in both the CRD form and kube-trigger's
//! plain `triggers:` file form.

use std::fmt;

use serde::Deserialize;
use serde_yaml::Value;

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
            DocumentError::Yaml { index, message } => write!(f, "document {index}: invalid YAML: {message}"),
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

/// Reads every document of `text`. Plain `triggers:` files are named `default_name`.
pub fn parse_documents(text: &str, default_name: &str) -> Vec<Result<Document, DocumentError>> {
    let mut out = Vec::new();
    for (offset, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = offset + 1;
        match Value::deserialize(de) {
            Ok(Value::Null) => {}
            Ok(value) => out.push(read_document(index, value, default_name)),
            Err(e) => {
                out.push(Err(DocumentError::Yaml { index, message: e.to_string() }));
                // The stream cannot be trusted past a syntax error.
                break;
            }
        }
    }
    out
}

fn read_document(index: usize, value: Value, default_name: &str) -> Result<Document, DocumentError> {
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
            let spec = deserialize::<TriggerServiceSpec>(index, "spec.", &spec_value)?;
            Ok(Document { index, name, namespace: text(&metadata, "namespace"), spec })
        }
        Some(kind) => Err(DocumentError::OtherKind { index, kind: format!("{api_version}/{kind}") }),
        None if value.get("triggers").is_some() => {
            let file = deserialize::<TriggerFile>(index, "", &value)?;
            Ok(Document {
                index,
                name: default_name.to_string(),
                namespace: None,
                spec: TriggerServiceSpec { triggers: file.triggers, ..Default::default() },
            })
        }
        None => Err(DocumentError::Invalid {
            index,
            field: "kind".into(),
            trigger: None,
            message: "expected a TriggerService (kind: TriggerService) or a `triggers:` list".into(),
        }),
    }
}

fn deserialize<T: serde::de::DeserializeOwned>(index: usize, prefix: &str, value: &Value) -> Result<T, DocumentError> {
    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        let trigger = trigger_name_at(value, &path);
        DocumentError::Invalid { index, field: format!("{prefix}{path}"), trigger, message: e.into_inner().to_string() }
    })
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
        let err = parse_documents(text, "x").remove(0).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("document 1: trigger \"first\": spec.triggers[0].filters: unknown field `filters`"),
            "{message}"
        );
    }

    #[test]
    fn malformed_yaml_is_reported_with_its_document() {
        let err = parse_documents("triggers: [\n", "x").remove(0).unwrap_err();
        assert!(matches!(err, DocumentError::Yaml { index: 1, .. }), "{err}");
    }
}
