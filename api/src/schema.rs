//! Schema overrides for fields whose shape the types do not fix, and the CRD validation rules.
//!
//! The rules (`x-kubernetes-validations`) make the API server refuse what [`validate_spec`]
//! refuses wherever a rule can say it exactly; `validate_spec` stays the reference for files and
//! for what no rule covers (durations, CEL syntax, unknown types).
//!
//! A real API server refuses a CRD whose rules may cost too much: the estimated cost of one rule
//! times the number of places it applies must stay under 10,000,000, all rules together under
//! 100,000,000, and one evaluation may not exceed 1,000,000 at run time. It estimates strings
//! at 4 bytes per character of their `maxLength` and lists at their `maxItems` (unbounded ones
//! from the 3 MiB request limit), so every list and string a rule walks is bounded here.
//! Estimates below follow cel-go's cost model: 1 per variable, field or call, a tenth of the
//! length for string comparisons and `trim`, the product of string and pattern sizes for
//! `matches`, and loops multiplied by their list's size. All rules together: ~1,700,000.
//!
//! [`validate_spec`]: crate::validate_spec

use kube::core::{Rule, validate};
use schemars::{Schema, SchemaGenerator, json_schema};
use serde_json::Value;

/// Most triggers in one TriggerService. The name rules compare every pair of triggers, about 16
/// cost units per pair of 63-character names at run time: 128² pairs cost ~270,000 of the
/// 1,000,000 one evaluation may use (estimated: ~560,000), where 256 triggers could exceed it.
pub(crate) const MAX_TRIGGERS: usize = 128;

/// Most destinations of one trigger: bounds the places the destination `type` rule applies to
/// 128 × 64 (estimated ~840,000 in all).
pub(crate) const MAX_DESTINATIONS: usize = 64;

/// Longest explicit trigger name, as `validate_spec` allows.
pub(crate) const MAX_NAME: usize = 63;

/// Longest source or destination type name (a DNS subdomain's limit, generous for plugins).
pub(crate) const MAX_TYPE: usize = 253;

/// Longest CEL expression (filter or dedup key), in bytes: the CRD's `maxLength`, and what the
/// engine refuses before parsing.
pub const MAX_EXPRESSION: usize = 4096;

/// Explicit trigger names are unique. Estimated ~560,000 (128 × 128 comparisons of 252 bytes).
pub(crate) const UNIQUE_NAMES: &str =
    "self.all(t, !has(t.name) || self.exists_one(u, has(u.name) && u.name == t.name))";

/// No explicit name is `trigger-<i>` when trigger `i` is unnamed and so called that (three digits
/// cover every index below [`MAX_TRIGGERS`]). Estimated ~36,000.
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

/// A free-form object: any fields, kept by the API server as they are.
pub fn free_form(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

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

/// Drops `null` from an optional field's types, so the schema does not mark it `nullable`.
///
/// The API server keeps an explicit `null` in a nullable field, where rules see it as present
/// (`has()` is true) while the types read it as absent; without `nullable` it drops the `null`
/// before validating, and rules and types agree.
pub fn not_nullable(schema: &mut Schema) {
    if let Some(Value::Array(types)) = schema.get_mut("type") {
        types.retain(|t| t != "null");
        if let [single] = types.as_slice() {
            let single = single.clone();
            schema.insert("type".into(), single);
        }
    }
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
