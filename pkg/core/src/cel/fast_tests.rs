//! The direct evaluator against the interpreter: same answers, same errors, same limits.

use std::cell::Cell;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};

use super::limits::Budget;
use super::{CelExpr, Vars};
use crate::event::Event;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

fn pod() -> Value {
    json!({
        "metadata": {
            "name": "web-7d9f8b6c5d-x2x4k",
            "namespace": "apps",
            "uid": "0b9d3c4e",
            "creationTimestamp": "2026-03-01T11:50:00Z",
            "labels": {"app": "web", "tier": "frontend"},
            "annotations": {"prometheus.io/scrape": "true"},
        },
        "spec": {
            "nodeName": "node-17",
            "containers": [
                {"name": "web", "resources": {"limits": {"cpu": "500m"}}},
                {"name": "sidecar", "resources": {"limits": {"cpu": "100m"}}},
            ],
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{"name": "web", "restartCount": 4}, {"name": "sidecar", "restartCount": 0}],
        },
    })
}

/// The filters and keys of `benches/per_event.rs`, and other common shapes.
const COMMON: [&str; 17] = [
    "object.status.phase == \"Running\"",
    "object.metadata.namespace == \"apps\" && object.metadata.labels[\"app\"] == \"web\"",
    "object.status.containerStatuses.exists(c, c.restartCount >= 3)",
    "!object.metadata.name.startsWith(\"canary-\") && event.type == \"update\"",
    "has(object.metadata.annotations) && \"prometheus.io/scrape\" in object.metadata.annotations",
    "object.spec.containers.all(c, has(c.resources.limits))",
    "object.status.conditions.exists(c, c.type == \"Ready\" && c.status == \"False\")",
    "now - timestamp(object.metadata.creationTimestamp) > duration(\"5m\")",
    "size(object.spec.containers) > 1 && object.spec.nodeName.matches(\"^node-[0-9]+$\")",
    "object.metadata.labels.tier in [\"frontend\", \"backend\"]",
    "object.metadata.name.endsWith(\"x2x4k\") || object.metadata.name.contains(\"canary\")",
    "object.spec.containers[0].name == \"web\" ? true : false",
    "oldObject == null && context.data.status.phase == \"Running\"",
    "object.metadata.name",
    "object.metadata.namespace + \"/\" + object.metadata.name",
    "object.metadata.uid",
    "object.status.containerStatuses[0].restartCount * 2 - 1",
];

#[test]
fn common_filters_and_keys_are_evaluated_directly() {
    let event = Event::new("resource-watcher", "update", pod());
    let vars = Vars::for_event(&event, "t", now());
    for source in COMMON {
        let expr = CelExpr::filter(source).unwrap_or_else(|e| panic!("{source}: {e}"));
        let program = expr.fast.as_ref().unwrap_or_else(|| panic!("{source} has no direct evaluation"));
        let direct = program.evaluate(&vars).unwrap_or_else(|| panic!("{source} was left to the interpreter"));
        let direct = super::value::to_json(direct.to_bound().as_val());
        assert_eq!(direct, expr.interpreted().eval_json(&vars), "{source}");
    }
}

#[test]
fn shapes_it_does_not_know_have_no_direct_evaluation() {
    for source in [
        "object.spec.containers.map(c, c.name).size() > 0",
        "[1, 2].size() == 2",
        "{\"a\": 1}.a == 1",
        "b\"x\" == b\"x\"",
        "object.spec.containers.exists_one(c, c.name == \"web\")",
        "object.metadata.name.split(\"-\").size() > 1",
        "type(object) == map",
    ] {
        let expr = CelExpr::filter(source).unwrap_or_else(|e| panic!("{source}: {e}"));
        assert!(expr.fast.is_none(), "{source}");
    }
}

