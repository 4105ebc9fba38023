use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{Value, json};

use super::{CelError, CelExpr, Vars};
use crate::event::{CONTEXT_NAMES, Event};

const TRIGGER: &str = "crashloop-to-agent";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "count": 3,
        "big": 18_446_744_073_709_551_615u64,
        "ratio": 0.5,
        "name": "canary-web-1",
        "list": ["x", "y"],
        "items": [{"n": 1}, {"n": 2}, {"n": 3}],
        "metadata": {
            "name": "web-1",
            "namespace": "apps",
            "labels": {"app": "web", "tier": "front"},
            "creationTimestamp": "2026-03-01T11:50:00Z",
        },
        "status": {"phase": "Failed"},
    })
}

fn event() -> Event {
    let mut event = Event::new("resource-watcher", "update", pod());
    event.meta.time = Utc.with_ymd_and_hms(2026, 3, 1, 11, 59, 0).unwrap();
    event
}

fn filter(source: &str) -> CelExpr {
    CelExpr::filter(source).unwrap_or_else(|e| panic!("{source}: {e}"))
}

/// Evaluates a filter over `event()` as seen by [`TRIGGER`].
fn check(source: &str) -> Result<bool, String> {
    let event = event();
    filter(source).eval_bool(&Vars::for_event(&event, TRIGGER, now()))
}

fn assert_true(sources: &[&str]) {
    for source in sources {
        assert_eq!(check(source), Ok(true), "{source}");
    }
}

#[test]
fn json_integers_are_cel_ints_so_arithmetic_and_comparisons_work() {
    assert_true(&[
        "object.count + 1 == 4",
        "object.count >= 3",
        "object.count * 2 - 1 == 5",
        "type(object.count) == int",
        "object.items[0].n + 1 == 2",
        "object.items.map(i, i.n * 10)[2] == 30",
        "1 + object.count == 4",
    ]);
}

#[test]
fn integers_beyond_i64_are_uints_and_fractions_are_doubles() {
    assert_true(&["type(object.big) == uint", "object.big == 18446744073709551615u", "object.ratio * 2.0 == 1.0"]);
}

#[test]
fn missing_field_is_an_error_naming_the_field_not_a_pass() {
    let error = check("object.nope == 1").unwrap_err();
    assert!(error.contains("nope"), "{error}");
    let error = check("object.metadata.nope.deeper == 1").unwrap_err();
    assert!(error.contains("nope"), "{error}");
    let error = check("object.metadata.labels['missing'] == 'x'").unwrap_err();
    assert!(error.contains("missing"), "{error}");
}

#[test]
fn has_is_true_for_present_fields_and_false_for_missing_ones() {
    assert_true(&[
        "has(object.metadata.labels)",
        "!has(object.metadata.annotations)",
        "has(object.metadata.labels.app)",
        "!has(object.metadata.labels.nope)",
        "has(event.trigger)",
        "!has(event.preset)",
        "has(context.data)",
    ]);
}

#[test]
fn map_fields_are_reachable_by_index_and_selection() {
    assert_true(&[
        "object.metadata.labels[\"app\"] == \"web\"",
        "object.metadata.labels.app == 'web'",
        "object['metadata']['namespace'] == 'apps'",
    ]);
}

#[test]
fn list_elements_are_reachable_by_index_and_out_of_range_is_an_error() {
    assert_true(&["object.items[1].n == 2", "object.list[0] == 'x'", "object.list[1u] == 'y'"]);
    let error = check("object.list[5] == 'x'").unwrap_err();
    assert!(error.to_lowercase().contains("index"), "{error}");
}

#[test]
fn in_works_on_json_lists_and_maps() {
    assert_true(&[
        "\"x\" in object.list",
        "!('z' in object.list)",
        "'app' in object.metadata.labels",
        "!('nope' in object.metadata.labels)",
        "{'n': 2} in object.items",
        "'trigger' in event",
        "'data' in context",
    ]);
}

