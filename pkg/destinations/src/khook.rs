//! khook prompt compatibility: Go `{{.Field}}` placeholders turned into ktrigger templates.
//!
//! khook (kagent-dev/khook) expands a fixed set of fields in its prompts. [`convert`] rewrites each
//! of them, at load time, into a minijinja expression over the event context that reads the same
//! information from core/v1 and events.k8s.io/v1 Event objects and falls back sensibly for other
//! objects. Anything else in the prompt, minijinja included, is left as it is; Go template actions
//! (`{{if}}`, pipelines, `.Event.X`) and unknown fields are refused with the list of supported ones.

use std::borrow::Cow;

/// The khook fields and the minijinja expression each becomes.
pub const FIELDS: [(&str, &str); 8] = [
    // The object the Event is about; for other objects the object itself.
    ("ResourceName", "(object.involvedObject or object.regarding or object.metadata or object).name"),
    ("Namespace", "(object.involvedObject or object.regarding or {}).namespace or (object.metadata or {}).namespace"),
    // khook's event types are the presets (pod-restart, oom-kill, ...).
    ("EventType", "event.preset or object.reason or event.type"),
    ("Reason", "object.reason"),
    // core/v1 says `message`, events.k8s.io/v1 says `note`.
    ("Message", "object.message or object.note"),
    ("EventMessage", "object.message or object.note"),
    // The latest sighting of a repeated Event first, then its first one, then the event's time.
    ("Timestamp", TIMESTAMP),
    ("EventTime", TIMESTAMP),
];

const TIMESTAMP: &str = "(object.series or {}).lastObservedTime or object.lastTimestamp \
                         or object.deprecatedLastTimestamp or object.eventTime or object.firstTimestamp or event.time";

/// Go template keywords that start actions this converter does not translate.
const GO_ACTIONS: [&str; 9] = ["if", "else", "end", "range", "with", "template", "define", "block", "printf"];

/// Whether `source` holds at least one khook-style `{{.Field}}` placeholder.
pub fn is_khook_template(source: &str) -> bool {
    actions(source).any(|action| action.is_go_field())
}

/// `source` with every khook `{{.Field}}` placeholder replaced by its minijinja expression;
/// unchanged (borrowed) when it has none. Errors name the placeholder and list the supported fields.
pub fn convert(source: &str) -> Result<Cow<'_, str>, String> {
    let mut out = String::new();
    let mut copied = 0;
    for action in actions(source) {
        if action.is_go_field() {
            let field = &action.body[1..];
            let Some((_, expression)) = FIELDS.iter().find(|(name, _)| *name == field) else {
                return Err(if field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    format!("unknown khook field {{{{.{field}}}}}; supported: {}", supported())
                } else {
                    format!(
                        "{{{{{}}}}} is not a plain khook field; only these are converted: {}; \
                         write anything else as a minijinja template over object, event, context, now",
                        action.body,
                        supported()
                    )
                });
            };
            out.push_str(&source[copied..action.start]);
            out.push_str(if action.trim_left { "{{- " } else { "{{ " });
            out.push_str(expression);
            out.push_str(if action.trim_right { " -}}" } else { " }}" });
            copied = action.end;
        } else if action.is_go_action() {
            return Err(format!(
                "Go template action {{{{{}}}}} is not supported; only these khook fields are converted: {}; \
                 write conditions and loops in minijinja ({{% if %}}, {{% for %}})",
                action.body,
                supported()
            ));
        }
    }
    if copied == 0 {
        return Ok(Cow::Borrowed(source));
    }
    out.push_str(&source[copied..]);
    Ok(Cow::Owned(out))
}

/// `{{.EventType}}, {{.ResourceName}}, ...`
fn supported() -> String {
    FIELDS.iter().map(|(name, _)| format!("{{{{.{name}}}}}")).collect::<Vec<_>>().join(", ")
}

/// One `{{ ... }}` of the source.
struct Action<'a> {
    /// Byte offset of `{{`.
    start: usize,
    /// Byte offset just past `}}`.
    end: usize,
    /// What is inside, without trim markers and surrounding whitespace.
    body: &'a str,
    /// `{{- `: trims the whitespace before.
    trim_left: bool,
    /// ` -}}`: trims the whitespace after.
    trim_right: bool,
}

impl Action<'_> {
    /// `.Name` or `.Name.more`/`.Name | pipe`: a Go field reference, which no minijinja
    /// expression can start with.
    fn is_go_field(&self) -> bool {
        self.body.starts_with('.')
    }

    /// `if .X`, `end`, `range $i, $e := .Y`, ...: an action that refers to Go data.
    fn is_go_action(&self) -> bool {
        let word = self.body.split_whitespace().next().unwrap_or("");
        GO_ACTIONS.contains(&word) && (self.body == "end" || self.body.contains(" .") || self.body.contains('$'))
    }
}

