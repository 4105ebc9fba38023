//! Serving khook Hooks and kube-trigger TriggerServices directly (`--serve`): each object is
//! converted as `ktrigger convert` converts it, run by the same engine, and given its status in
//! its own shape. Pure: no I/O.

use std::fmt;
use std::str::FromStr;

use ktrigger_api::{TriggerServiceSpec, TriggerServiceStatus};
use ktrigger_convert::{convert_object, khook, kube_trigger};
use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

/// What a served object became.
#[derive(Debug, Clone, Default)]
pub struct Served {
    /// The spec the engine runs.
    pub spec: TriggerServiceSpec,
    /// What could not be converted, as (trigger, message); the trigger is [`WHOLE_OBJECT`] when
    /// nothing could be.
    pub problems: Vec<(String, String)>,
    /// Where the converted triggers mean something else than the original, as `ktrigger convert`
    /// reports it.
    pub changes: Vec<String>,
}

/// The trigger named in problems that concern the whole object.
pub const WHOLE_OBJECT: &str = "(all)";

/// A kind of object served besides ktrigger's TriggerServices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Compat {
    /// khook's `kagent.dev/v1alpha2` Hook.
    Khook,
    /// kube-trigger's `standard.oam.dev/v1alpha1` TriggerService.
    KubeTrigger,
}

impl FromStr for Compat {
    type Err = String;

    fn from_str(name: &str) -> Result<Compat, String> {
        match name.trim() {
            "khook" => Ok(Compat::Khook),
            "kube-trigger" => Ok(Compat::KubeTrigger),
            other => Err(format!("unknown kind of object to serve {other:?}; use khook, kube-trigger or both")),
        }
    }
}

impl fmt::Display for Compat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compat::Khook => "khook",
            Compat::KubeTrigger => "kube-trigger",
        })
    }
}

impl Compat {
    /// The resource the objects are.
    pub fn resource(self) -> ApiResource {
        let (api_version, kind, plural) = match self {
            Compat::Khook => (khook::API_VERSION, "Hook", "hooks"),
            Compat::KubeTrigger => (kube_trigger::API_VERSION, "TriggerService", "triggerservices"),
        };
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
    }

    /// The name the engine knows an object by: `hook:NAME` or `kube-trigger:NAME`. A colon is
    /// never part of an object name, so these never meet a ktrigger TriggerService's.
    pub fn engine_name(self, name: &str) -> String {
        match self {
            Compat::Khook => format!("hook:{name}"),
            Compat::KubeTrigger => format!("kube-trigger:{name}"),
        }
    }

    /// What `object` becomes: triggers that could not be converted are left out and named in
    /// `problems`. Hooks call kagent at `kagent_url`.
    pub fn convert(self, object: &DynamicObject, kagent_url: Option<&str>) -> Served {
        let whole = |message: String| Served {
            spec: TriggerServiceSpec::default(),
            problems: vec![(WHOLE_OBJECT.to_string(), message)],
            changes: Vec::new(),
        };
        let value = match serde_json::to_value(object) {
            Ok(value) => value,
            Err(error) => return whole(format!("unreadable object: {error}")),
        };
        let (service, notes) = match convert_object(&value) {
            Ok(converted) => converted,
            Err(note) => return whole(format!("{}: {}", note.field, note.message)),
        };
        let mut spec = service.spec;
        let refused: Vec<String> = notes.iter().filter(|n| n.refused).filter_map(|n| n.trigger.clone()).collect();
        spec.triggers.retain(|t| t.name.as_ref().is_none_or(|name| !refused.contains(name)));
        if let Some(url) = kagent_url {
            for destination in spec.triggers.iter_mut().flat_map(|t| t.destinations.iter_mut()) {
                if destination.type_name == "kagent" && self == Compat::Khook {
                    destination.properties["baseUrl"] = json!(url);
                }
            }
        }
        let problems = notes
            .iter()
            .filter(|n| n.refused)
            .map(|n| (n.trigger.clone().unwrap_or_else(|| WHOLE_OBJECT.into()), format!("{}: {}", n.field, n.message)))
            .collect();
        let changes = notes
            .iter()
            .filter(|n| !n.refused)
            .map(|n| match &n.trigger {
                Some(trigger) => format!("trigger {trigger}: {}: {}", n.field, n.message),
                None => format!("{}: {}", n.field, n.message),
            })
            .collect();
        Served { spec, problems, changes }
    }

