//! khook `Hook` objects (`kagent.dev/v1alpha2`) converted into TriggerService specs.
//!
//! khook watches the Kubernetes Events of the Hook's namespace, maps them to its four event types
//! (pod-restart, pod-pending, oom-kill, probe-failed: the k8s-events presets of the same names),
//! drops repeats of `type:namespace:name` for 10 minutes (firing, then resolved), and calls the
//! kagent agent of each event configuration with its prompt. One trigger per configuration does
//! the same here.

use ktrigger_api::{DedupSpec, DestinationSpec, SourceSpec, Trigger, TriggerServiceSpec};
use ktrigger_destinations::khook::convert as convert_prompt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Note;

/// The API group and version of khook's Hook.
pub const API_VERSION: &str = "kagent.dev/v1alpha2";

/// khook's dedup key, `type:namespace:name` of the object the Event is about.
pub const DEDUP_KEY: &str = r#"event.preset + ":" + object.regarding.namespace + ":" + object.regarding.name"#;

/// khook's dedup window.
pub const DEDUP_WINDOW: &str = "10m";

/// khook's event types; each is the k8s-events preset of the same name.
pub const EVENT_TYPES: [&str; 4] = ["pod-restart", "pod-pending", "oom-kill", "probe-failed"];

/// How long one agent call may take: agent runs are slow.
pub const AGENT_TIMEOUT: &str = "10m";

/// The spec of a Hook.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HookSpec {
    /// One entry per event type handled.
    pub event_configurations: Vec<EventConfiguration>,
}

/// One event type of a Hook and the agent it calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventConfiguration {
    /// pod-restart, pod-pending, oom-kill or probe-failed.
    pub event_type: String,
    /// The agent; its namespace defaults to the Hook's.
    #[serde(default)]
    pub agent_ref: Option<AgentRef>,
    /// Obsolete `namespace/name` of the agent.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// Go template of the message, with khook's `{{.Field}}` placeholders.
    pub prompt: String,
}

/// A kagent Agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRef {
    /// Agent name.
    pub name: String,
    /// Agent namespace.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// The TriggerService spec that does what the Hook does, with a note for every place where the
/// meaning changes. `namespace` is the Hook's.
pub fn convert_hook(spec: &HookSpec, namespace: Option<&str>, document: usize) -> (TriggerServiceSpec, Vec<Note>) {
    let mut notes = Vec::new();
    let mut triggers: Vec<Trigger> = Vec::new();
    if namespace.is_none() {
        notes.push(Note::new(
            document,
            None,
            "metadata.namespace",
            "the Hook has no namespace: khook watches the namespace it is applied in, and so does the controller; \
             `ktrigger run` watches every namespace",
        ));
    }
    for (index, configuration) in spec.event_configurations.iter().enumerate() {
        let field = |name: &str| format!("spec.eventConfigurations[{index}].{name}");
        let name = unique_name(&configuration.event_type, &triggers);
        let mut note = |field: String, message: String| notes.push(Note::new(document, Some(&name), &field, &message));
        if !EVENT_TYPES.contains(&configuration.event_type.as_str()) {
            note(
                field("eventType"),
                format!(
                    "khook knows only {}; kept as the k8s-events preset {:?}, which must exist",
                    EVENT_TYPES.join(", "),
                    configuration.event_type
                ),
            );
        }
        let agent = match (&configuration.agent_ref, &configuration.agent_id) {
            (Some(agent), None) => json!({"name": agent.name, "namespace": agent.namespace.as_deref().or(namespace)}),
            (agent_ref, Some(id)) => {
                let (agent_namespace, agent_name) = match id.split_once('/') {
                    Some((ns, name)) => (Some(ns), name),
                    None => (namespace, id.as_str()),
                };
                let ignored = if agent_ref.is_some() { " (agentRef is set too and was ignored)" } else { "" };
                note(
                    field("agentId"),
                    format!(
                        "the obsolete agentId {id:?} became agentRef {{name: {agent_name}, namespace: {}}}{ignored}",
                        agent_namespace.unwrap_or("<the TriggerService's>")
                    ),
                );
                json!({"name": agent_name, "namespace": agent_namespace})
            }
            (None, None) => {
                note(field("agentRef"), "no agentRef nor agentId: the configuration calls no agent; skipped".into());
                continue;
            }
        };
        let agent = strip_nulls(agent);
        let prompt = match convert_prompt(&configuration.prompt) {
            Ok(prompt) => prompt.into_owned(),
            Err(error) => {
                note(field("prompt"), format!("{error}; the prompt is kept as written and will not load"));
                configuration.prompt.clone()
            }
        };
        let mut source = json!({"presets": [configuration.event_type]});
        if let Some(namespace) = namespace {
            source["namespace"] = json!(namespace);
        }
        triggers.push(Trigger {
            name: Some(name),
            source: SourceSpec { type_name: "k8s-events".into(), properties: source },
            dedup: Some(DedupSpec { key: DEDUP_KEY.into(), window: DEDUP_WINDOW.into() }),
            destinations: vec![DestinationSpec {
                type_name: "kagent".into(),
                properties: json!({"agentRef": agent, "prompt": prompt}),
                timeout: Some(AGENT_TIMEOUT.into()),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    (TriggerServiceSpec { triggers, ..Default::default() }, notes)
}

/// The event type as trigger name, with `-2`, `-3`... when a Hook lists a type twice.
fn unique_name(event_type: &str, triggers: &[Trigger]) -> String {
    let base: String = event_type
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(56)
        .collect();
    let base = if base.trim_matches('-').is_empty() { "event".to_string() } else { base.trim_matches('-').to_string() };
    let taken = |candidate: &str| triggers.iter().any(|t| t.name.as_deref() == Some(candidate));
    if !taken(&base) {
        return base;
    }
    (2..=triggers.len() + 1).map(|n| format!("{base}-{n}")).find(|c| !taken(c)).unwrap_or(base)
}

fn strip_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    }
}
