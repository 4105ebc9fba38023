//! The CRD in config/crd/ is generated from the types and is a structural schema.

use serde_json::Value;

const CRD_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/crd/ktrigger.dev_triggerservices.yaml");

#[test]
fn crd_file_matches_the_types() {
    let on_disk = std::fs::read_to_string(CRD_PATH).expect("config/crd/ktrigger.dev_triggerservices.yaml exists");
    assert!(
        on_disk == ktrigger_api::crd_yaml(),
        "config/crd is out of date: run `hack/gen-crd.sh` (cargo run -q -- crd > {CRD_PATH})"
    );
}

#[test]
fn crd_schema_is_structural() {
    let crd: Value = serde_yaml::from_str(&ktrigger_api::crd_yaml()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut problems = Vec::new();
    check_structural(schema, "openAPIV3Schema", &mut problems);
    assert!(problems.is_empty(), "not a structural schema:\n{}", problems.join("\n"));
    let properties = &schema["properties"]["spec"]["properties"]["triggers"]["items"]["properties"]["source"]["properties"]
        ["properties"];
    assert_eq!(properties["x-kubernetes-preserve-unknown-fields"], Value::Bool(true));
}

#[test]
fn crd_has_status_subresource_short_name_and_printer_columns() {
    let crd: Value = serde_yaml::from_str(&ktrigger_api::crd_yaml()).unwrap();
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "kts");
    let version = &crd["spec"]["versions"][0];
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> =
        version["additionalPrinterColumns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(columns, ["Ready", "Triggers", "Fired", "Failed", "Age"]);
}

/// Kubernetes' structural rules: every node has a type (or preserves unknown fields), no
/// `$ref`, and the value-validation keywords `anyOf`/`oneOf` only restate types given elsewhere.
fn check_structural(node: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        problems.push(format!("{path}: not an object"));
        return;
    };
    if map.contains_key("$ref") {
        problems.push(format!("{path}: $ref is not allowed"));
    }
    let preserves = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let int_or_string = map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if !map.contains_key("type") && !preserves && !int_or_string {
        problems.push(format!("{path}: no type"));
    }
    for keyword in ["anyOf", "oneOf", "allOf"] {
        if let Some(branches) = map.get(keyword).and_then(Value::as_array) {
            for branch in branches {
                if branch.get("type").is_some() || branch.get("properties").is_some() {
                    problems.push(format!("{path}: {keyword} branches may not declare types or properties"));
                }
            }
        }
    }
    if let Some(properties) = map.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            check_structural(child, &format!("{path}.{name}"), problems);
        }
    }
    if let Some(items) = map.get("items") {
        check_structural(items, &format!("{path}[]"), problems);
    }
    if let Some(additional) = map.get("additionalProperties").filter(|v| v.is_object()) {
        check_structural(additional, &format!("{path}{{}}"), problems);
    }
}