#[test]
fn comprehension_macros_iterate_json_lists_and_maps() {
    assert_true(&[
        "object.items.exists(i, i.n > 2)",
        "!object.items.exists(i, i.n > 3)",
        "object.items.all(i, i.n >= 1)",
        "object.items.exists_one(i, i.n == 2)",
        "object.items.filter(i, i.n > 1).size() == 2",
        "object.items.map(i, i.n) == [1, 2, 3]",
        "object.list.exists(s, s.startsWith('y'))",
        "object.metadata.labels.exists(k, k == 'tier')",
        "object.metadata.labels.all(k, object.metadata.labels[k].size() > 2)",
        "event.exists(k, k == 'trigger')",
        "context.all(k, k in ['sourceType', 'event', 'data', 'timestamp'])",
    ]);
}

#[test]
fn size_works_on_json_lists_maps_and_strings() {
    assert_true(&[
        "size(object.items) == 3",
        "object.items.size() == 3",
        "size(object.metadata.labels) == 2",
        "size(object.name) == 12",
        "object.name.size() == 12",
        "size(event) == 5",
        "size(context) == 4",
    ]);
}

#[test]
fn string_functions_work_on_json_strings() {
    assert_true(&[
        "object.name.startsWith('canary-')",
        "!object.metadata.name.startsWith('canary-')",
        "object.name.contains('web')",
        "object.name.endsWith('-1')",
        "object.name.matches('^canary-[a-z]+-[0-9]$')",
        "object.metadata.name.upperAscii() == 'WEB-1'",
        "object.name.split('-').size() == 3",
        "object.metadata.namespace + '/' + object.metadata.name == 'apps/web-1'",
    ]);
}

#[test]
fn now_is_a_timestamp_so_ages_compare_with_durations() {
    assert_true(&[
        "now - timestamp(object.metadata.creationTimestamp) > duration('5m')",
        "now - timestamp(object.metadata.creationTimestamp) < duration('15m')",
        "now > timestamp(event.time)",
        "type(now) == google.protobuf.Timestamp",
        "type(now - duration('1h')) == google.protobuf.Timestamp",
    ]);
}

#[test]
fn context_is_kube_trigger_compatible_with_data_being_the_object() {
    assert_true(&[
        "context.data.status.phase == \"Failed\"",
        "context.data == object",
        "context.sourceType == 'resource-watcher'",
        "context.event == 'update'",
        "context.timestamp == '2026-03-01T11:59:00Z'",
    ]);
}

#[test]
fn event_fields_come_from_the_metadata_and_the_trigger_name() {
    assert_true(&[
        "event.type == \"update\"",
        "event.trigger == \"crashloop-to-agent\"",
        "event.source == 'resource-watcher'",
        "event.time == '2026-03-01T11:59:00Z'",
        "size(event.id) == 36",
    ]);
    let mut event = event();
    event.meta.preset = Some("pod-restart".into());
    event.meta.cluster = Some("east".into());
    let vars = Vars::for_event(&event, "other", now());
    for source in
        ["event.preset == 'pod-restart'", "event.cluster == 'east'", "event.trigger == 'other'", "size(event) == 7"]
    {
        assert_eq!(filter(source).eval_bool(&vars), Ok(true), "{source}");
    }
}

#[test]
fn severity_and_tags_of_an_event_mapping_are_visible_to_filters() {
    let mut event = event();
    event.meta.severity = Some("critical".into());
    event.meta.tags = Some(json!({"team": "apps"}));
    let vars = Vars::for_event(&event, TRIGGER, now());
    for source in
        ["event.severity == 'critical'", "event.tags.team == 'apps'", "'team' in event.tags", "size(event) == 7"]
    {
        assert_eq!(filter(source).eval_bool(&vars), Ok(true), "{source}");
    }
    assert_eq!(filter("has(event.severity)").eval_bool(&Vars::for_event(&self::event(), TRIGGER, now())), Ok(false));
}

#[test]
fn old_object_is_null_when_absent_and_the_previous_object_otherwise() {
    assert_true(&["oldObject == null"]);
    let mut event = event();
    event.old_object = Some(json!({"status": {"phase": "Running"}}));
    let vars = Vars::for_event(&event, TRIGGER, now());
    let changed = filter("oldObject.status.phase != object.status.phase");
    assert_eq!(changed.eval_bool(&vars), Ok(true));
}