#[test]
fn errors_come_from_the_interpreter() {
    let event = Event::new("resource-watcher", "update", pod());
    let vars = Vars::for_event(&event, "t", now());
    for source in [
        "object.status.missing == \"x\"",
        "object.spec.containers[5].name == \"x\"",
        "object.metadata.name > 1",
        "object.status.phase",
        "object.metadata.name.startsWith(1)",
        "9223372036854775807 + object.status.containerStatuses[0].restartCount > 0",
    ] {
        let expr = CelExpr::filter(source).unwrap_or_else(|e| panic!("{source}: {e}"));
        let direct = expr.eval_bool(&vars);
        assert!(direct.is_err(), "{source}: {direct:?}");
        assert_eq!(direct, expr.interpreted().eval_bool(&vars), "{source}");
    }
}

#[test]
fn loops_charge_the_budget_as_the_interpreter_does() {
    let items: Vec<Value> = (0..2_000).map(|n| json!({"n": n})).collect();
    let event = Event::new("resource-watcher", "update", json!({"items": items}));
    let vars = Vars::for_event(&event, "t", now());
    let expr = CelExpr::filter("object.items.exists(i, i.n == 1999)").expect("compiles");
    assert!(expr.fast.is_some());
    assert_eq!(expr.eval_bool(&vars), Ok(true));
    // over the in-place budget: no answer from either, the caller moves to the full budget
    assert_eq!(expr.eval_bool_within(&vars, Budget::IN_PLACE), None);
    assert_eq!(expr.interpreted().eval_bool_within(&vars, Budget::IN_PLACE), None);
    for cost in [1, 2_000, 6_000, 8_000, 8_001, 10_000] {
        let budget = Budget { cost, time: Budget::FULL.time };
        assert_eq!(
            expr.eval_bool_within(&vars, budget),
            expr.interpreted().eval_bool_within(&vars, budget),
            "cost {cost}"
        );
    }
}

/// JSON values built from a few keys, so that random paths often find something.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![Just(0i64), Just(1), Just(3), Just(-2), Just(i64::MAX), Just(i64::MIN)].prop_map(Value::from),
        Just(json!(18_446_744_073_709_551_615u64)),
        prop_oneof![Just(0.5f64), Just(-1.0), Just(3.0), Just(1e300)].prop_map(Value::from),
        prop_oneof![Just(""), Just("a"), Just("web"), Just("web-1"), Just("ñx"), Just("2026-03-01T11:50:00Z")]
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![Just("a"), Just("b"), Just("n"), Just("s"), Just("items")],
                inner,
                0..4
            )
            .prop_map(|map| Value::Object(map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

/// Expressions over `object`, `oldObject`, `event`, `context`, `now` and a loop variable `x`.
fn expression() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        prop_oneof![
            Just("object"),
            Just("object.a"),
            Just("object.b"),
            Just("object.a.n"),
            Just("object.items"),
            Just("object.items[0]"),
            Just("object.items[1].s"),
            Just("object[\"s\"]"),
            Just("oldObject"),
            Just("oldObject.a"),
            Just("event.type"),
            Just("event.time"),
            Just("event.preset"),
            Just("context.data.n"),
            Just("now"),
            Just("x"),
            Just("x.n"),
        ],
        prop_oneof![
            Just("1"),
            Just("0"),
            Just("-2"),
            Just("3u"),
            Just("0.5"),
            Just("9223372036854775807"),
            Just("\"a\""),
            Just("\"web\""),
            Just("\"\""),
            Just("true"),
            Just("false"),
            Just("null"),
            Just("[1, \"a\", null]"),
            Just("duration(\"5m\")"),
            Just("timestamp(\"2026-03-01T11:50:00Z\")"),
        ],
    ]
    .prop_map(str::to_owned);
    atom.prop_recursive(4, 32, 3, |inner| {
        let binary = ["==", "!=", "<", "<=", ">", ">=", "&&", "||", "+", "-", "*", "/", "%", "in"];
        prop_oneof![
            (inner.clone(), prop::sample::select(binary.to_vec()), inner.clone())
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            inner.clone().prop_map(|a| format!("!({a})")),
            inner.clone().prop_map(|a| format!("-({a})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}).replace(\"w\", {b})")),
            (inner.clone(), inner.clone(), inner.clone()).prop_map(|(c, a, b)| format!("({c} ? {a} : {b})")),
            prop::sample::select(vec!["object.a", "object.items", "object.a.n", "event.preset", "x.n", "object"])
                .prop_map(|path| format!("has({path}.s)")),
            inner.clone().prop_map(|a| format!("size({a})")),
            inner.clone().prop_map(|a| format!("({a}).size()")),
            (inner.clone(), prop::sample::select(vec!["startsWith", "endsWith", "contains", "matches"]), inner.clone())
                .prop_map(|(a, f, b)| format!("({a}).{f}({b})")),
            inner.clone().prop_map(|a| format!("({a}).matches(\"^w.b\")")),
            (inner.clone(), prop::sample::select(vec!["exists", "all"]), inner.clone())
                .prop_map(|(range, f, body)| format!("({range}).{f}(x, {body})")),
            (prop::sample::select(vec!["int", "string", "timestamp", "duration", "double"]), inner)
                .prop_map(|(f, a)| format!("{f}({a})")),
        ]
    })
}

