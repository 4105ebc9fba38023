//! The `TriggerService` custom resource: its status, the CRD's validation rules and the CRD
//! itself. The rules' cost estimates are explained in [`crate::schema`].

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResourceExt;
use kube::core::{Rule, validate};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::{TriggerService, TriggerStatus};

/// Explicit trigger names are unique. Estimated ~560,000 (128 × 128 comparisons of 252 bytes).
pub(crate) const UNIQUE_NAMES: &str =
    "self.all(t, !has(t.name) || self.exists_one(u, has(u.name) && u.name == t.name))";

/// No explicit name is `trigger-<i>` when trigger `i` is unnamed and so called that (three digits
/// cover every index below [`MAX_TRIGGERS`](crate::schema::MAX_TRIGGERS)). Estimated ~36,000.
pub(crate) const NO_NAME_OF_UNNAMED: &str = "self.all(t, !has(t.name) \
     || !t.name.matches('^trigger-(0|[1-9][0-9]{0,2})$') \
     || int(t.name.substring(8)) >= size(self) \
     || has(self[int(t.name.substring(8))].name))";

/// A trigger has a destination: `destinations` or kube-trigger's `action`. Estimated ~1,000.
pub(crate) const HAS_DESTINATION: &str = "(has(self.destinations) && size(self.destinations) > 0) || has(self.action)";

/// `destinations` and `action` are not both set. Estimated ~1,300.
pub(crate) const DESTINATIONS_OR_ACTION: &str =
    "!has(self.action) || !has(self.destinations) || size(self.destinations) == 0";

/// The form of an explicit trigger name (its length is `maxLength`). Estimated ~30,000.
pub(crate) const NAME_FORM: &str = "self.matches('^[a-z0-9.]([-a-z0-9.]*[a-z0-9.])?$')";

/// A type name or dedup key is not blank; `trim` removes Unicode white space, as Rust's does.
/// Estimated ~13,000 for a source type, ~840,000 for destination types, ~210,000 for dedup keys.
pub(crate) const NOT_BLANK: &str = "self.trim() != ''";

/// Adds the rules that trigger names are unique, unnamed triggers' `trigger-<index>` included.
pub fn unique_trigger_names(schema: &mut Schema) {
    let rules = [
        Rule::new(UNIQUE_NAMES).message("trigger names must be unique"),
        Rule::new(NO_NAME_OF_UNNAMED)
            .message("trigger names must be unique: an unnamed trigger is named trigger-<index>"),
    ];
    for rule in rules {
        validate(schema, rule).expect("a rule serializes to JSON");
    }
}

/// What the engine reports about a TriggerService.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerServiceStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` is True when every trigger loaded; False with the exact errors otherwise. The
    /// standard `metav1.Condition`, one per `type`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions")]
    pub conditions: Vec<Condition>,
    /// `ready/total` triggers, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_triggers: Option<String>,
    /// Events fired by all triggers.
    #[serde(default)]
    pub fired: u64,
    /// Failed delivery attempts of all triggers.
    #[serde(default)]
    pub failed: u64,
    /// One entry per trigger.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<TriggerStatus>,
    /// When anything in this status last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<String>,
}

/// `status.conditions`: the standard `metav1.Condition`, as Kubernetes' own types declare it
/// (status True, False or Unknown; reason in CamelCase), one per `type` (a map list keyed by
/// `type`, so that server-side apply merges by type).
pub(crate) fn conditions(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 16,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "description": "Condition contains details for one aspect of the current state of this API Resource.",
            "required": ["lastTransitionTime", "message", "reason", "status", "type"],
            "properties": {
                "lastTransitionTime": {
                    "type": "string",
                    "format": "date-time",
                    "description": "When the condition last changed from one status to another."
                },
                "message": {"type": "string", "maxLength": 32768, "description": "Details, for a person."},
                "observedGeneration": {
                    "type": "integer",
                    "format": "int64",
                    "minimum": 0,
                    "description": "The metadata.generation the condition was set for."
                },
                "reason": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 1024,
                    "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
                    "description": "Why, as a CamelCase identifier."
                },
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "type": {
                    "type": "string",
                    "maxLength": 316,
                    "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
                    "description": "Condition type in CamelCase, e.g. Ready."
                }
            }
        }
    })
}

/// The TriggerService CRD as YAML, exactly as written to `config/crd/`.
pub fn crd_yaml() -> String {
    let crd = TriggerService::crd();
    let body = serde_yaml::to_string(&crd).expect("a CRD always serializes");
    format!("# Generated by `ktrigger crd`; do not edit.\n{body}")
}
