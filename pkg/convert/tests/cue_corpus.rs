//! The CUE filter corpus: every form of kube-trigger filter that is translated, with the CEL it
//! becomes and how that CEL judges a matching and a non-matching object; and every form that is
//! refused, with the refusal.

use ktrigger_convert::cue::{STRUCT_FILTER_NOTE, translate};
use ktrigger_core::{CelExpr, Vars};
use serde_json::{Value, json};

/// (CUE, expected CEL, whether it is the struct form).
const TRANSLATED: &[(&str, &str, bool)] = &[
    // Expressions that are CEL already, as kube-trigger's README writes them.
    (
        "context.data.status.readyReplicas == context.data.status.replicas",
        "context.data.status.readyReplicas == context.data.status.replicas",
        false,
    ),
    (r#"context.data.metadata.name == "web-1""#, r#"context.data.metadata.name == "web-1""#, false),
    (r#"context.data.metadata.name != "db""#, r#"context.data.metadata.name != "db""#, false),
    ("context.data.status.replicas > 2", "context.data.status.replicas > 2", false),
    (
        "context.data.status.replicas >= 3 && context.data.status.replicas < 10",
        "context.data.status.replicas >= 3 && context.data.status.replicas < 10",
        false,
    ),
    (
        r#"context.data.metadata.name == "a" || context.data.metadata.namespace == "apps""#,
        r#"context.data.metadata.name == "a" || context.data.metadata.namespace == "apps""#,
        false,
    ),
    (r#"!(context.data.metadata.name == "db")"#, r#"!(context.data.metadata.name == "db")"#, false),
    // Regular-expression matches as a binary operator.
    (r#"context.data.metadata.name =~ "^web-[0-9]+$""#, r#"context.data.metadata.name.matches("^web-[0-9]+$")"#, false),
    (r#"context.data.metadata.name !~ "^db""#, r#"!context.data.metadata.name.matches("^db")"#, false),
    // Struct constraints: field equality, nested paths, regular expressions.
    (r#"context: data: metadata: name: "web-1""#, r#"context.data.metadata.name == "web-1""#, true),
    (r#"context: data: metadata: name: =~"web-.*""#, r#"context.data.metadata.name.matches("web-.*")"#, true),
    (r#"context: data: metadata: name: !~"^db""#, r#"!context.data.metadata.name.matches("^db")"#, true),
    (
        "context: {\n  data: {\n    metadata: namespace: \"apps\"\n    status: phase: \"Failed\"\n  }\n}",
        r#"context.data.metadata.namespace == "apps" && context.data.status.phase == "Failed""#,
        true,
    ),
    (
        r#"context: data: metadata: labels: "app.kubernetes.io/name": "web""#,
        r#"context.data.metadata.labels["app.kubernetes.io/name"] == "web""#,
        true,
    ),
    // Comparisons and conjunctions of them.
    ("context: data: status: replicas: >2", "context.data.status.replicas > 2", true),
    (
        "context: data: status: replicas: >=3 & <10",
        "context.data.status.replicas >= 3 && context.data.status.replicas < 10",
        true,
    ),
    // Disjunctions.
    (
        r#"context: data: status: phase: "Failed" | "Unknown""#,
        r#"context.data.status.phase == "Failed" || context.data.status.phase == "Unknown""#,
        true,
    ),
    (
        r#"context: data: metadata: name: =~"^web" | =~"^api""#,
        r#"context.data.metadata.name.matches("^web") || context.data.metadata.name.matches("^api")"#,
        true,
    ),
    // `_` constrains nothing; a type constrains the kind of value.
    (
        "context: data: metadata: {\n  name: _\n  namespace: string\n}",
        "type(context.data.metadata.namespace) == string",
        true,
    ),
    // if-guarded blocks: the filter holds where a guard holds and its body's constraints too.
    (
        "if context.data.status.phase == \"Failed\" {\n  context: data: metadata: namespace: \"apps\"\n}",
        r#"context.data.status.phase == "Failed" && context.data.metadata.namespace == "apps""#,
        true,
    ),
    (
        "context: data: kind: \"Pod\"\nif context.data.status.phase == \"Failed\" {\n  context: data: metadata: name: =~\"^web\"\n}\nif context.data.status.replicas > 100 {\n  context: data: kind: \"Pod\"\n}",
        r#"context.data.kind == "Pod" && ((context.data.status.phase == "Failed" && context.data.metadata.name.matches("^web")) || (context.data.status.replicas > 100 && context.data.kind == "Pod"))"#,
        true,
    ),
    // Comments are not part of the filter.
    (
        "// only web pods\ncontext: data: metadata: name: =~\"^web\" // by name",
        r#"context.data.metadata.name.matches("^web")"#,
        true,
    ),
];

/// (CUE, the refusal).
const REFUSED: &[(&str, &str)] = &[
    (
        r#"metadata: name: "web-1""#,
        "line 1, column 1: field `metadata` is not under `context`; kube-trigger filters see only `context`",
    ),
    (
        r#"object.metadata.name == "x""#,
        "line 1, column 1: `object` is not `context` or a value; kube-trigger filters see only `context`",
    ),
    (
        r#"strings.HasPrefix(context.data.metadata.name, "web")"#,
        "line 1, column 1: `strings` is not `context` or a value; kube-trigger filters see only `context`",
    ),
    (
        r#"len(context.data.metadata.name) > 3"#,
        "line 1, column 1: `len` is not `context` or a value; kube-trigger filters see only `context`",
    ),
    ("context: data: metadata: name: [\"a\"]", "line 1, column 32: unexpected character '['"),
    ("context: data: {\n  kind: \"Pod\"\n", "missing `}` at the end of the filter"),
    ("context: data: replicas: 1 + 2", "line 1, column 28: unexpected character '+'"),
    ("context: data: x: *\"a\" | \"b\"", "line 1, column 19: unexpected character '*'"),
    ("context: data: name: \"unterminated", "line 1, column 22: unterminated or multi-line string"),
    ("context: data: name: string | int & foo", "line 1, column 37: `foo` is not a value this translation knows"),
    ("context: _", "the filter constrains nothing under `context`"),
    ("if context.data.x == 1 context: data: y: 2", "line 1, column 24: expected `{`, found `context`"),
    ("context.data.metadata.name == \"a\" extra", "line 1, column 35: unexpected `extra`"),
];

fn vars_of(object: &Value) -> Value {
    json!({"sourceType": "resource-watcher", "event": "update", "data": object, "timestamp": "2026-03-01T12:00:00Z"})
}

/// A Pod-like object that every translated filter of the corpus accepts.
fn matching() -> Value {
    json!({
        "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "apps", "labels": {"app.kubernetes.io/name": "web"}},
        "status": {"phase": "Failed", "replicas": 3, "readyReplicas": 3},
    })
}

/// One that every translated filter of the corpus rejects.
fn rejected() -> Value {
    json!({
        "kind": "Deployment",
        "metadata": {"name": "db", "namespace": 7, "labels": {"app.kubernetes.io/name": "db"}},
        "status": {"phase": "Running", "replicas": 1, "readyReplicas": 0},
    })
}

fn judge(cel: &str, object: &Value) -> bool {
    let expression = CelExpr::filter(cel).unwrap_or_else(|e| panic!("{cel}: {e}"));
    let context = vars_of(object);
    let vars = Vars::from_json(&[("context", &context), ("object", object)]);
    // An evaluation error is "not matched", as the engine counts it.
    expression.eval_bool(&vars).unwrap_or(false)
}

#[test]
fn every_supported_form_becomes_the_expected_cel() {
    for (cue, expected, struct_form) in TRANSLATED {
        let translation = translate(cue).unwrap_or_else(|e| panic!("{cue:?} was refused: {e}"));
        assert_eq!(translation.cel, *expected, "{cue:?}");
        let notes: Vec<&str> = translation.notes.iter().map(String::as_str).collect();
        assert_eq!(notes, if *struct_form { vec![STRUCT_FILTER_NOTE] } else { vec![] }, "{cue:?}");
    }
}

#[test]
fn every_translated_filter_keeps_what_it_describes_and_drops_the_rest() {
    for (cue, expected, _) in TRANSLATED {
        // The negations and inequalities of the corpus are written to hold for `matching()` too.
        assert!(judge(expected, &matching()), "{cue:?} -> {expected} should keep the matching object");
        assert!(!judge(expected, &rejected()), "{cue:?} -> {expected} should drop the other object");
    }
}

#[test]
fn every_unsupported_form_is_refused_with_its_position() {
    for (cue, refusal) in REFUSED {
        assert_eq!(translate(cue).as_ref().map(|t| t.cel.as_str()), Err(&refusal.to_string()), "{cue:?}");
    }
}

#[test]
fn deep_nesting_and_long_filters_are_refused() {
    let deep = format!("{}context.data.x == 1{}", "(".repeat(100), ")".repeat(100));
    assert_eq!(translate(&deep).unwrap_err(), "the filter nests deeper than 32 levels");
    let long = format!("context.data.x == \"{}\"", "a".repeat(5000));
    assert_eq!(translate(&long).unwrap_err(), "the filter is longer than 4096 bytes");
}
