//! The catalogue of source and destination types: `ktrigger sources` and `ktrigger destinations`.

use std::process::ExitCode;

use ktrigger_api::TypeSchema;
use ktrigger_core::{Registry, TypeDoc};
use serde_json::{Value, json};

use ktrigger_sources::WebhookListener;

use ktrigger_plugin::PluginManager;

use crate::{Output, offline_registry, suggest, write_stdout};

/// `ktrigger sources [TYPE]`.
pub fn list_sources(name: Option<&str>, output: Output, plugins: &PluginManager) -> anyhow::Result<ExitCode> {
    let registry = offline_registry(WebhookListener::detached(), ktrigger_kube::Cluster::offline(), plugins);
    print_docs("source", registry.source_docs(), name, output)
}

/// `ktrigger destinations [TYPE]`.
pub fn list_destinations(name: Option<&str>, output: Output, plugins: &PluginManager) -> anyhow::Result<ExitCode> {
    let registry = offline_registry(WebhookListener::detached(), ktrigger_kube::Cluster::offline(), plugins);
    print_docs("destination", registry.destination_docs(), name, output)
}

/// `ktrigger schema`: the JSON Schema of TriggerService files with every known type's properties.
pub fn print_schema(plugins: &PluginManager) -> anyhow::Result<ExitCode> {
    let registry = offline_registry(WebhookListener::detached(), ktrigger_kube::Cluster::offline(), plugins);
    let schema = file_schema(&registry);
    write_stdout((serde_json::to_string_pretty(&schema)? + "\n").as_bytes())
}

/// The JSON Schema of TriggerService files for the types of `registry`.
pub fn file_schema(registry: &Registry) -> Value {
    let types = |docs: Vec<&TypeDoc>| -> Vec<TypeSchema> {
        docs.into_iter()
            .map(|doc| TypeSchema {
                names: std::iter::once(&doc.name).chain(&doc.aliases).cloned().collect(),
                properties: doc.schema.clone(),
            })
            .collect()
    };
    ktrigger_api::file_schema(&types(registry.source_docs()), &types(registry.destination_docs()))
}

/// Every type, or the one named (by its name or an alias), as text, JSON or YAML.
fn print_docs(kind: &str, docs: Vec<&TypeDoc>, name: Option<&str>, output: Output) -> anyhow::Result<ExitCode> {
    let docs = match name {
        None => docs,
        Some(name) => {
            let Some(doc) = docs.iter().find(|d| d.name == name || d.aliases.iter().any(|a| a == name)) else {
                let known: Vec<String> = docs.iter().map(|d| d.name.to_string()).collect();
                let hint =
                    suggest::closest(name, &known).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
                anyhow::bail!("unknown {kind} type {name:?}{hint}; known types: {}", known.join(", "));
            };
            vec![*doc]
        }
    };
    let text = match output {
        Output::Text => docs.iter().map(|doc| text(doc)).collect(),
        Output::Json => serde_json::to_string_pretty(&to_json(&docs))? + "\n",
        Output::Yaml => serde_yaml::to_string(&to_json(&docs))?,
    };
    write_stdout(text.as_bytes())
}

fn to_json(docs: &[&TypeDoc]) -> Value {
    let docs = docs.iter().map(|doc| {
        let properties: Vec<Value> = doc
            .properties
            .iter()
            .map(|p| json!({"name": p.name, "required": p.required, "description": p.description}))
            .collect();
        json!({
            "name": doc.name, "aliases": doc.aliases, "summary": doc.summary,
            "properties": properties, "example": doc.example,
        })
    });
    Value::Array(docs.collect())
}

fn text(doc: &TypeDoc) -> String {
    let aliases = if doc.aliases.is_empty() { String::new() } else { format!(" (also: {})", doc.aliases.join(", ")) };
    let mut text = format!("{}{aliases}\n  {}\n  properties:\n", doc.name, doc.summary);
    for property in &doc.properties {
        let required = if property.required { " (required)" } else { "" };
        text.push_str(&format!("    {}{required}: {}\n", property.name, property.description));
    }
    text.push_str("  example:\n");
    for line in doc.example.trim_end().lines() {
        text.push_str(&format!("    {line}\n"));
    }
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ktrigger_core::{BuildContext, Destination, DestinationType, PropertyError};
    use schemars::JsonSchema;
    use serde::Deserialize;

    use super::*;

    /// Sends a postcard.
    #[derive(Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[allow(dead_code)]
    struct PostcardProperties {
        /// Who receives it.
        recipient: String,
        /// Stamp value in cents; default 95.
        #[serde(default)]
        stamp_cents: Option<u32>,
    }

    /// A type defined only here: nothing but its properties struct documents it.
    struct Postcard;

    impl DestinationType for Postcard {
        type Properties = PostcardProperties;
        const NAME: &'static str = "postcard";
        const EXAMPLE: &'static str = "type: postcard\nproperties: {recipient: you}\n";

        fn build(&self, _: PostcardProperties, _: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
            Err(PropertyError::whole("a postcard is never sent"))
        }
    }

    #[test]
    fn the_catalogue_and_the_schema_show_what_the_properties_struct_says() {
        let mut registry = Registry::default();
        registry.add_destination_type(Postcard);
        let doc = registry.destination("postcard").unwrap().doc();
        let listed = text(doc);
        assert!(listed.starts_with("postcard\n  Sends a postcard.\n"), "{listed}");
        assert!(listed.contains("    recipient (required): Who receives it.\n"), "{listed}");
        assert!(listed.contains("    stampCents: Stamp value in cents; default 95.\n"), "{listed}");
        let listed = to_json(&[doc]);
        assert_eq!(listed[0]["properties"][1]["name"], "stampCents");

        let schema = file_schema(&registry).to_string();
        assert!(schema.contains(r#""enum":["postcard"]"#), "{schema}");
        assert!(schema.contains(r#""description":"Stamp value in cents; default 95.""#), "{schema}");
    }
}
