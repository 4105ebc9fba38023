//! The JSON Schema of a TriggerService file, for editors (yaml-language-server) and CI.
//!
//! The spec and status parts come from the types; each source and destination entry gets the
//! schema of its type's properties, chosen by its `type` (an `if`/`then` per type).

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::{TriggerFile, TriggerServiceSpec, TriggerServiceStatus};

/// A source or destination type: its names (aliases included) and its properties' JSON Schema.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeSchema {
    /// The names `type:` may hold for it; the first is its name.
    pub names: Vec<String>,
    /// JSON Schema (draft 7, self-contained) of its `properties`; `None` when it has none.
    pub properties: Option<Value>,
}

/// The JSON Schema (draft 7) of a file `ktrigger run -f` reads: TriggerService objects
/// (`ktrigger.dev/v1alpha1`, or kube-trigger's `standard.oam.dev/v1alpha1`) or kube-trigger's
/// plain form (`triggers:` at the top level), with the properties of `sources` and
/// `destinations` checked. Other types (e.g. plugins not known here) take any properties.
pub fn file_schema(sources: &[TypeSchema], destinations: &[TypeSchema]) -> Value {
    let mut generator = SchemaSettings::draft07().into_generator();
    let spec = generator.subschema_for::<TriggerServiceSpec>().to_value();
    let status = generator.subschema_for::<TriggerServiceStatus>().to_value();
    let plain = generator.subschema_for::<TriggerFile>().to_value();
    let mut definitions = generator.take_definitions(true);
    select_properties(&mut definitions, "SourceSpec", sources);
    select_properties(&mut definitions, "DestinationSpec", destinations);
    definitions.insert(
        "TriggerService".into(),
        json!({
            "description": "A TriggerService object, as applied to a cluster or read from a file.",
            "type": "object",
            "required": ["apiVersion", "kind", "spec"],
            "properties": {
                "apiVersion": {"enum": ["ktrigger.dev/v1alpha1", "standard.oam.dev/v1alpha1"]},
                "kind": {"const": "TriggerService"},
                "metadata": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
                },
                "spec": spec,
                "status": status,
            },
            "additionalProperties": false,
        }),
    );
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": "https://ktrigger.dev/schemas/triggerservice.json",
        "title": "ktrigger TriggerService file",
        "oneOf": [{"$ref": "#/definitions/TriggerService"}, plain],
        "definitions": definitions,
    })
}

/// Adds to the definition `name` (a source or destination entry) one `if`/`then` per type: when
/// `type` is one of its names, `properties` follows its schema. `type` lists the known names
/// as examples, for completion.
fn select_properties(definitions: &mut Map<String, Value>, name: &str, types: &[TypeSchema]) {
    let Some(Value::Object(entry)) = definitions.get_mut(name) else {
        return;
    };
    let names: Vec<&String> = types.iter().flat_map(|t| &t.names).collect();
    if let Some(Value::Object(type_field)) = entry.get_mut("properties").and_then(|p| p.get_mut("type")) {
        type_field.insert("examples".into(), json!(names));
    }
    let rules: Vec<Value> = types
        .iter()
        .filter_map(|t| {
            let properties = t.properties.as_ref()?;
            Some(json!({
                "if": {"required": ["type"], "properties": {"type": {"enum": t.names}}},
                "then": {"properties": {"properties": properties}},
            }))
        })
        .collect();
    if !rules.is_empty() {
        entry.insert("allOf".into(), Value::Array(rules));
    }
}