#[test]
fn uses_old_object_is_detected_from_the_expression() {
    assert!(filter("oldObject.status.phase != object.status.phase").uses_old_object());
    assert!(filter("has(oldObject.status)").uses_old_object());
    assert!(filter("object.items.exists(i, i.n == oldObject.count)").uses_old_object());
    assert!(!filter("object.status.phase == 'Failed'").uses_old_object());
    // a comprehension variable that happens to be called `oldObject` is not the old object
    assert!(!filter("object.items.exists(oldObject, oldObject.n > 2)").uses_old_object());
    assert_eq!(
        filter("event.type == 'update' && object.count > 1 && event.id != ''").references(),
        ["event", "object"]
    );
}

#[test]
fn unknown_variables_are_rejected_at_compile_naming_them_and_the_available_names() {
    let error = CelExpr::filter("object.count > 1 && pod.name == 'x'").unwrap_err();
    assert!(error.message.contains("'pod'"), "{error}");
    assert!(error.message.contains("object, oldObject, event, context, now"), "{error}");
    assert_eq!((error.line, error.column), (1, 21), "{error}");

    let error = CelExpr::compile("response.items", &["item"]).unwrap_err();
    assert!(error.message.contains("'response'") && error.message.contains("item"), "{error}");
    // a comprehension variable is only in scope inside its comprehension
    assert!(CelExpr::filter("object.items.exists(i, i.n > 2) && i.n == 1").is_err());
    // unknown names in a second line are reported there
    let error = CelExpr::filter("object.count > 1 &&\n  phase == 'x'").unwrap_err();
    assert_eq!((error.line, error.column), (2, 3), "{error}");
    // columns count characters, not bytes
    let error = CelExpr::filter("'é' == pod.name").unwrap_err();
    assert_eq!((error.line, error.column), (1, 8), "{error}");
}

#[test]
fn comprehension_variables_type_names_and_function_namespaces_are_not_unknown_variables() {
    for source in [
        "object.items.exists(i, i.n > 2)",
        "object.items.map(i, i.n).filter(n, n > 1).size() == 2",
        "type(object.count) == int && type(object.name) == string",
        "math.greatest(1, object.count) == 3",
        "optional.of(object.count).hasValue()",
        "object.?nope.orValue(1) == 1",
        "base64.encode(b'a') == 'YQ=='",
    ] {
        assert_eq!(check(source), Ok(true), "{source}");
    }
}

#[test]
fn syntax_errors_report_line_and_column() {
    let error = CelExpr::filter("object.count >").unwrap_err();
    assert_eq!(error.line, 1, "{error}");
    assert!(error.column >= 14, "{error}");
    let error = CelExpr::filter("object.count > 1 &&\n  object.name ==").unwrap_err();
    assert_eq!(error.line, 2, "{error}");
    let error = CelExpr::filter("object.count > 1 &&\n  object.( == 2").unwrap_err();
    assert_eq!((error.line, error.column), (2, 10), "{error}");
    assert!(error.to_string().starts_with("line 2, column 10: "), "{error}");
    assert!(CelExpr::filter("").is_err());
    assert!(CelExpr::filter("'unterminated").is_err());
}

#[test]
fn cel_error_displays_position_then_message() {
    let error = CelError { line: 3, column: 7, message: "bad".into() };
    assert_eq!(error.to_string(), "line 3, column 7: bad");
}

#[test]
fn a_non_bool_result_is_an_error_not_a_pass() {
    let error = check("object.count").unwrap_err();
    assert!(error.contains("bool") && error.contains("int"), "{error}");
    assert!(check("object.metadata.name").unwrap_err().contains("string"));
    assert!(check("object.items").is_err());
    assert!(check("null").is_err());
}

#[test]
fn an_evaluation_error_is_an_error_not_a_pass() {
    for source in [
        "object.count / 0 == 1",
        "object.name + 1 == 'x'",
        "object.count > 'three'",
        "object.name.startsWith(1)",
        "int('x') == 1",
        "object.metadata.labels.app.nope == 1",
    ] {
        assert!(check(source).is_err(), "{source}");
    }
}

