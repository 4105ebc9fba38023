//! Schema overrides for fields whose shape the types do not fix, and the bounds the CRD's
//! validation rules ([`crate::crd`]) rely on.
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

/// A free-form object: any fields, kept by the API server as they are.
pub fn free_form(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
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