/// An object with the fields the typed expressions read, of the types they expect.
fn document() -> impl Strategy<Value = Value> {
    let int = || prop_oneof![Just(0i64), Just(1), Just(3), Just(-2), Just(i64::MAX)];
    let text = || prop_oneof![Just(""), Just("web"), Just("web-1"), Just("canary-web"), Just("ñx")];
    let item = (int(), text()).prop_map(|(n, s)| json!({"n": n, "s": s}));
    let items = || prop::collection::vec(item.clone(), 2..5);
    let inner = (int(), text(), items()).prop_map(|(n, s, items)| json!({"n": n, "s": s, "items": items}));
    (int(), text(), items(), inner).prop_map(|(n, s, items, a)| json!({"n": n, "s": s, "items": items, "a": a}))
}

/// Expressions that are mostly well typed over [`document`]s, so that most are answered without
/// an error on the way; `x` is bound inside the loops.
fn typed_expression() -> impl Strategy<Value = String> {
    let text = prop_oneof![
        Just("object.s"),
        Just("object.a.s"),
        Just("object.items[0].s"),
        Just("event.type"),
        Just("event.time"),
        Just("context.data.s"),
        Just("\"web\""),
        Just("\"\""),
        Just("(object.s + \"-\" + object.a.s)"),
        Just("string(object.n)"),
    ];
    let int = prop_oneof![
        Just("object.n"),
        Just("object.a.n"),
        Just("object.items[1].n"),
        Just("size(object.items)"),
        Just("object.a.items.size()"),
        Just("size(object.s)"),
        Just("(object.n + 1)"),
        Just("(object.n * 2 - object.a.n)"),
        Just("(object.n / 2)"),
        Just("(object.n % 3)"),
        Just("3"),
        Just("-2"),
        Just("1u"),
        Just("0.5"),
    ];
    let list = prop_oneof![Just("object.items"), Just("object.a.items"), Just("object"), Just("object.a")];
    let leaf = prop_oneof![
        (int.clone(), prop::sample::select(vec!["==", "!=", "<", "<=", ">", ">="]), int.clone())
            .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
        (text.clone(), prop::sample::select(vec!["==", "!=", "<", ">="]), text.clone())
            .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
        (text.clone(), prop::sample::select(vec!["startsWith", "endsWith", "contains"]), text.clone())
            .prop_map(|(a, f, b)| format!("{a}.{f}({b})")),
        text.clone().prop_map(|a| format!("{a}.matches(\"^w.b\")")),
        prop::sample::select(vec!["object", "object.a", "object.items[0]", "event", "context.data"])
            .prop_map(|path| format!("has({path}.s)")),
        (text.clone(), list.clone()).prop_map(|(a, l)| format!("{a} in {l}")),
        text.clone().prop_map(|a| format!("{a} in [\"web\", \"web-1\", 1]")),
        Just("now - timestamp(\"2026-03-01T11:50:00Z\") > duration(\"5m\")".to_owned()),
        Just("oldObject == null".to_owned()),
        Just("has(event.preset) && event.preset == \"pod-restart\"".to_owned()),
        (list.clone(), prop::sample::select(vec!["exists", "all"]), int.clone())
            .prop_map(|(l, f, n)| format!("{l}.{f}(x, x.n >= {n})")),
        (list, prop::sample::select(vec!["exists", "all"]), text)
            .prop_map(|(l, f, s)| format!("{l}.{f}(x, has(x.s) && x.s != {s})")),
    ];
    leaf.prop_recursive(3, 16, 2, |inner| {
        prop_oneof![
            (inner.clone(), prop::sample::select(vec!["&&", "||", "==", "!="]), inner.clone())
                .prop_map(|(a, op, b)| format!("({a}) {op} ({b})")),
            inner.clone().prop_map(|a| format!("!({a})")),
            (inner.clone(), inner.clone(), inner).prop_map(|(c, a, b)| format!("({c}) ? ({a}) : ({b})")),
        ]
    })
}