#[test]
fn equality_compares_json_containers_with_cel_values() {
    assert_true(&[
        "object.metadata.labels == {'app': 'web', 'tier': 'front'}",
        "object.metadata.labels != {'app': 'web'}",
        "object.list == ['x', 'y']",
        "object.list != ['y', 'x']",
        "object.items[0] == {'n': 1}",
        "object.items == object.items",
        "object.metadata.labels == context.data.metadata.labels",
    ]);
}

#[test]
fn eval_string_gives_strings_as_they_are_and_formats_other_scalars() {
    let mut event = event();
    event.object = json!({"regarding": {"name": "web-1"}, "count": 7, "ok": true, "ratio": 1.5, "tags": ["a", 1]});
    event.meta.preset = Some("pod-restart".into());
    let vars = Vars::for_event(&event, TRIGGER, now());
    let key = |source: &str| CelExpr::filter(source).unwrap().eval_string(&vars);
    assert_eq!(key("event.preset + \"/\" + object.regarding.name"), Ok("pod-restart/web-1".into()));
    assert_eq!(key("object.regarding.name"), Ok("web-1".into()));
    assert_eq!(key("object.count"), Ok("7".into()));
    assert_eq!(key("object.ok"), Ok("true".into()));
    assert_eq!(key("object.ratio"), Ok("1.5".into()));
    assert_eq!(key("object.tags"), Ok(r#"["a",1]"#.into()));
    assert_eq!(key("now"), Ok("2026-03-01T12:00:00Z".into()));
    assert_eq!(key("duration('90s')"), Ok("90s".into()));
    assert!(key("object.nope").is_err());
}

#[test]
fn eval_json_returns_lists_of_objects_with_integers_kept() {
    let response = json!({
        "items": [
            {"id": 1, "name": "a", "score": 0.5, "tags": ["x"], "owner": null},
            {"id": 2, "name": "b", "score": 2.0, "tags": [], "owner": {"uid": 7}},
        ],
        "total": 2,
    });
    let vars = Vars::from_json(&[("response", &response)]);
    let json = |source: &str| CelExpr::compile(source, &["response"]).unwrap().eval_json(&vars);
    assert_eq!(json("response.items"), Ok(response["items"].clone()));
    assert_eq!(json("response.items.filter(i, i.id > 1)"), Ok(json!([response["items"][1]])));
    assert_eq!(json("response.items.map(i, {'id': i.id + 1})"), Ok(json!([{"id": 2}, {"id": 3}])));
    assert_eq!(json("response.total"), Ok(json!(2)));
    assert!(json("response.total").unwrap().is_i64());
    assert_eq!(json("response"), Ok(response.clone()));
    assert!(json("response.nope").is_err());
}

#[test]
fn event_and_context_records_read_like_their_json_form() {
    let mut event = event();
    event.meta.preset = Some("oom-kill".into());
    let live = Vars::for_event(&event, TRIGGER, now());
    let document = event.context_value(TRIGGER, now());
    let pairs: Vec<(&str, &Value)> = CONTEXT_NAMES.iter().map(|name| (*name, &document[*name])).collect();
    let offline = Vars::from_json(&pairs);
    for source in ["event", "context", "object", "oldObject", "now", "event.time", "context.data.metadata"] {
        let expr = filter(source);
        assert_eq!(expr.eval_json(&live), expr.eval_json(&offline), "{source}");
    }
    assert_eq!(filter("event").eval_json(&live), Ok(event.event_value(TRIGGER)));
    for source in [
        "now - timestamp(object.metadata.creationTimestamp) > duration('5m')",
        "event.preset == 'oom-kill' && event.trigger == 'crashloop-to-agent'",
        "context.data.status.phase == 'Failed' && oldObject == null",
    ] {
        let expr = filter(source);
        assert_eq!(expr.eval_bool(&live), Ok(true), "{source}");
        assert_eq!(expr.eval_bool(&offline), Ok(true), "{source}");
    }
}

#[test]
fn from_json_takes_an_rfc3339_now_as_a_timestamp_and_with_now_adds_one() {
    let created = json!({"metadata": {"creationTimestamp": "2026-03-01T11:00:00Z"}});
    let now_text = json!("2026-03-01T12:00:00Z");
    let age = CelExpr::filter("now - timestamp(object.metadata.creationTimestamp) == duration('1h')").unwrap();
    let vars = Vars::from_json(&[("object", &created), ("now", &now_text)]);
    assert_eq!(age.eval_bool(&vars), Ok(true));

    let without_now = Vars::from_json(&[("object", &created)]);
    assert!(!without_now.contains("now"));
    assert!(age.eval_bool(&without_now).is_err());
    let with_now = without_now.with_now(now() + Duration::zero());
    assert!(with_now.contains("now"));
    assert_eq!(age.eval_bool(&with_now), Ok(true));
}

#[test]
fn cel_expr_is_clone_send_sync_and_debug() {
    fn assert_traits<T: Clone + Send + Sync + std::fmt::Debug>() {}
    assert_traits::<CelExpr>();
    let expr = filter("object.count > 1");
    let copy = expr.clone();
    assert_eq!(copy.source(), "object.count > 1");
    assert!(format!("{copy:?}").contains("object.count > 1"));
    let handle = std::thread::spawn(move || {
        let event = event();
        copy.eval_bool(&Vars::for_event(&event, TRIGGER, now()))
    });
    assert_eq!(handle.join().unwrap(), Ok(true));
}

#[test]
fn matches_works_in_both_call_forms_with_literal_and_computed_patterns() {
    assert_true(&[
        "object.name.matches('^canary-[a-z]+-[0-9]$')",
        "!object.metadata.name.matches('^canary-')",
        "matches(object.name, 'web')",
        "object.list.exists(s, s.matches('^[xy]$'))",
        "object.metadata.name.matches(object.metadata.labels.app)",
        "object.name.matches('^' + object.list[0]) == false",
    ]);
    let error = check("object.count.matches('3')").unwrap_err();
    assert!(error.contains("matches"), "{error}");
    let error = check("object.name.matches(object.metadata.name + '(')").unwrap_err();
    assert!(error.contains("regex"), "{error}");
}

#[test]
fn an_invalid_literal_regex_is_a_compile_error_at_its_position() {
    let error = CelExpr::filter("object.count > 1 && object.name.matches('web(')").unwrap_err();
    assert_eq!((error.line, error.column), (1, 41), "{error}");
    assert!(error.message.contains("regular expression"), "{error}");
}

#[test]
fn comparisons_and_negation_keep_cel_semantics() {
    assert_true(&[
        "object.count < 4 && object.count <= 3 && object.count > 2 && object.count >= 3",
        "!(object.count < 3) && !(object.count > 3)",
        "object.count > 2u && object.count < 3.5 && object.ratio < 1",
        "'a' < 'b' && object.name >= 'canary'",
        "timestamp(object.metadata.creationTimestamp) < now",
        "duration('1m') <= duration('60s')",
        "!false && !!true",
        "[1, 2, 3].filter(x, !(x < 2)).size() == 2",
    ]);
    let error = check("object.count > 'three'").unwrap_err();
    assert!(error.contains("'_>_'") && error.contains("int") && error.contains("string"), "{error}");
    let error = check("object.metadata <= 1").unwrap_err();
    assert!(error.contains("'_<=_'"), "{error}");
    let error = check("!object.count").unwrap_err();
    assert!(error.contains("'!_'") && error.contains("int"), "{error}");
}

#[test]
fn field_selection_works_on_literals_results_and_shadowing_comprehension_variables() {
    assert_true(&[
        "{'a': {'b': 2}}.a.b == 2",
        "[{'a': 1}][0].a == 1",
        "object.items.exists(object, object.n == 3)",
        "object.items.map(i, {'m': i.n}).exists(x, x.m == 2)",
        "has({'a': 1}.a) && !has({'a': 1}.b)",
        "object.?metadata.?labels.?app.orValue('none') == 'web'",
        "object.?metadata.?nope.?app.orValue('none') == 'none'",
    ]);
    let error = check("object.count.field == 1").unwrap_err();
    assert!(error.contains("int"), "{error}");
}
