//! The bounds of expressions: each attack is refused when it compiles or stopped with a clear
//! reason when it runs, and nothing aborts the process.

use std::time::Duration;

use serde_json::{Value, json};

use super::limits::{Budget, COST_LIMIT, MAX_DEPTH, MAX_EXPRESSION, prescan};
use super::{CelExpr, Vars};
use crate::event::Event;

fn compile_error(source: &str) -> String {
    match CelExpr::filter(source) {
        Ok(_) => panic!("{source:.80} compiled"),
        Err(error) => error.to_string(),
    }
}

fn eval_on(source: &str, object: Value) -> Result<bool, String> {
    let event = Event::new("webhook", "received", object);
    let expr = CelExpr::filter(source).unwrap_or_else(|e| panic!("{source:.80}: {e}"));
    expr.eval_bool(&Vars::for_event(&event, "t", chrono::Utc::now()))
}

/// `1+1+...+1`: the 3 KB filter that used to pass validation and overflow the stack on the
/// first event.
fn ones(terms: usize) -> String {
    vec!["1"; terms].join("+")
}

#[test]
fn a_long_sum_is_refused_as_too_deep() {
    let error = compile_error(&format!("{} > 0", ones(1500)));
    assert!(error.contains("nested too deeply"), "{error}");
}

#[test]
fn a_40_kb_filter_is_refused_before_parsing() {
    let error = compile_error(&format!("{} > 0", ones(20_000)));
    assert!(error.contains(&format!("the limit is {MAX_EXPRESSION}")), "{error}");
}

#[test]
fn deep_parentheses_brackets_and_negations_are_refused() {
    for source in [
        format!("{}true{}", "(".repeat(400), ")".repeat(400)),
        format!("{}1{} == [1]", "[".repeat(400), "]".repeat(400)),
        format!("{}true", "!".repeat(400)),
        format!("{}1 == 1", "-".repeat(400)),
        format!("object{} == 1", ".a".repeat(400)),
        format!("{}1{}", "{'a': ".repeat(300), "}".repeat(300)),
    ] {
        let error = compile_error(&source);
        assert!(error.contains("nested too deeply"), "{source:.40}: {error}");
    }
}

#[test]
fn long_flat_filters_within_the_limits_compile() {
    let conditions: Vec<String> = (0..50).map(|i| format!("object.metadata.labels[\"k{i}\"] == \"v{i}\"")).collect();
    let source = conditions.join(" && ");
    assert!(source.len() < MAX_EXPRESSION);
    CelExpr::filter(&source).unwrap();
    let list: Vec<String> = (0..300).map(|i| format!("{i} + 1")).collect();
    CelExpr::filter(&format!("object.n in [{}]", list.join(", "))).unwrap();
}

#[test]
fn operators_inside_strings_do_not_count_as_nesting() {
    for quote in ["'", "\"", "'''", "\"\"\"", "r'", "r\""] {
        let close = quote.trim_start_matches('r');
        let source = format!("object.s == {quote}{}{close}", "(+.".repeat(1000));
        assert_eq!(prescan(&source), Ok(()), "{quote}");
    }
}

#[test]
fn three_nested_maps_over_300_items_are_refused_at_load() {
    let items: Vec<String> = (0..300).map(|i| i.to_string()).collect();
    let list = format!("[{}]", items.join(","));
    let source = format!("size({list}.map(a, {list}.map(b, {list}.map(c, a + b + c)))) > 0");
    let error = compile_error(&source);
    assert!(error.contains(&format!("exceeds the limit of {COST_LIMIT}")), "{error}");
}

#[test]
fn three_nested_maps_over_event_data_are_refused_at_load() {
    let error = compile_error("size(object.items.map(a, object.items.map(b, object.items.map(c, c)))) > 0");
    assert!(error.contains("a list read from the event counts as 100 elements"), "{error}");
}

#[test]
fn nested_loops_over_large_event_data_stop_at_the_cost_limit() {
    let items: Vec<i64> = (0..3000).collect();
    // Each inner loop pays for all 3000 items before it starts, however early it stops.
    let result = eval_on("object.items.all(a, object.items.exists(b, b == a))", json!({"items": items}));
    assert_eq!(result, Err(format!("evaluation exceeded the cost limit of {COST_LIMIT}")));
}

#[test]
fn loops_over_small_event_data_run() {
    let items: Vec<i64> = (0..300).collect();
    assert_eq!(
        eval_on(
            "object.items.exists(i, i == 299) && object.items.map(i, i * 2)[1] == 2",
            json!({
                "items": items
            })
        ),
        Ok(true)
    );
}

#[test]
fn a_huge_lists_range_is_stopped_before_it_allocates() {
    assert_eq!(
        eval_on("size(lists.range(object.n)) > 0", json!({"n": 1_000_000_000_000i64})),
        Err(format!("evaluation exceeded the cost limit of {COST_LIMIT}"))
    );
    assert_eq!(eval_on("lists.range(3) == [0, 1, 2]", json!({})), Ok(true));
}

