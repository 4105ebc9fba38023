//! The CRD in config/crd/ is generated from the types, is a structural schema, and carries
//! validation rules that a real API server accepts and that refuse what `validate_spec` refuses.
//!
//! No API server runs here: each rule is parsed and evaluated with the `cel` crate (standard
//! library and the strings extension, as Kubernetes offers them) over sample objects, and its
//! field references and bounds are checked against the schema the way the API server checks
//! them when the CRD is created.

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::ast::{Expr, IdedExpr, operators};
use cel::{Context, Env};
use serde_json::{Value, json};

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

fn crd() -> Value {
    serde_yaml::from_str(&ktrigger_api::crd_yaml()).unwrap()
}

fn root_schema(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
}

/// The schema node at `path`: property names, with `[]` for a list's items.
fn node<'a>(crd: &'a Value, path: &str) -> &'a Value {
    let mut at = root_schema(crd);
    for part in path.split('.') {
        let (name, items) = match part.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (part, false),
        };
        at = &at["properties"][name];
        if items {
            at = &at["items"];
        }
        assert!(at.is_object(), "no schema at {path}");
    }
    at
}

/// `(rule, message, fieldPath, reason)` of every rule at a node.
fn rules_at(node: &Value) -> Vec<(String, String, String, String)> {
    let text = |rule: &Value, key: &str| rule[key].as_str().unwrap_or_default().to_string();
    node["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (text(r, "rule"), text(r, "message"), text(r, "fieldPath"), text(r, "reason")))
        .collect()
}

#[test]
fn rules_sit_where_they_apply_with_the_bounds_they_need() {
    let crd = crd();
    let triggers = node(&crd, "spec.triggers");
    assert_eq!(triggers["maxItems"], 128);
    let messages: Vec<String> = rules_at(triggers).into_iter().map(|r| r.1).collect();
    assert_eq!(
        messages,
        ["trigger names must be unique", "trigger names must be unique: an unnamed trigger is named trigger-<index>"]
    );

    let trigger = node(&crd, "spec.triggers[]");
    let rules: Vec<(String, String, String)> = rules_at(trigger).into_iter().map(|r| (r.1, r.2, r.3)).collect();
    assert_eq!(
        rules,
        [
            (
                "at least one destination is required (destinations, or kube-trigger's action)".into(),
                ".destinations".into(),
                "FieldValueRequired".into()
            ),
            ("set either destinations or action, not both".into(), ".action".into(), String::new()),
        ]
    );
    assert_eq!(node(&crd, "spec.triggers[].destinations")["maxItems"], 64);

    let name = node(&crd, "spec.triggers[].name");
    assert_eq!(name["maxLength"], 63);
    assert_eq!(rules_at(name).len(), 1);
    // Rules see a field as present when it holds null; without `nullable` the API server drops
    // the null first, as serde reads it: absent.
    for field in ["name", "action"] {
        assert!(node(&crd, &format!("spec.triggers[].{field}")).get("nullable").is_none(), "{field} is nullable");
    }

    let required = |path: &str, max: u64, message: &str| {
        let at = node(&crd, path);
        assert_eq!(at["maxLength"], max, "{path}");
        let rules = rules_at(at);
        assert_eq!(rules.len(), 1, "{path}");
        assert_eq!((rules[0].1.as_str(), rules[0].3.as_str()), (message, "FieldValueRequired"), "{path}");
    };
    required("spec.triggers[].source.type", 253, "a source type is required");
    for destination in ["destinations[]", "action", "deadLetter"] {
        required(&format!("spec.triggers[].{destination}.type"), 253, "a destination type is required");
    }
    required("spec.triggers[].dedup.key", 4096, "a dedup key expression is required");

    for path in [
        "spec.triggers[].rateLimit.perMinute",
        "spec.triggers[].rateLimit.burst",
        "spec.triggers[].destinations[].queueSize",
        "spec.triggers[].action.retry.maxAttempts",
        "spec.triggers[].deadLetter.retry.maxAttempts",
    ] {
        assert_eq!(node(&crd, path)["minimum"], 1.0, "{path}");
    }
    // Plugins add source and destination types: no enum.
    assert!(node(&crd, "spec.triggers[].source.type").get("enum").is_none());
}

/// Every rule in a schema: its location, the rule and whether every list above it is bounded.
fn all_rules(schema: &Value, path: &str, lists_bounded: bool, out: &mut Vec<(String, Value, Value, bool)>) {
    for rule in schema["x-kubernetes-validations"].as_array().into_iter().flatten() {
        out.push((path.to_string(), schema.clone(), rule.clone(), lists_bounded));
    }
    for (name, child) in schema["properties"].as_object().into_iter().flatten() {
        all_rules(child, &format!("{path}.{name}"), lists_bounded, out);
    }
    if let Some(items) = schema.get("items") {
        all_rules(items, &format!("{path}[]"), lists_bounded && schema.get("maxItems").is_some(), out);
    }
}

/// What a rule reads, as the API server's type check and cost estimate see it.
#[derive(Default)]
struct Reads {
    /// Strings it reads (compares, matches, trims), by path.
    strings: Vec<(String, Value)>,
    /// Lists it loops over, by path.
    iterated: Vec<(String, Value)>,
    /// Fields it names that the schema does not have.
    unknown: Vec<String>,
}

/// The schema node an expression stands for, when it is one; records what it reads.
fn reads(expr: &IdedExpr, scope: &HashMap<String, (String, Value)>, out: &mut Reads) -> Option<(String, Value)> {
    let found = match &expr.expr {
        Expr::Ident(name) => scope.get(name).cloned(),
        Expr::Select(select) => {
            let (path, node) = reads(&select.operand, scope, out)?;
            let path = format!("{path}.{}", select.field);
            match node["properties"].get(&select.field) {
                Some(child) => Some((path, child.clone())),
                None => {
                    if node.get("x-kubernetes-preserve-unknown-fields") != Some(&Value::Bool(true)) {
                        out.unknown.push(path);
                    }
                    None
                }
            }
        }
        Expr::Call(call) => {
            let target = call.target.as_ref().and_then(|t| reads(t, scope, out));
            let args: Vec<_> = call.args.iter().map(|a| reads(a, scope, out)).collect();
            match (call.func_name.as_str(), target, args.first()) {
                (operators::INDEX, None, Some(Some((path, list)))) => {
                    Some((format!("{path}[]"), list["items"].clone()))
                }
                _ => None,
            }
        }
        Expr::Comprehension(c) => {
            let range = reads(&c.iter_range, scope, out);
            reads(&c.accu_init, scope, out);
            let mut inner = scope.clone();
            if let Some((path, list)) = &range {
                out.iterated.push((path.clone(), list.clone()));
                inner.insert(c.iter_var.clone(), (format!("{path}[]"), list["items"].clone()));
            }
            for e in [&c.loop_cond, &c.loop_step, &c.result] {
                reads(e, &inner, out);
            }
            None
        }
        Expr::List(list) => {
            list.elements.iter().for_each(|e| drop(reads(e, scope, out)));
            None
        }
        _ => None,
    };
    if let Some((path, node)) = &found
        && node["type"] == "string"
    {
        out.strings.push((path.clone(), node.clone()));
    }
    found
}

#[test]
fn rules_name_only_schema_fields_and_walk_only_bounded_lists_and_strings() {
    let crd = crd();
    let mut rules = Vec::new();
    all_rules(root_schema(&crd), "", true, &mut rules);
    assert_eq!(rules.len(), 10, "rules: {:#?}", rules.iter().map(|r| (&r.0, &r.2["rule"])).collect::<Vec<_>>());
    let env = Env::stdlib();
    for (path, schema, rule, lists_bounded) in rules {
        let text = rule["rule"].as_str().unwrap();
        assert!(lists_bounded, "{path}: `{text}` applies once per item of an unbounded list");
        let program = env.compile(text).unwrap_or_else(|e| panic!("{path}: `{text}` does not parse: {e}"));
        let mut out = Reads::default();
        let scope = HashMap::from([("self".to_string(), (format!("self@{path}"), schema))]);
        reads(program.expression(), &scope, &mut out);
        assert!(out.unknown.is_empty(), "{path}: `{text}` names fields the schema lacks: {:?}", out.unknown);
        for (read, string) in &out.strings {
            assert!(string.get("maxLength").is_some(), "{path}: `{text}` reads the unbounded string {read}");
        }
        for (read, list) in &out.iterated {
            assert!(list.get("maxItems").is_some(), "{path}: `{text}` loops over the unbounded list {read}");
        }
    }
}

/// The environment Kubernetes evaluates CRD rules in, as far as these rules use it: the standard
/// library and the strings extension (`trim`, `substring`).
fn kubernetes_env() -> Arc<Env> {
    let mut env = Env::stdlib();
    env.add_extension(cel::extensions::strings).unwrap();
    Arc::new(env)
}

/// What the API server does to a `null` in a field whose schema is not `nullable`: drops it.
fn prune_nulls(schema: &Value, value: &mut Value) {
    if let Some(fields) = value.as_object_mut() {
        fields.retain(|name, v| !v.is_null() || schema["properties"][name]["nullable"] == true);
        for (name, v) in fields.iter_mut() {
            prune_nulls(&schema["properties"][name], v);
        }
    }
    if let Some(items) = value.as_array_mut() {
        items.iter_mut().for_each(|item| prune_nulls(&schema["items"], item));
    }
}

/// `path: message` for every rule of `schema` that `value` fails, as the API server evaluates
/// them: every rule of every node with a non-null value.
fn violations(env: &Arc<Env>, schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    if value.is_null() {
        return;
    }
    for rule in schema["x-kubernetes-validations"].as_array().into_iter().flatten() {
        let text = rule["rule"].as_str().unwrap();
        let at = format!("{path}{}", rule["fieldPath"].as_str().unwrap_or_default());
        let program = env.compile(text).unwrap();
        let mut context = Context::with_env(env.clone());
        context.add_variable("self", value.clone()).unwrap();
        match program.execute(&context) {
            Ok(cel::Value::Bool(true)) => {}
            Ok(cel::Value::Bool(false)) => out.push(format!("{at}: {}", rule["message"].as_str().unwrap())),
            other => out.push(format!("{at}: `{text}` evaluates to {other:?}")),
        }
    }
    if let (Some(properties), Some(fields)) = (schema["properties"].as_object(), value.as_object()) {
        for (name, child) in properties {
            if let Some(field) = fields.get(name) {
                violations(env, child, field, &format!("{path}.{name}"), out);
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
        for (index, item) in list.iter().enumerate() {
            violations(env, items, item, &format!("{path}[{index}]"), out);
        }
    }
}

/// The rules the API server would find broken in `spec`, and the fields `validate_spec` reports.
fn judge(spec: Value) -> (Vec<String>, Vec<String>) {
    let crd = crd();
    let schema = &root_schema(&crd)["properties"]["spec"];
    let mut pruned = spec.clone();
    prune_nulls(schema, &mut pruned);
    let mut broken = Vec::new();
    violations(&kubernetes_env(), schema, &pruned, "spec", &mut broken);
    let typed: ktrigger_api::TriggerServiceSpec = serde_json::from_value(spec).unwrap();
    let fields = ktrigger_api::validate_spec(&typed).into_iter().map(|e| e.field).collect();
    (broken, fields)
}

fn cron() -> Value {
    json!({"type": "cron", "properties": {"schedule": "* * * * *"}})
}

fn log() -> Value {
    json!([{"type": "log"}])
}

fn named(name: &str) -> Value {
    json!({"name": name, "source": cron(), "destinations": log()})
}

fn unnamed() -> Value {
    json!({"source": cron(), "destinations": log()})
}

#[test]
fn valid_and_unnamed_triggers_pass_both_checks() {
    let cases = [
        json!({"triggers": [named("a"), named("b")]}),
        json!({"triggers": [unnamed(), unnamed(), named("a")]}),
        json!({"triggers": [{"name": "x", "source": cron(), "action": {"type": "log"}}]}),
        // Explicit names that look generated but name no unnamed trigger.
        json!({"triggers": [named("trigger-0"), unnamed(), named("trigger-7"), named("trigger-01")]}),
        // `null` is absent, for the API server (not nullable) as for serde.
        json!({"triggers": [{"name": null, "source": cron(), "destinations": log(), "action": null}, unnamed()]}),
        json!({"triggers": [{
            "name": "full", "source": {"type": "webhook", "properties": {"path": "/x"}},
            "filter": "object.ok", "dedup": {"key": "object.id", "window": "1m"},
            "rateLimit": {"perMinute": 3, "burst": 1}, "debounce": "1s",
            "destinations": [{"type": "webhook", "properties": {"url": "http://x"},
                              "retry": {"maxAttempts": 2, "backoff": "1s"}, "timeout": "5s", "queueSize": 10}],
            "deadLetter": {"type": "log"}
        }]}),
    ];
    for spec in cases {
        assert_eq!(judge(spec.clone()), (vec![], vec![]), "{spec}");
    }
}

#[test]
fn rules_refuse_what_validate_spec_refuses() {
    let blank_type = |field: &str, value: Value| {
        let mut trigger = named("t");
        trigger[field] = value;
        json!({"triggers": [trigger]})
    };
    let cases: Vec<(Value, Vec<&str>, Vec<&str>)> = vec![
        (
            json!({"triggers": [named("a"), named("b"), named("a")]}),
            vec!["spec.triggers: trigger names must be unique"],
            vec!["triggers[2].name"],
        ),
        (
            json!({"triggers": [named("trigger-1"), unnamed()]}),
            vec!["spec.triggers: trigger names must be unique: an unnamed trigger is named trigger-<index>"],
            vec!["triggers[1].name"],
        ),
        (
            json!({"triggers": [unnamed(), unnamed(), unnamed(), named("trigger-2")]}),
            vec!["spec.triggers: trigger names must be unique: an unnamed trigger is named trigger-<index>"],
            vec!["triggers[3].name"],
        ),
        (
            json!({"triggers": [{"name": "a", "source": cron()}]}),
            vec![
                "spec.triggers[0].destinations: at least one destination is required (destinations, or kube-trigger's action)",
            ],
            vec!["triggers[0].destinations"],
        ),
        (
            json!({"triggers": [{"name": "a", "source": cron(), "destinations": [], "action": null}]}),
            vec![
                "spec.triggers[0].destinations: at least one destination is required (destinations, or kube-trigger's action)",
            ],
            vec!["triggers[0].destinations"],
        ),
        (
            json!({"triggers": [{"name": "a", "source": cron(), "destinations": log(), "action": {"type": "log"}}]}),
            vec!["spec.triggers[0].action: set either destinations or action, not both"],
            vec!["triggers[0].action"],
        ),
        (
            json!({"triggers": [named("Upper"), named("-dash"), named("dash-"), named("under_score"), named("")]}),
            vec![
                "spec.triggers[0].name: use lower-case letters, digits, '-' or '.', not starting or ending with '-'",
                "spec.triggers[1].name: use lower-case letters, digits, '-' or '.', not starting or ending with '-'",
                "spec.triggers[2].name: use lower-case letters, digits, '-' or '.', not starting or ending with '-'",
                "spec.triggers[3].name: use lower-case letters, digits, '-' or '.', not starting or ending with '-'",
                "spec.triggers[4].name: use lower-case letters, digits, '-' or '.', not starting or ending with '-'",
            ],
            vec!["triggers[0].name", "triggers[1].name", "triggers[2].name", "triggers[3].name", "triggers[4].name"],
        ),
        (
            blank_type("source", json!({"type": " \t\u{a0}\u{3000}"})),
            vec!["spec.triggers[0].source.type: a source type is required"],
            vec!["triggers[0].source.type"],
        ),
        (
            json!({"triggers": [{"name": "t", "source": cron(), "action": {"type": ""}, "deadLetter": {"type": "\n"}}]}),
            vec![
                "spec.triggers[0].action.type: a destination type is required",
                "spec.triggers[0].deadLetter.type: a destination type is required",
            ],
            vec!["triggers[0].action.type", "triggers[0].deadLetter.type"],
        ),
        (
            blank_type("destinations", json!([{"type": "log"}, {"type": "  "}])),
            vec!["spec.triggers[0].destinations[1].type: a destination type is required"],
            vec!["triggers[0].destinations[1].type"],
        ),
        (
            blank_type("dedup", json!({"key": " ", "window": "1m"})),
            vec!["spec.triggers[0].dedup.key: a dedup key expression is required"],
            vec!["triggers[0].dedup.key"],
        ),
    ];
    for (spec, rules, fields) in cases {
        let (broken, reported) = judge(spec.clone());
        assert_eq!(broken, rules, "rules on {spec}");
        assert_eq!(reported, fields, "validate_spec on {spec}");
    }
}

#[test]
fn the_schema_bounds_match_validate_spec() {
    let longest = "a".repeat(63);
    assert_eq!(judge(json!({"triggers": [named(&longest)]})), (vec![], vec![]));
    // One more is refused by `maxLength` (not a rule) and by validate_spec alike.
    let (_, fields) = judge(json!({"triggers": [named(&format!("{longest}a"))]}));
    assert_eq!(fields, ["triggers[0].name"]);
    assert_eq!(node(&crd(), "spec.triggers[].name")["maxLength"], longest.len() as u64);
    // Integers below `minimum: 1` are refused by validate_spec too.
    let mut trigger = named("t");
    trigger["rateLimit"] = json!({"perMinute": 0, "burst": 0});
    trigger["destinations"] = json!([{"type": "log", "queueSize": 0, "retry": {"maxAttempts": 0}}]);
    let (_, fields) = judge(json!({"triggers": [trigger]}));
    assert_eq!(
        fields,
        [
            "triggers[0].rateLimit.perMinute",
            "triggers[0].rateLimit.burst",
            "triggers[0].destinations[0].queueSize",
            "triggers[0].destinations[0].retry.maxAttempts"
        ]
    );
}

#[test]
fn the_name_rules_hold_at_the_largest_trigger_service() {
    let name = |i: usize| format!("{}{i:03}", "n".repeat(60));
    let mut triggers: Vec<Value> = (0..128).map(|i| named(&name(i))).collect();
    assert_eq!(judge(json!({"triggers": triggers})), (vec![], vec![]));
    triggers[127] = named(&name(0));
    let (broken, fields) = judge(json!({"triggers": triggers}));
    assert_eq!(broken, ["spec.triggers: trigger names must be unique"]);
    assert_eq!(fields, ["triggers[127].name"]);
    triggers[127] = unnamed();
    triggers[3] = named("trigger-127");
    let (broken, fields) = judge(json!({"triggers": triggers}));
    assert_eq!(broken, ["spec.triggers: trigger names must be unique: an unnamed trigger is named trigger-<index>"]);
    assert_eq!(fields, ["triggers[127].name"]);
}

#[test]
fn every_example_trigger_service_passes_the_rules() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        // examples/events/ holds sample events for `ktrigger eval`, not TriggerServices.
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let document: Value = serde::Deserialize::deserialize(document).unwrap();
            if document["kind"] != "TriggerService" || document["apiVersion"] != "ktrigger.dev/v1alpha1" {
                continue;
            }
            let (broken, _) = judge(document["spec"].clone());
            assert!(broken.is_empty(), "{}: {broken:?}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} TriggerServices in examples/");
}
