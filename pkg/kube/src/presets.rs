//! k8s-events presets: names for the kinds of Kubernetes Events users act on.
//!
//! The built-in presets start from khook's reason/message table and fix what it misses:
//! - image pull back-offs (`BackOff` "Back-off pulling image") are `image-pull-backoff`, not
//!   `pod-restart`;
//! - `node-not-ready` exists, and accepts the node controller's `Normal` NodeNotReady Events;
//! - `oom-kill` accepts kernel OOM Events on Nodes (`OOMKilling` from node-problem-detector);
//! - repeated Events fire again when their count grows, and legacy Events are timed by
//!   `lastTimestamp` (both handled by the k8s-events source).
//!
//! Custom presets are a name and a CEL condition over the Event (`object`), from the
//! `--event-mappings` file or a source's `mappings:` property. A custom preset with a built-in
//! name replaces the built-in.

use std::path::Path;
use std::sync::Arc;

use ktrigger_core::{CelExpr, EventMapping, EventMappings, Vars};
use serde::Deserialize;
use serde_json::Value;

use crate::KubeError;

/// The built-in presets, with what each recognises.
pub const BUILTIN: [(&str, &str); 6] = [
    (
        "pod-restart",
        "a container restarting: BackOff \"restarting failed container\", Warning Failed/Killing of a container",
    ),
    ("oom-kill", "OOMKilling/OOMKilled, or Killing/Killed mentioning OOM or out of memory"),
    ("pod-pending", "a Pod that cannot be scheduled: FailedScheduling, Pending, Warning mentioning pending"),
    ("probe-failed", "Unhealthy liveness/readiness/startup probe, or a Warning whose reason mentions a probe"),
    ("node-not-ready", "NodeNotReady, on the Node or on its Pods (Normal Events included)"),
    ("image-pull-backoff", "BackOff pulling image, ErrImagePull, ImagePullBackOff, Failed to pull image"),
];

/// One preset a trigger listed: built-in or custom.
#[derive(Debug, Clone)]
pub enum Preset {
    /// One of [`BUILTIN`].
    Builtin(&'static str),
    /// A name and a CEL condition.
    Custom(Arc<CustomPreset>),
}

impl Preset {
    /// Its name, as `event.preset`.
    pub fn name(&self) -> &str {
        match self {
            Preset::Builtin(name) => name,
            Preset::Custom(custom) => &custom.name,
        }
    }

    /// Whether the (normalized) Event is one of this preset.
    pub fn matches(&self, event: &Value) -> bool {
        match self {
            Preset::Builtin(name) => builtin_matches(name, &EventView::of(event)),
            Preset::Custom(custom) => custom.matches(event),
        }
    }
}

/// A custom preset: a name and a CEL condition over the Event (`object`).
#[derive(Debug, Clone)]
pub struct CustomPreset {
    /// The preset name.
    pub name: String,
    /// The condition.
    pub condition: CelExpr,
}

impl CustomPreset {
    /// Compiles one mapping; errors name it.
    pub fn compile(name: &str, condition: &str) -> Result<CustomPreset, String> {
        if name.trim().is_empty() {
            return Err("a mapping needs a name".into());
        }
        let condition = CelExpr::compile(condition, &["object"])
            .map_err(|e| format!("mapping {name:?}: condition: {e} in {condition:?}"))?;
        Ok(CustomPreset { name: name.to_string(), condition })
    }

