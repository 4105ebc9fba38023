//! The JSON Schema of a TriggerService file, for editors (yaml-language-server) and CI.
//!
//! The spec and status parts come from the types; each source and destination entry gets the
//! schema of its type's properties, chosen by its `type` (an `if`/`then` per type).

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use crate::{DestinationSpec, SourceSpec, TriggerFile, TriggerServiceSpec, TriggerServiceStatus};

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
    // The entries are written in place wherever they occur (their types are inlined), so they
    // are found by their schema.
    let source_entry = entry_schema::<SourceSpec>();
    let destination_entry = entry_schema::<DestinationSpec>();
    for definition in definitions.values_mut() {
        add_properties(definition, &source_entry, sources);
        add_properties(definition, &destination_entry, destinations);
    }
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
        // `if` rather than `oneOf`: a broken document is then checked against the one form it
        // is meant to be, and its errors say where it is broken.
        "if": {"required": ["triggers"]},
        "then": plain,
        "else": {"$ref": "#/definitions/TriggerService"},
        "definitions": definitions,
    })
}

/// The schema of a source or destination entry, as the schema of a whole file writes it, less
/// what a field holding one may change.
fn entry_schema<T: JsonSchema>() -> Value {
    shape(&SchemaSettings::draft07().into_generator().subschema_for::<T>().to_value())
}

/// `schema` without its description (a field has its own) and with `null` dropped from its
/// type (an optional field may be null).
fn shape(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Value::Object(fields) = &mut schema {
        fields.remove("description");
        if let Some(Value::Array(types)) = fields.get("type")
            && let [only] = types.iter().filter(|t| *t != "null").collect::<Vec<_>>()[..]
        {
            let only = only.clone();
            fields.insert("type".into(), only);
        }
    }
    schema
}

/// Adds the type rules of [`with_properties`] to every part of `schema` that is `entry`.
fn add_properties(schema: &mut Value, entry: &Value, types: &[TypeSchema]) {
    if shape(schema) == *entry {
        with_properties(schema, types);
        return;
    }
    match schema {
        Value::Object(map) => map.values_mut().for_each(|v| add_properties(v, entry, types)),
        Value::Array(items) => items.iter_mut().for_each(|v| add_properties(v, entry, types)),
        _ => {}
    }
}

/// Adds to `entry` (a source or destination entry) one `if`/`then` per type: when `type` is one
/// of its names, `properties` follows its schema. `type` lists the known names as examples, for
/// completion.
fn with_properties(entry: &mut Value, types: &[TypeSchema]) {
    let Value::Object(fields) = entry else {
        return;
    };
    let names: Vec<&String> = types.iter().flat_map(|t| &t.names).collect();
    if let Some(Value::Object(type_field)) = fields.get_mut("properties").and_then(|p| p.get_mut("type")) {
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
        fields.insert("allOf".into(), Value::Array(rules));
    }
}
