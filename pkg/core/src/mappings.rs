//! khook-compatible event mappings: entries of an `--event-mappings` file that give the events
//! of one source type and event type a severity and tags, seen by filters and templates as
//! `event.severity` and `event.tags`.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::event::EventMeta;

/// Most entries kept from one file.
pub const MAX_ENTRIES: usize = 1000;
/// Most tags of one entry.
const MAX_TAGS: usize = 32;
/// Longest severity, tag key or tag value, in bytes.
const MAX_TEXT: usize = 256;

/// One entry in khook's format.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventMapping {
    /// The source type (`k8s-events`; khook's `kubernetes` means the same) or a plugin source type.
    pub event_source: String,
    /// The preset (k8s-events) or `event.type` (other sources) the entry is about.
    pub event_type: String,
    /// khook's name of the event kind; accepted for compatibility, not used.
    #[serde(default)]
    pub internal_type: Option<String>,
    /// What the entry is for; not used.
    #[serde(default)]
    pub description: Option<String>,
    /// `event.severity`.
    #[serde(default)]
    pub severity: Option<String>,
    /// `event.tags`: a map or a list of strings.
    #[serde(default)]
    pub tags: Option<Value>,
    /// Whether the entry applies (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// What a mapping adds to an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    /// `event.severity`.
    pub severity: Option<String>,
    /// `event.tags`.
    pub tags: Option<Value>,
}

impl Annotation {
    /// Writes the severity and tags into `meta`.
    pub fn apply(&self, meta: &mut EventMeta) {
        meta.severity.clone_from(&self.severity);
        meta.tags.clone_from(&self.tags);
    }
}

/// The enabled entries of a mappings file, looked up by source and event type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventMappings {
    entries: Vec<(String, String, Arc<Annotation>)>,
}

impl EventMappings {
    /// Checks `entries`; an error names the entry (by position) and field.
    pub fn new(entries: Vec<EventMapping>) -> Result<EventMappings, String> {
        if entries.len() > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} event mappings"));
        }
        let mut kept = Vec::new();
        for (index, entry) in entries.into_iter().enumerate() {
            let field = |name: &str| format!("mappings[{index}].{name}");
            if entry.event_source.is_empty() || entry.event_type.is_empty() {
                return Err(format!("{}: eventSource and eventType are required", field("eventType")));
            }
            if entry.severity.as_ref().is_some_and(|s| s.len() > MAX_TEXT) {
                return Err(format!("{}: longer than {MAX_TEXT} bytes", field("severity")));
            }
            if let Some(tags) = &entry.tags {
                check_tags(tags).map_err(|e| format!("{}: {e}", field("tags")))?;
            }
            if !entry.enabled {
                continue;
            }
            let source = if entry.event_source == "kubernetes" { "k8s-events".into() } else { entry.event_source };
            let annotation = Annotation { severity: entry.severity, tags: entry.tags };
            kept.push((source, entry.event_type, Arc::new(annotation)));
        }
        Ok(EventMappings { entries: kept })
    }

    /// The annotation of events of `source` whose preset or type is `event_type`.
    pub fn find(&self, source: &str, event_type: &str) -> Option<Arc<Annotation>> {
        self.entries.iter().find(|(s, t, _)| s == source && t == event_type).map(|(_, _, a)| a.clone())
    }
}

fn check_tags(tags: &Value) -> Result<(), String> {
    let short = |text: &str| text.len() <= MAX_TEXT;
    match tags {
        Value::Object(map) if map.len() <= MAX_TAGS => {
            if map.iter().all(|(k, v)| short(k) && v.as_str().is_some_and(short)) {
                Ok(())
            } else {
                Err(format!("tag keys and values must be strings of at most {MAX_TEXT} bytes"))
            }
        }
        Value::Array(list) if list.len() <= MAX_TAGS => {
            if list.iter().all(|v| v.as_str().is_some_and(short)) {
                Ok(())
            } else {
                Err(format!("tags must be strings of at most {MAX_TEXT} bytes"))
            }
        }
        _ => Err(format!("a map or a list of at most {MAX_TAGS} strings")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entry(source: &str, event_type: &str, enabled: bool) -> EventMapping {
        EventMapping {
            event_source: source.into(),
            event_type: event_type.into(),
            internal_type: None,
            description: None,
            severity: Some("high".into()),
            tags: Some(json!({"team": "apps"})),
            enabled,
        }
    }

    #[test]
    fn khook_kubernetes_entries_apply_to_k8s_events() {
        let mappings = EventMappings::new(vec![entry("kubernetes", "pod-restart", true)]).unwrap();
        let found = mappings.find("k8s-events", "pod-restart").unwrap();
        assert_eq!(found.severity.as_deref(), Some("high"));
        assert!(mappings.find("k8s-events", "oom-kill").is_none());
    }

    #[test]
    fn disabled_entries_are_left_out() {
        let mappings = EventMappings::new(vec![entry("counter", "tick", false)]).unwrap();
        assert!(mappings.find("counter", "tick").is_none());
    }

    #[test]
    fn tags_must_be_short_strings() {
        let mut bad = entry("counter", "tick", true);
        bad.tags = Some(json!({"team": 3}));
        let error = EventMappings::new(vec![bad]).unwrap_err();
        assert!(error.starts_with("mappings[0].tags: "), "{error}");
    }
}
