//! Schema overrides for fields whose shape the types do not fix.

use schemars::{Schema, SchemaGenerator, json_schema};

/// A free-form object: any fields, kept by the API server as they are.
pub fn free_form(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}