/// Runs random expressions from `expressions` over objects from `objects` with and without the
/// direct evaluation and fails on the first difference; returns how many the interpreter answered
/// without an error and how many of those were answered directly.
fn differential<E, O>(cases: u32, expressions: E, objects: O) -> (usize, usize)
where
    E: Strategy<Value = String>,
    O: Fn() -> BoxedStrategy<Value>,
{
    let answered = Cell::new(0usize);
    let direct = Cell::new(0usize);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let strategy = (expressions, objects(), prop::option::of(objects()), 1u64..400);
    runner
        .run(&strategy, |(source, object, old_object, cost)| {
            let Ok(expr) = CelExpr::filter(&source) else { return Ok(()) };
            let mut event = Event::new("resource-watcher", "update", object);
            event.old_object = old_object;
            let vars = Vars::for_event(&event, "t", now());
            let interpreted = expr.interpreted();
            if interpreted.eval_json(&vars).is_ok() {
                answered.set(answered.get() + 1);
                if expr.fast.as_ref().is_some_and(|program| program.evaluate(&vars).is_some()) {
                    direct.set(direct.get() + 1);
                }
            }
            let same = |what: &str, a: String, b: String| {
                if a == b { Ok(()) } else { Err(TestCaseError::fail(format!("{source}: {what}: {a} != {b}"))) }
            };
            same("json", format!("{:?}", expr.eval_json(&vars)), format!("{:?}", interpreted.eval_json(&vars)))?;
            same("bool", format!("{:?}", expr.eval_bool(&vars)), format!("{:?}", interpreted.eval_bool(&vars)))?;
            same("string", format!("{:?}", expr.eval_string(&vars)), format!("{:?}", interpreted.eval_string(&vars)))?;
            let budget = Budget { cost, time: Budget::FULL.time };
            same(
                "budget",
                format!("{:?}", expr.eval_bool_within(&vars, budget)),
                format!("{:?}", interpreted.eval_bool_within(&vars, budget)),
            )
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    (answered.get(), direct.get())
}

#[test]
fn direct_evaluation_agrees_with_the_interpreter_on_random_expressions() {
    // most of these fail on the way: they check that errors and limits are the interpreter's (and
    // where the interpreter's `&&` or `||` answers despite an error, only it answers)
    let (answered, direct) = differential(2_000, expression(), || json_value().boxed());
    assert!(
        answered >= 40 && direct >= 20,
        "the interpreter answered {answered} of 2000 expressions, {direct} directly"
    );
}

#[test]
fn direct_evaluation_agrees_with_the_interpreter_on_well_typed_expressions() {
    let (answered, direct) = differential(2_000, typed_expression(), || document().boxed());
    assert!(answered >= 1_000, "the interpreter answered only {answered} of 2000 expressions");
    assert!(direct * 20 >= answered * 19, "only {direct} of the {answered} answers were direct");
}