    /// Whether the condition holds for `event`; an evaluation error means no (and is logged).
    pub fn matches(&self, event: &Value) -> bool {
        match self.condition.eval_bool(&Vars::from_json(&[("object", event)])) {
            Ok(matched) => matched,
            Err(reason) => {
                tracing::debug!(preset = %self.name, %reason, "custom preset condition could not be evaluated");
                false
            }
        }
    }
}

/// One entry of a mappings file or `mappings:` property.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MappingSpec {
    /// The preset name.
    pub name: String,
    /// CEL over `object` (the Event).
    pub condition: String,
    /// What it is for; not used.
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum MappingsFile {
    Wrapped { mappings: Vec<MappingEntry> },
    List(Vec<MappingEntry>),
}

/// An entry of a mappings file: a CEL preset, or a khook-format entry giving events a severity
/// and tags.
#[derive(Deserialize)]
#[serde(untagged)]
enum MappingEntry {
    Preset(MappingSpec),
    Khook(EventMapping),
}

/// Reads the entries of a mappings file, both forms.
fn read_mappings_file(path: &Path) -> Result<(Vec<MappingSpec>, Vec<EventMapping>), KubeError> {
    let error = |message: String| KubeError::Mappings { path: path.to_path_buf(), message };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let file: MappingsFile = serde_yaml::from_str(&text).map_err(|e| {
        error(format!(
            "{e}; expected `mappings: [{{name: NAME, condition: CEL}}]` or khook's \
             `mappings: [{{eventSource, eventType, severity, tags, ...}}]`"
        ))
    })?;
    let (MappingsFile::Wrapped { mappings } | MappingsFile::List(mappings)) = file;
    let mut presets = Vec::new();
    let mut khook = Vec::new();
    for entry in mappings {
        match entry {
            MappingEntry::Preset(spec) => presets.push(spec),
            MappingEntry::Khook(entry) => khook.push(entry),
        }
    }
    Ok((presets, khook))
}

/// Reads the khook-format entries of a mappings file: severity and tags by source and event type.
pub fn load_event_mappings(path: &Path) -> Result<EventMappings, KubeError> {
    let (_, entries) = read_mappings_file(path)?;
    EventMappings::new(entries).map_err(|message| KubeError::Mappings { path: path.to_path_buf(), message })
}

/// Compiles mapping entries; the first bad one is the error.
pub fn compile_mappings(specs: &[MappingSpec]) -> Result<Vec<CustomPreset>, String> {
    specs.iter().map(|spec| CustomPreset::compile(&spec.name, &spec.condition)).collect()
}

/// Reads the presets of a mappings file: `mappings: [{name, condition, description?}]` (or the
/// bare list); khook-format entries are read by [`load_event_mappings`].
pub fn load_mappings_file(path: &Path) -> Result<Vec<CustomPreset>, KubeError> {
    let (specs, _) = read_mappings_file(path)?;
    compile_mappings(&specs).map_err(|message| KubeError::Mappings { path: path.to_path_buf(), message })
}

/// Finds each listed preset: the trigger's own mappings first, then the global ones, then the
/// built-ins.
pub fn resolve(names: &[String], own: &[CustomPreset], global: &[CustomPreset]) -> Result<Vec<Preset>, String> {
    names
        .iter()
        .map(|name| {
            if let Some(custom) = own.iter().chain(global).find(|c| &c.name == name) {
                return Ok(Preset::Custom(Arc::new(custom.clone())));
            }
            if let Some((builtin, _)) = BUILTIN.iter().find(|(b, _)| b == name) {
                return Ok(Preset::Builtin(builtin));
            }
            let builtins: Vec<&str> = BUILTIN.iter().map(|(b, _)| *b).collect();
            let mut customs: Vec<&str> = own.iter().chain(global).map(|c| c.name.as_str()).collect();
            customs.dedup();
            let customs = if customs.is_empty() { "none".to_string() } else { customs.join(", ") };
            Err(format!(
                "unknown preset {name:?}; built-in: {}; custom (from `mappings` or --event-mappings): {customs}",
                builtins.join(", ")
            ))
        })
        .collect()
}

/// The fields presets look at, lower-cased, from either Event API.
struct EventView {
    reason: String,
    message: String,
    event_type: String,
    kind: String,
}

impl EventView {
    fn of(event: &Value) -> EventView {
        let text = |a: &str, b: &str| event[a].as_str().or_else(|| event[b].as_str()).unwrap_or("").to_lowercase();
        let involved = if event["involvedObject"].is_object() { &event["involvedObject"] } else { &event["regarding"] };
        EventView {
            reason: text("reason", "reason"),
            message: text("message", "note"),
            event_type: text("type", "type"),
            kind: involved["kind"].as_str().unwrap_or("").to_lowercase(),
        }
    }

    fn says(&self, words: &[&str]) -> bool {
        words.iter().any(|w| self.message.contains(w))
    }

    fn warning(&self) -> bool {
        self.event_type == "warning"
    }

    fn about_image_pull(&self) -> bool {
        self.says(&["pulling image", "pull image", "errimagepull", "imagepullbackoff", "pull access denied"])
    }