    /// The status of the object in its own shape: khook's `activeEvents` and `lastUpdated` for a
    /// Hook (with the Ready condition), ktrigger's status for a kube-trigger TriggerService
    /// (kube-trigger wrote none).
    pub fn status(self, status: &TriggerServiceStatus) -> Value {
        match self {
            Compat::KubeTrigger => serde_json::to_value(status).unwrap_or(Value::Null),
            Compat::Khook => {
                let active: Vec<Value> = status
                    .triggers
                    .iter()
                    .flat_map(|trigger| trigger.active_events.iter().map(move |event| (trigger, event)))
                    .map(|(trigger, event)| {
                        // khook's key: type:namespace:name.
                        let mut parts = event.key.splitn(3, ':');
                        let (event_type, resource) = match (parts.next(), parts.next(), parts.next()) {
                            (Some(kind), Some(_), Some(name)) => (kind.to_string(), name.to_string()),
                            _ => (trigger.name.clone(), event.key.clone()),
                        };
                        json!({"eventType": event_type, "resourceName": resource, "firstSeen": event.first_seen,
                               "lastSeen": event.last_seen, "status": event.state})
                    })
                    .collect();
                json!({
                    "activeEvents": active,
                    "lastUpdated": status.last_updated,
                    "observedGeneration": status.observed_generation,
                    "conditions": status.conditions,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrigger_api::{ActiveEvent, TriggerStatus};

    fn hook() -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "kagent.dev/v1alpha2", "kind": "Hook",
            "metadata": {"name": "pods", "namespace": "apps"},
            "spec": {"eventConfigurations": [
                {"eventType": "pod-restart", "agentRef": {"name": "k8s-agent", "namespace": "kagent"},
                 "prompt": "Pod {{.ResourceName}} restarted"}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_hook_is_served_with_the_kagent_url_of_the_controller() {
        let served = Compat::Khook.convert(&hook(), Some("http://kagent.test:8083"));
        assert!(served.problems.is_empty() && served.changes.is_empty(), "{served:?}");
        let destination = &served.spec.triggers[0].destinations[0];
        assert_eq!(destination.properties["baseUrl"], "http://kagent.test:8083");
        assert_eq!(served.spec.triggers[0].source.properties["namespace"], "apps");
    }

    #[test]
    fn a_kube_trigger_filter_that_cannot_be_translated_leaves_its_trigger_out() {
        let object = serde_json::from_value(json!({
            "apiVersion": "standard.oam.dev/v1alpha1", "kind": "TriggerService",
            "metadata": {"name": "t", "namespace": "apps"},
            "spec": {"triggers": [
                {"source": {"type": "cronjob", "properties": {"schedule": "* * * * *"}},
                 "filter": "len(context.data) > 1", "action": {"type": "log"}},
                {"source": {"type": "cronjob", "properties": {"schedule": "* * * * *"}}, "action": {"type": "log"}}]}
        }))
        .unwrap();
        let Served { spec, problems, .. } = Compat::KubeTrigger.convert(&object, None);
        let names: Vec<_> = spec.triggers.iter().filter_map(|t| t.name.as_deref()).collect();
        assert_eq!(names, ["trigger-1"]);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "trigger-0");
        assert!(problems[0].1.starts_with("triggers[0].filter: not translated"), "{problems:?}");
    }

    #[test]
    fn hook_status_lists_active_events_in_khook_shape() {
        let status = TriggerServiceStatus {
            last_updated: Some("2026-12-01T10:00:05Z".into()),
            triggers: vec![TriggerStatus {
                name: "pod-restart".into(),
                active_events: vec![ActiveEvent {
                    key: "pod-restart:apps:web-0".into(),
                    state: "firing".into(),
                    first_seen: "2026-12-01T10:00:00Z".into(),
                    last_seen: "2026-12-01T10:00:04Z".into(),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let shaped = Compat::Khook.status(&status);
        assert_eq!(
            shaped["activeEvents"],
            json!([{"eventType": "pod-restart", "resourceName": "web-0", "firstSeen": "2026-12-01T10:00:00Z",
                    "lastSeen": "2026-12-01T10:00:04Z", "status": "firing"}])
        );
        assert_eq!(shaped["lastUpdated"], "2026-12-01T10:00:05Z");
    }
}