#[test]
fn replace_that_multiplies_a_string_is_stopped() {
    let big = "x".repeat(100_000);
    assert_eq!(
        eval_on("object.s.replace('', object.s).size() > 0", json!({"s": big})),
        Err(format!("evaluation exceeded the cost limit of {COST_LIMIT}"))
    );
    assert_eq!(
        eval_on("'a-b-c'.replace('-', '+') == 'a+b+c' && 'aaa'.replace('a', 'b', 2) == 'bba'", json!({})),
        Ok(true)
    );
}

#[test]
fn concatenating_large_strings_is_charged() {
    let big = "x".repeat(1_000_000);
    let doubled = vec!["object.s"; 15].join(" + ");
    assert_eq!(
        eval_on(&format!("size({doubled}) > 0"), json!({"s": big})),
        Err(format!("evaluation exceeded the cost limit of {COST_LIMIT}"))
    );
    assert_eq!(
        eval_on("object.a + '/' + object.b == 'x/y' && [1] + [2] == [1, 2]", json!({"a": "x", "b": "y"})),
        Ok(true)
    );
}

#[test]
fn distinct_over_a_large_list_is_stopped() {
    let items: Vec<i64> = (0..5000).collect();
    assert_eq!(
        eval_on("size(object.items.distinct()) > 0", json!({"items": items})),
        Err(format!("evaluation exceeded the cost limit of {COST_LIMIT}"))
    );
    assert_eq!(eval_on("[1, 2, 2, 1].distinct() == [1, 2]", json!({})), Ok(true));
}

#[test]
fn the_estimate_multiplies_nested_loops() {
    let one = CelExpr::filter("object.items.all(i, i > 0)").unwrap();
    let two = CelExpr::filter("object.items.all(i, object.items.all(j, i != j))").unwrap();
    assert!(one.estimated_cost() < 1_000, "{}", one.estimated_cost());
    assert!(two.estimated_cost() > 50 * one.estimated_cost(), "{} vs {}", two.estimated_cost(), one.estimated_cost());
}

#[test]
fn a_small_budget_runs_out_where_the_full_one_does_not() {
    let items: Vec<i64> = (0..3000).collect();
    let event = Event::new("webhook", "received", json!({"items": items}));
    let vars = Vars::for_event(&event, "t", chrono::Utc::now());
    // The in-place cost budget with a time limit no loaded machine can reach: only cost decides.
    let in_place_cost = Budget { time: Duration::from_secs(60), ..Budget::IN_PLACE };
    let expr = CelExpr::filter("object.items.exists(i, i == 2999)").unwrap();
    assert_eq!(expr.eval_bool_within(&vars, in_place_cost), None);
    assert_eq!(expr.eval_bool_within(&vars, Budget::FULL), Some(Ok(true)));
    let small = CelExpr::filter("object.items[0] == 0 && [1, 2, 3].exists(i, i == 3)").unwrap();
    assert_eq!(small.eval_bool_within(&vars, in_place_cost), Some(Ok(true)));
}

/// The deepest expressions the limits let through parse, check and evaluate on a thread with
/// the 2 MiB stack of tokio's worker and blocking threads (the process would abort otherwise),
/// from the top of its stack and from deep down in it.
#[test]
fn deepest_expressions_run_on_a_small_stack() {
    let half = MAX_DEPTH / 2;
    let deepest = [
        format!("{}true{}", "(".repeat(MAX_DEPTH - 1), ")".repeat(MAX_DEPTH - 1)),
        format!("{}true", "!".repeat(MAX_DEPTH - 2)),
        format!("{} == {}", ones(MAX_DEPTH - 2), MAX_DEPTH - 2),
        format!("{} == {}", ones(half), half),
        format!("size({}1{}) == 1", "[".repeat(MAX_DEPTH - 3), "]".repeat(MAX_DEPTH - 3)),
        format!("[[1]]{} == [[1]]", ".map(x, x)".repeat(MAX_DEPTH / 5)),
    ];
    let outcome = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let run = |source: &String| match CelExpr::filter(source) {
                Ok(expr) => {
                    let event = Event::new("webhook", "received", json!({}));
                    expr.eval_bool(&Vars::for_event(&event, "t", chrono::Utc::now())).map(|_| ())
                }
                Err(error) => Err(format!("{source:.60}: {error}")),
            };
            let mut outcome: Vec<Result<(), String>> = deepest.iter().map(run).collect();
            outcome
                .extend(deep_in_the_stack(1024 * 1024 + 512 * 1024, &|| deepest.iter().map(run).collect::<Vec<_>>()));
            outcome
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(outcome.iter().all(Result::is_ok), "{outcome:?}");
}

/// Runs `work` with about `used` bytes of this thread's stack already taken.
#[inline(never)]
fn deep_in_the_stack<T>(used: usize, work: &dyn Fn() -> T) -> T {
    let frame = [0u8; 16 * 1024];
    std::hint::black_box(&frame);
    if used <= frame.len() { work() } else { deep_in_the_stack(used - frame.len(), work) }
}
