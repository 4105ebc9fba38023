//! `ktrigger schema`: the JSON Schema of TriggerService files accepts every file in `examples/`
//! and refuses broken documents, naming where they are broken.

mod support;

use serde::Deserialize;
use serde_json::{Value, json};
use support::{example_files, ktrigger};

/// The schema `ktrigger schema` prints, compiled.
fn validator() -> jsonschema::Validator {
    let output = ktrigger().arg("schema").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let schema: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    jsonschema::draft7::new(&schema).unwrap()
}

/// Every YAML document of `text`, as JSON.
fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|document| !document.is_null())
        .collect()
}

/// Where `document` breaks the schema (instance paths), empty when it is valid.
fn problems(validator: &jsonschema::Validator, document: &Value) -> Vec<String> {
    validator.iter_errors(document).map(|e| format!("{}: {e}", e.instance_path())).collect()
}

/// A TriggerService with one trigger of `source` and `destination`.
fn service(source: Value, destination: Value) -> Value {
    json!({
        "apiVersion": "ktrigger.dev/v1alpha1",
        "kind": "TriggerService",
        "metadata": {"name": "t"},
        "spec": {"triggers": [{"name": "t", "source": source, "destinations": [destination]}]},
    })
}

#[test]
fn every_example_file_validates_against_the_schema() {
    let validator = validator();
    let files = example_files();
    assert!(files.len() > 10, "{files:?}");
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for document in documents(&text) {
            let found = problems(&validator, &document);
            assert!(found.is_empty(), "{}: {found:#?}", path.display());
        }
    }
}

#[test]
fn broken_properties_are_refused_where_they_are() {
    let validator = validator();
    let cron = json!({"type": "cron", "properties": {"schedule": "* * * * *"}});
    let log = json!({"type": "log"});
    assert!(problems(&validator, &service(cron.clone(), log.clone())).is_empty());
    for (document, at) in [
        (service(json!({"type": "cron", "properties": {"timeZone": "UTC"}}), log.clone()), "/spec/triggers/0/source"),
        (
            service(json!({"type": "cronjob", "properties": {"schedule": "* * * * *", "tz": "UTC"}}), log.clone()),
            "/spec/triggers/0/source/properties",
        ),
        (
            service(cron.clone(), json!({"type": "log", "properties": {"includeObject": "yes"}})),
            "/spec/triggers/0/destinations/0/properties/includeObject",
        ),
        (
            service(cron.clone(), json!({"type": "webhook", "properties": {"url": "https://x", "format": "xml"}})),
            "/spec/triggers/0/destinations/0/properties/format",
        ),
        (
            service(
                cron.clone(),
                json!({"type": "slack", "properties": {"webhookUrlFrom": {"env": "A", "file": "/b"}}}),
            ),
            "/spec/triggers/0/destinations/0/properties/webhookUrlFrom",
        ),
        (
            service(
                json!({"type": "http-poller", "properties": {"url": "https://x", "headers": {"A": {"vault": "x"}}}}),
                log.clone(),
            ),
            "/spec/triggers/0/source/properties/headers/A",
        ),
        (
            json!({"triggers": [{"source": {"type": "cron", "properties": {"schedule": 5}}, "action": log}]}),
            "/triggers/0/source/properties/schedule",
        ),
    ] {
        let found = problems(&validator, &document);
        assert!(found.iter().any(|p| p.starts_with(at)), "{document}: expected a problem at {at}: {found:#?}");
    }
}

#[test]
fn secret_references_and_unknown_types_validate() {
    let validator = validator();
    let cron = json!({"type": "cron", "properties": {"schedule": "* * * * *"}});
    for reference in [
        json!({"env": "SLACK_URL"}),
        json!({"file": "/run/secrets/slack"}),
        json!({"secretKeyRef": {"name": "slack", "key": "url"}}),
    ] {
        let slack = json!({"type": "slack", "properties": {"webhookUrlFrom": reference}});
        let found = problems(&validator, &service(cron.clone(), slack));
        assert!(found.is_empty(), "{reference}: {found:#?}");
    }
    // A type the schema does not know (e.g. from a plugin) takes any properties.
    let plugin = json!({"type": "counter", "properties": {"intervalMs": 5}});
    assert!(problems(&validator, &service(plugin, json!({"type": "log"}))).is_empty());
}
