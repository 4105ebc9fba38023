//! Conversion of kube-trigger and khook definitions into ktrigger TriggerServices.
//!
//! [`convert_text`] reads YAML text holding kube-trigger TriggerServices
//! (`standard.oam.dev/v1alpha1`), kube-trigger `triggers:` files and khook Hooks
//! (`kagent.dev/v1alpha2`), and returns TriggerServices that behave the same, with a [`Note`] for
//! every place where the meaning changes or could not be kept. The controller's `--serve` mode
//! runs the same conversion on the objects it reconciles. No I/O.

pub mod cue;
pub mod khook;
pub mod kube_trigger;

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use ktrigger_api::{TriggerService, TriggerServiceSpec};
use serde::Deserialize;
use serde_yaml::Value;

/// One place where a converted definition does not mean exactly what the original meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// 1-based position of the document in its text.
    pub document: usize,
    /// The trigger it concerns, when it concerns one.
    pub trigger: Option<String>,
    /// The field of the original, e.g. `triggers[0].filter`.
    pub field: String,
    /// What changed, or why it could not be kept.
    pub message: String,
    /// The original could not be kept and the converted trigger must not run as it is (e.g. a
    /// filter that was not translated).
    pub refused: bool,
}

impl Note {
    /// A note about `field` of document `document`.
    pub fn new(document: usize, trigger: Option<&str>, field: &str, message: &str) -> Note {
        Note {
            document,
            trigger: trigger.map(str::to_string),
            field: field.to_string(),
            message: message.to_string(),
            refused: false,
        }
    }

    /// A note saying the original could not be kept.
    pub fn refusal(document: usize, trigger: Option<&str>, field: &str, message: &str) -> Note {
        Note { refused: true, ..Note::new(document, trigger, field, message) }
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.trigger {
            Some(trigger) => {
                write!(f, "document {}: trigger {trigger:?}: {}: {}", self.document, self.field, self.message)
            }
            None => write!(f, "document {}: {}: {}", self.document, self.field, self.message),
        }
    }
}

/// What [`convert_text`] made of a text.
#[derive(Debug, Clone, Default)]
pub struct Conversion {
    /// The TriggerServices, in the order of their documents.
    pub services: Vec<TriggerService>,
    /// Where the meaning changed or could not be kept, and documents skipped.
    pub notes: Vec<Note>,
    /// Documents that could not be read at all.
    pub errors: Vec<Note>,
}

/// What one document is.
enum Source {
    Hook(khook::HookSpec),
    KubeTrigger(TriggerServiceSpec, bool),
    Native(TriggerServiceSpec),
}

/// Converts every document of `text`; plain `triggers:` files get the name `default_name`.
pub fn convert_text(text: &str, default_name: &str) -> Conversion {
    let mut conversion = Conversion::default();
    for (offset, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = offset + 1;
        let value = match Value::deserialize(document) {
            Ok(Value::Null) => continue,
            Ok(value) => value,
            Err(e) => {
                conversion.errors.push(Note::new(index, None, "document", &format!("invalid YAML: {e}")));
                // The stream cannot be trusted past a syntax error.
                break;
            }
        };
        match convert_value(&value, index, default_name) {
            Ok(Some((service, notes))) => {
                conversion.services.push(service);
                conversion.notes.extend(notes);
            }
            Ok(None) => {}
            Err(note) if note.field == "kind" => conversion.notes.push(note),
            Err(note) => conversion.errors.push(note),
        }
    }
    conversion
}

/// Converts one Hook or kube-trigger TriggerService object, as the controller reads it.
pub fn convert_object(value: &serde_json::Value) -> Result<(TriggerService, Vec<Note>), Note> {
    let yaml = serde_yaml::to_value(value).map_err(|e| Note::new(1, None, "document", &e.to_string()))?;
    match convert_value(&yaml, 1, "") {
        Ok(Some(converted)) => Ok(converted),
        Ok(None) => Err(Note::new(1, None, "kind", "not a Hook or a TriggerService")),
        Err(note) => Err(note),
    }
}

fn convert_value(value: &Value, index: usize, default_name: &str) -> Result<Option<(TriggerService, Vec<Note>)>, Note> {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let api_version = text(value, "apiVersion").unwrap_or_default();
    let kind = text(value, "kind");
    let metadata = value.get("metadata").cloned().unwrap_or(Value::Null);
    let source = match (api_version.as_str(), kind.as_deref()) {
        (khook::API_VERSION, Some("Hook")) => Source::Hook(deserialize(index, "spec.", value.get("spec"))?),
        (kube_trigger::API_VERSION, Some("TriggerService")) => {
            Source::KubeTrigger(deserialize(index, "spec.", value.get("spec"))?, true)
        }
        ("ktrigger.dev/v1alpha1", Some("TriggerService")) => {
            Source::Native(deserialize(index, "spec.", value.get("spec"))?)
        }
        (_, Some(kind)) => {
            let message = format!("{api_version}/{kind} is not a Hook or a TriggerService; skipped");
            return Err(Note::new(index, None, "kind", &message));
        }
        (_, None) if value.get("triggers").is_some() => {
            let triggers = deserialize(index, "triggers", value.get("triggers"))?;
            Source::KubeTrigger(TriggerServiceSpec { triggers, ..Default::default() }, false)
        }
        (_, None) => {
            let message = "expected a Hook, a TriggerService or a kube-trigger `triggers:` list";
            return Err(Note::new(index, None, "kind", message));
        }
    };
    let name = match (&source, text(&metadata, "name")) {
        (_, Some(name)) => name,
        (Source::KubeTrigger(_, false), None) => default_name.to_string(),
        (_, None) => return Err(Note::new(index, None, "metadata.name", "a name is required")),
    };
    let namespace = text(&metadata, "namespace");
    let (spec, notes) = match source {
        Source::Hook(hook) => khook::convert_hook(&hook, namespace.as_deref(), index),
        Source::KubeTrigger(spec, in_cluster) => kube_trigger::convert_spec(&spec, index, in_cluster),
        Source::Native(spec) => (spec, Vec::new()),
    };
    let mut service = TriggerService::new(&name, spec);
    service.metadata = ObjectMeta { name: Some(name), namespace, ..Default::default() };
    Ok(Some((service, notes)))
}

fn deserialize<T: serde::de::DeserializeOwned>(index: usize, prefix: &str, value: Option<&Value>) -> Result<T, Note> {
    let value = value.cloned().unwrap_or(Value::Null);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { prefix.trim_end_matches('.').to_string() } else { format!("{prefix}{path}") };
        Note::new(index, None, &field, &e.into_inner().to_string())
    })
}