/// Every `{{ ... }}` of `source`, in order; an unterminated one ends the scan.
fn actions(source: &str) -> impl Iterator<Item = Action<'_>> {
    let mut position = 0;
    std::iter::from_fn(move || {
        let start = position + source[position..].find("{{")?;
        let inner_start = start + 2;
        let inner_end = inner_start + source[inner_start..].find("}}")?;
        position = inner_end + 2;
        let mut inner = &source[inner_start..inner_end];
        let trim_left = inner.starts_with("- ") || inner.starts_with("-\n") || inner.starts_with("-\t");
        if trim_left {
            inner = &inner[1..];
        }
        let trim_right = inner.ends_with(" -") || inner.ends_with("\n-") || inner.ends_with("\t-");
        if trim_right {
            inner = &inner[..inner.len() - 1];
        }
        Some(Action { start, end: position, body: inner.trim(), trim_left, trim_right })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrigger_core::{Event, Template, TemplateScope};
    use serde_json::{Value, json};

    /// A core/v1 Event as the API server stores it for a container in CrashLoopBackOff.
    fn core_v1_event() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": "web-7d4b9c-x2x7q.17f0c2a5b3e1d9a0",
                "namespace": "apps",
                "uid": "0f6a5a9e-2d1f-4a8c-9a55-5d0e3f7c1b22",
                "resourceVersion": "918273",
                "creationTimestamp": "2026-03-02T10:00:05Z"
            },
            "involvedObject": {
                "kind": "Pod",
                "namespace": "apps",
                "name": "web-7d4b9c-x2x7q",
                "uid": "5b8e2f0c-7a1d-4e3b-8c9f-1a2b3c4d5e6f",
                "apiVersion": "v1",
                "resourceVersion": "918100",
                "fieldPath": "spec.containers{web}"
            },
            "reason": "BackOff",
            "message": "Back-off restarting failed container web in pod web-7d4b9c-x2x7q_apps(5b8e2f0c)",
            "source": {"component": "kubelet", "host": "node-a"},
            "firstTimestamp": "2026-03-02T10:00:05Z",
            "lastTimestamp": "2026-03-02T10:09:41Z",
            "count": 7,
            "type": "Warning",
            "eventTime": null,
            "reportingComponent": "kubelet",
            "reportingInstance": "node-a"
        })
    }

    /// An events.k8s.io/v1 Event for an OOM-killed container, seen repeatedly (with a series).
    fn events_v1_event() -> Value {
        json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {
                "name": "worker-0.17f0c2a5c0ffee00",
                "namespace": "batch",
                "creationTimestamp": "2026-03-02T11:00:00Z"
            },
            "eventTime": "2026-03-02T11:00:00.123456Z",
            "series": {"count": 3, "lastObservedTime": "2026-03-02T11:04:10.654321Z"},
            "reportingController": "kubelet",
            "reportingInstance": "node-b",
            "action": "Killing",
            "reason": "OOMKilling",
            "regarding": {"kind": "Pod", "namespace": "batch", "name": "worker-0", "apiVersion": "v1"},
            "note": "Memory cgroup out of memory: Killed process 4242 (python)",
            "type": "Warning",
            "deprecatedSource": {"component": "kubelet", "host": "node-b"},
            "deprecatedFirstTimestamp": null,
            "deprecatedLastTimestamp": null,
            "deprecatedCount": 0
        })
    }

    fn render(prompt: &str, event: &Event) -> String {
        let converted = convert(prompt).unwrap();
        let template = Template::compile(&converted).unwrap_or_else(|e| panic!("{converted}: {e}"));
        template.render(&TemplateScope::new(event, "t")).unwrap()
    }

    const ALL: &str = "{{.ResourceName}}|{{.Namespace}}|{{.EventType}}|{{.Reason}}|{{.Message}}|\
                       {{.EventMessage}}|{{.Timestamp}}|{{.EventTime}}";

    #[test]
    fn core_v1_events_fill_every_field() {
        let mut event = Event::new("k8s-events", "create", core_v1_event());
        event.meta.preset = Some("pod-restart".into());
        let message = "Back-off restarting failed container web in pod web-7d4b9c-x2x7q_apps(5b8e2f0c)";
        assert_eq!(
            render(ALL, &event),
            format!(
                "web-7d4b9c-x2x7q|apps|pod-restart|BackOff|{message}|{message}|2026-03-02T10:09:41Z|2026-03-02T10:09:41Z"
            )
        );
    }

    #[test]
    fn events_k8s_io_v1_events_fill_every_field() {
        let event = Event::new("k8s-events", "update", events_v1_event());
        let note = "Memory cgroup out of memory: Killed process 4242 (python)";
        // No preset: the reason stands for the event type; the series gives the latest time.
        assert_eq!(
            render(ALL, &event),
            format!(
                "worker-0|batch|OOMKilling|OOMKilling|{note}|{note}|2026-03-02T11:04:10.654321Z|2026-03-02T11:04:10.654321Z"
            )
        );
    }

    #[test]
    fn first_sightings_use_the_event_time() {
        let mut object = events_v1_event();
        object.as_object_mut().unwrap().remove("series");
        let event = Event::new("k8s-events", "create", object);
        assert_eq!(render("{{.EventTime}}", &event), "2026-03-02T11:00:00.123456Z");
    }

    #[test]
    fn other_objects_fall_back_to_their_metadata_and_the_event() {
        let pod = json!({"kind": "Pod", "metadata": {"name": "api-0", "namespace": "shop"}, "status": {}});
        let event = Event::new("resource-watcher", "update", pod);
        let time = ktrigger_core::rfc3339(event.meta.time);
        assert_eq!(render(ALL, &event), format!("api-0|shop|update||||{time}|{time}"));

        let fire = Event::new("cron", "fire", json!({"schedule": "*/5 * * * *"}));
        assert_eq!(render("[{{.ResourceName}}] [{{.Namespace}}] {{.EventType}}", &fire), "[] [] fire");
    }

    #[test]
    fn real_khook_prompts_convert_and_keep_their_text() {
        let prompt = "🔧 CI/CD ALERT: Build/test pod restarted\n\n- Pod: {{.ResourceName}}\n- Namespace: \
                      {{.Namespace}}\n- Time: {{.EventTime}}\n- Message: {{.EventMessage}}\n\nAnnotate the \
                      updated resources with \"kagentFix: <dateTime>\"\n";
        assert!(is_khook_template(prompt));
        let mut event = Event::new("k8s-events", "create", core_v1_event());
        event.meta.preset = Some("pod-restart".into());
        let text = render(prompt, &event);
        assert!(text.starts_with("🔧 CI/CD ALERT: Build/test pod restarted\n\n- Pod: web-7d4b9c-x2x7q\n"), "{text}");
        assert!(text.contains("- Namespace: apps\n- Time: 2026-03-02T10:09:41Z\n- Message: Back-off restarting"));
        assert!(text.ends_with("with \"kagentFix: <dateTime>\""), "{text}");
    }

    #[test]
    fn spacing_and_trim_markers_are_kept() {
        let converted = convert("a {{ .Reason }} b {{- .Reason -}} c").unwrap();
        assert_eq!(converted, "a {{ object.reason }} b {{- object.reason -}} c");
        let event = Event::new("k8s-events", "create", core_v1_event());
        assert_eq!(render("a {{ .Reason }} b {{- .Reason -}} c", &event), "a BackOff bBackOffc");
    }

    #[test]
    fn minijinja_templates_pass_through_and_may_be_mixed() {
        let plain = "Pod {{ object.involvedObject.name }} restarted {{ object.count }} times";
        assert!(!is_khook_template(plain));
        assert!(matches!(convert(plain).unwrap(), Cow::Borrowed(_)));
        let event = Event::new("k8s-events", "create", core_v1_event());
        assert_eq!(
            render("{{.ResourceName}} restarted {{ object.count }} times", &event),
            "web-7d4b9c-x2x7q restarted 7 times"
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_the_supported_list() {
        let err = convert("Pod {{.PodName}} failed").unwrap_err();
        assert!(
            err.starts_with("unknown khook field {{.PodName}}; supported: {{.ResourceName}}, {{.Namespace}}"),
            "{err}"
        );
        assert!(err.contains("{{.EventTime}}"), "{err}");

        let err = convert("{{.Event.Metadata}}").unwrap_err();
        assert!(err.starts_with("{{.Event.Metadata}} is not a plain khook field"), "{err}");
        let err = convert("{{.Message | printf \"%q\"}}").unwrap_err();
        assert!(err.contains("is not a plain khook field"), "{err}");
    }

    #[test]
    fn go_actions_are_refused() {
        let err = convert("{{if .Reason}}reason: {{.Reason}}{{end}}").unwrap_err();
        assert!(err.starts_with("Go template action {{if .Reason}} is not supported"), "{err}");
        // minijinja's own blocks are not Go actions.
        assert!(convert("{% if object.reason %}{{ object.reason }}{% endif %}").is_ok());
    }
}