    fn about_oom(&self) -> bool {
        self.says(&["oom", "out of memory"])
    }
}

fn builtin_matches(name: &str, e: &EventView) -> bool {
    let pod = e.kind == "pod";
    match name {
        "image-pull-backoff" => {
            pod && (matches!(e.reason.as_str(), "errimagepull" | "imagepullbackoff")
                || (matches!(e.reason.as_str(), "backoff" | "failed") && e.about_image_pull()))
        }
        "pod-restart" => {
            pod && e.warning()
                && !e.about_image_pull()
                && match e.reason.as_str() {
                    "backoff" => e.says(&["restarting"]),
                    "crashloopbackoff" => true,
                    "failed" | "killing" | "killed" => e.says(&["container"]) && !e.about_oom(),
                    _ => false,
                }
        }
        "oom-kill" => {
            matches!(e.reason.as_str(), "oomkilling" | "oomkilled")
                || (matches!(e.reason.as_str(), "killing" | "killed") && e.about_oom())
        }
        "pod-pending" => {
            pod && (matches!(e.reason.as_str(), "failedscheduling" | "pending")
                || (e.warning() && e.says(&["pending"])))
        }
        "probe-failed" => {
            pod && ((e.reason == "unhealthy" && e.says(&["liveness", "readiness", "startup"]))
                || (e.warning() && e.reason.contains("probe")))
        }
        "node-not-ready" => {
            e.reason == "nodenotready" || (e.kind == "node" && e.says(&["nodenotready", "node is not ready"]))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn core_event(kind: &str, event_type: &str, reason: &str, message: &str) -> Value {
        json!({"involvedObject": {"kind": kind, "name": "x"}, "type": event_type, "reason": reason, "message": message})
    }

    fn which(event: &Value) -> Vec<&'static str> {
        BUILTIN.iter().map(|(name, _)| *name).filter(|name| Preset::Builtin(name).matches(event)).collect()
    }

    #[test]
    fn each_builtin_recognises_its_events_and_only_those() {
        let cases = [
            (
                core_event("Pod", "Warning", "BackOff", "Back-off restarting failed container app in pod web-1"),
                vec!["pod-restart"],
            ),
            (
                core_event("Pod", "Warning", "BackOff", "Back-off pulling image \"nginx:nope\""),
                vec!["image-pull-backoff"],
            ),
            (core_event("Pod", "Warning", "Failed", "Error: ImagePullBackOff"), vec!["image-pull-backoff"]),
            (
                core_event("Pod", "Warning", "Failed", "Failed to pull image \"x\": not found"),
                vec!["image-pull-backoff"],
            ),
            (core_event("Pod", "Warning", "Failed", "Error: failed to start container \"app\""), vec!["pod-restart"]),
            (core_event("Node", "Warning", "OOMKilling", "Out of memory: Killed process 42 (java)"), vec!["oom-kill"]),
            (core_event("Pod", "Warning", "Killing", "Container app was OOM killed"), vec!["oom-kill"]),
            (core_event("Pod", "Warning", "FailedScheduling", "0/3 nodes are available"), vec!["pod-pending"]),
            (
                core_event(
                    "Pod",
                    "Warning",
                    "Unhealthy",
                    "Liveness probe failed: HTTP probe failed with statuscode: 500",
                ),
                vec!["probe-failed"],
            ),
            (core_event("Pod", "Warning", "Unhealthy", "something else"), vec![]),
            (
                core_event("Node", "Normal", "NodeNotReady", "Node n1 status is now: NodeNotReady"),
                vec!["node-not-ready"],
            ),
            (core_event("Pod", "Warning", "NodeNotReady", "Node is not ready"), vec!["node-not-ready"]),
            (core_event("Pod", "Normal", "Killing", "Stopping container app"), vec![]),
            (core_event("Pod", "Normal", "Pulled", "Successfully pulled image"), vec![]),
            (core_event("Deployment", "Warning", "BackOff", "Back-off restarting failed container"), vec![]),
        ];
        for (event, expected) in cases {
            assert_eq!(which(&event), expected, "{event}");
        }
    }

    #[test]
    fn events_k8s_io_fields_are_read_too() {
        let event = json!({"regarding": {"kind": "Pod"}, "type": "Warning", "reason": "BackOff",
                           "note": "Back-off restarting failed container"});
        assert_eq!(which(&event), ["pod-restart"]);
    }

    #[test]
    fn custom_presets_come_first_and_unknown_names_are_refused() {
        let own = vec![CustomPreset::compile("pod-restart", "object.reason == 'Custom'").unwrap()];
        let global = vec![CustomPreset::compile("evicted", "object.reason == 'Evicted'").unwrap()];
        let names = vec!["pod-restart".to_string(), "evicted".to_string(), "oom-kill".to_string()];
        let presets = resolve(&names, &own, &global).unwrap();
        assert!(matches!(&presets[0], Preset::Custom(c) if c.name == "pod-restart"));
        assert!(presets[1].matches(&json!({"reason": "Evicted"})));
        assert!(matches!(presets[2], Preset::Builtin("oom-kill")));
        let error = resolve(&["restarts".to_string()], &[], &global).unwrap_err();
        assert!(
            error.contains("unknown preset \"restarts\"") && error.contains("pod-restart") && error.contains("evicted")
        );
    }

    #[test]
    fn mapping_conditions_are_compiled_at_load() {
        let error = CustomPreset::compile("bad", "object.reason ==").unwrap_err();
        assert!(error.starts_with("mapping \"bad\": condition:"), "{error}");
        let error = CustomPreset::compile("bad", "event.type == 'x'").unwrap_err();
        assert!(error.contains("event"), "{error}");
    }

    #[test]
    fn mapping_files_hold_a_list_under_mappings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mappings.yaml");
        std::fs::write(&path, "mappings:\n- name: evicted\n  condition: object.reason == 'Evicted'\n").unwrap();
        assert_eq!(load_mappings_file(&path).unwrap()[0].name, "evicted");
        std::fs::write(&path, "- {name: x, condition: 'object.count >'}\n").unwrap();
        let error = load_mappings_file(&path).unwrap_err().to_string();
        assert!(error.contains("mappings.yaml") && error.contains("mapping \"x\""), "{error}");
        std::fs::write(&path, "mappings: [{name: x}]\n").unwrap();
        assert!(load_mappings_file(&path).unwrap_err().to_string().contains("expected `mappings:"));
    }
}
