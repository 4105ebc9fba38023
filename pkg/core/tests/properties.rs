//! Property tests: filters, templates, durations and whole TriggerService documents made of
//! random pieces never panic or abort the process when they are parsed, validated, prepared and
//! evaluated once. Every expression that compiles is within the limits.
//!
//! Cases per property: filters 1,500, templates 800, durations 3,000, documents 400 (about 330
//! of their ~800 triggers prepare and are evaluated; the rest are refused with a reason).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use ktrigger_api::{MAX_DURATION, parse_duration};
use ktrigger_core::{
    BuildContext, CEL_COST_LIMIT, CelExpr, ClusterSecrets, DeliveryError, DeliveryRequest, Destination,
    DestinationType, Event, EventSink, MAX_TEMPLATE_OUTPUT, MemoryStore, PropertyError, Receipt, Registry, Source,
    SourceError, SourceType, StateStore, Template, TemplateScope, TriggerId, Vars, load_text, prepare::prepare_service,
    router::Router,
};
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Pieces of CEL, valid and not, that the generated filters are made of.
const CEL_TOKENS: &[&str] = &[
    "object",
    "oldObject",
    "event",
    "context",
    "now",
    ".",
    "items",
    "metadata",
    "name",
    "n",
    "s",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "+",
    "-",
    "*",
    "/",
    "%",
    "!",
    "&&",
    "||",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    "?",
    ":",
    ",",
    " ",
    "in",
    "1",
    "0",
    "-1",
    "2.5",
    "9223372036854775807",
    "1u",
    "'a'",
    "\"b\"",
    "'''c'''",
    "r'\\d'",
    "b'x'",
    "'",
    "\"",
    "\\",
    "x",
    "y",
    ".map(x, ",
    ".all(x, ",
    ".exists(y, ",
    ".filter(x, ",
    ".exists_one(x, ",
    "size(",
    "has(",
    "lists.range(",
    ".replace(",
    ".distinct()",
    ".split(",
    ".join(",
    "matches(",
    "int(",
    "string(",
    "double(",
    "duration('1h')",
    "timestamp('2026-01-01T00:00:00Z')",
    "[1, 2, 3]",
    "{'k': 1}",
    "true",
    "false",
    "null",
    "math.greatest(",
    ".sort()",
    ".size()",
    "cel.bind(v, ",
    "optional.of(",
    ".?",
    "type(",
    "dyn(",
];

/// Pieces of minijinja the generated templates are made of.
const TEMPLATE_TOKENS: &[&str] = &[
    "{{ ",
    " }}",
    "{% ",
    " %}",
    "for i in range(",
    "for j in object.items",
    "endfor",
    "if ",
    "else",
    "endif",
    "object",
    "event",
    "now",
    "oldObject",
    ".",
    "items",
    "name",
    "n",
    "|length",
    "|upper",
    "|tojson",
    "~",
    "*",
    "+",
    "1000",
    "100000",
    "2",
    ")",
    "(",
    "'x'",
    "\"y\"",
    "set a = ",
    "a",
    "loop.index",
    "raw",
    "endraw",
    "{#",
    "#}",
    " ",
    "\n",
    "text",
    "pod",
    "}",
    "{",
    "%",
    "macro m()",
    "endmacro",
    "m()",
    "namespace()",
    "dict(a=1)",
];

/// Expressions that compile, so that documents also reach preparation and evaluation.
const VALID_CEL: &[&str] = &[
    "object.n > 1",
    "object.items.exists(i, i == 3)",
    "object.metadata.name + '/' + event.type",
    "size(object.items.map(x, x * 2)) > 0",
    "object.big.replace('y', 'zz').size() > 0",
    "lists.range(object.n).all(i, i >= 0)",
    "object.nested.all(n, n.items.all(i, i > 0))",
    "object.items.distinct().size() == 200",
    "has(object.metadata.labels.app) ? object.s.split('-')[1] : 'none'",
];

/// Templates that compile.
const VALID_TEMPLATES: &[&str] = &[
    "Pod {{ object.metadata.name }} fired {{ object.n }} times",
    "{% for i in object.items %}{{ i }},{% endfor %}",
    "{% for i in range(object.n) %}{{ object.big }}{% endfor %}",
    "{{ object | tojson }}",
];

fn joined(tokens: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(tokens), 0..max).prop_map(|parts| parts.concat())
}

/// A CEL expression: token soup, sometimes very long or deeply nested, or any text at all.
fn cel_source() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(VALID_CEL).prop_map(String::from),
        6 => joined(CEL_TOKENS, 60),
        1 => joined(CEL_TOKENS, 1500),
        1 => (1usize..3000, prop::sample::select(&["(", "[", "!", "-", "1+", ".a", "{'a':"][..]))
            .prop_map(|(n, token)| format!("object.n == {}1", token.repeat(n))),
        1 => "\\PC{0,300}",
    ]
}

fn template_source() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(VALID_TEMPLATES).prop_map(String::from),
        4 => joined(TEMPLATE_TOKENS, 60),
        1 => "\\PC{0,200}",
    ]
}

fn duration_text() -> impl Strategy<Value = String> {
    let units = prop::sample::select(&["ns", "us", "ms", "s", "m", "h", "d", "w", "y", "months", "", "x"][..]);
    prop_oneof![
        2 => prop::sample::select(&["1s", "10m", "2h", "30d", "720h", "31d"][..]).prop_map(String::from),
        3 => ("[0-9]{1,25}", units.clone()).prop_map(|(n, unit)| format!("{n}{unit}")),
        1 => prop::collection::vec(("[0-9]{1,12}", units), 1..5)
            .prop_map(|parts| parts.iter().map(|(n, u)| format!("{n}{u}")).collect::<Vec<_>>().join(" ")),
        1 => "\\PC{0,40}",
    ]
}

/// The event every generated filter is evaluated against: some nesting, lists and strings.
fn event() -> Event {
    let items: Vec<i64> = (0..200).collect();
    Event::new(
        "feed",
        "create",
        json!({"n": 3, "s": "a-b-c", "items": items, "metadata": {"name": "web", "labels": {"app": "x"}},
               "nested": [{"items": [1, 2, 3]}, {"items": []}], "big": "y".repeat(10_000)}),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn filters_compile_within_the_limits_and_evaluate_without_panicking(source in cel_source()) {
        if let Ok(expr) = CelExpr::filter(&source) {
            prop_assert!(expr.estimated_cost() <= CEL_COST_LIMIT);
            let event = event();
            let vars = Vars::for_event(&event, "t", Utc::now());
            let _ = expr.eval_bool(&vars);
            let _ = expr.eval_string(&vars);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 800, ..ProptestConfig::default() })]

    #[test]
    fn templates_render_within_the_limits_without_panicking(source in template_source()) {
        if let Ok(template) = Template::compile(&source)
            && let Ok(text) = template.render(&TemplateScope::new(&event(), "t"))
        {
            prop_assert!(text.len() <= MAX_TEMPLATE_OUTPUT);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn durations_are_positive_and_at_most_30_days_and_safe_to_add(text in duration_text()) {
        if let Ok(duration) = parse_duration(&text) {
            prop_assert!(duration > Duration::ZERO && duration <= MAX_DURATION);
            prop_assert!(tokio::time::Instant::now().checked_add(duration * 2).is_some());
            let router = Router::new();
            let id = TriggerId { namespace: "ns".into(), service: "svc".into(), trigger: "t".into() };
            router.admit(&id, Some(("k".into(), duration)), None);
            router.admit(&id, Some(("k".into(), duration)), None);
        }
    }
}

/// A whole document: valid structure with generated filters, keys, durations and templates,
/// each field present or not, sometimes mangled.
fn document() -> impl Strategy<Value = String> {
    let maybe = |strategy: BoxedStrategy<String>| prop::option::weighted(0.5, strategy);
    // Mostly pieces that compile, so that most documents reach preparation and evaluation.
    let cel = || prop_oneof![3 => prop::sample::select(VALID_CEL).prop_map(String::from), 1 => cel_source()];
    let template =
        prop_oneof![3 => prop::sample::select(VALID_TEMPLATES).prop_map(String::from), 1 => template_source()];
    let duration = || prop_oneof![3 => prop::sample::select(&["1s", "10m", "2h", "30d"][..]).prop_map(String::from), 1 => duration_text()];
    let trigger = (
        maybe(cel().boxed()),
        maybe((cel(), duration()).prop_map(|(k, w)| format!("{{key: {}, window: {}}}", quote(&k), quote(&w))).boxed()),
        maybe(duration().boxed()),
        maybe(duration().boxed()),
        template,
        0u32..20,
        0u32..70,
    );
    (prop::collection::vec(trigger, 1..4), "\\PC{0,20}", 0usize..6).prop_map(|(triggers, junk, mangle)| {
        let mut text = String::from("apiVersion: ktrigger.dev/v1alpha1\nkind: TriggerService\nmetadata: {name: p}\nspec:\n  triggers:\n");
        for (i, (filter, dedup, debounce, backoff, message, per_minute, queue)) in triggers.iter().enumerate() {
            text.push_str(&format!("  - name: t{i}\n    source: {{type: feed}}\n    rateLimit: {{perMinute: {per_minute}}}\n"));
            if let Some(filter) = filter {
                text.push_str(&format!("    filter: {}\n", quote(filter)));
            }
            if let Some(dedup) = dedup {
                text.push_str(&format!("    dedup: {dedup}\n"));
            }
            if let Some(debounce) = debounce {
                text.push_str(&format!("    debounce: {}\n", quote(debounce)));
            }
            text.push_str(&format!(
                "    destinations:\n    - type: recorder\n      properties: {{message: {}}}\n      queueSize: {queue}\n",
                quote(message)
            ));
            if let Some(backoff) = backoff {
                text.push_str(&format!("      retry: {{backoff: {0}, maxBackoff: {0}}}\n      timeout: {0}\n", quote(backoff)));
            }
        }
        match mangle {
            0 => text.push_str(&junk),
            1 => {
                let middle = (0..=text.len() / 2).rev().find(|at| text.is_char_boundary(*at)).unwrap_or(0);
                text.insert_str(middle, &junk);
            }
            _ => {}
        }
        text
    })
}

/// `text` as a YAML (JSON) string.
fn quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

struct Idle;

#[async_trait]
impl Source for Idle {
    async fn run(&self, _: EventSink, cancel: CancellationToken) -> Result<(), SourceError> {
        cancel.cancelled().await;
        Ok(())
    }
}

struct IdleFactory;

/// Takes any properties and ignores them.
#[derive(serde::Deserialize, schemars::JsonSchema)]
struct AnyProperties {}

impl SourceType for IdleFactory {
    type Properties = AnyProperties;
    const NAME: &'static str = "feed";
    const EXAMPLE: &'static str = "";

    fn build(&self, _: AnyProperties, _: &BuildContext) -> Result<Arc<dyn Source>, PropertyError> {
        Ok(Arc::new(Idle))
    }
}

/// Renders its `message` template.
struct Message(Template);

#[async_trait]
impl Destination for Message {
    fn render(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        let scope = TemplateScope::new(request.event, &request.trigger.trigger);
        self.0.render(&scope).map(Value::String).map_err(DeliveryError::permanent)
    }
    async fn deliver(&self, _: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
        Ok(Receipt::default())
    }
}

struct MessageFactory;

/// Renders `message`; other properties are ignored.
#[derive(serde::Deserialize, schemars::JsonSchema)]
struct MessageProperties {
    /// The template.
    #[serde(default)]
    message: Option<Value>,
}

impl DestinationType for MessageFactory {
    type Properties = MessageProperties;
    const NAME: &'static str = "recorder";
    const EXAMPLE: &'static str = "";

    fn build(&self, props: MessageProperties, _: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
        let source = props.message.as_ref().and_then(Value::as_str).unwrap_or_default();
        Ok(Arc::new(Message(Template::compile(source).map_err(|e| PropertyError::new("message", e))?)))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn documents_parse_validate_prepare_and_evaluate_once_without_panicking(text in document()) {
        let mut registry = Registry::default();
        registry.add_source_type(IdleFactory);
        registry.add_destination_type(MessageFactory);
        let config = load_text("generated", &text);
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore);
        for service in &config.services {
            let (prepared, _) =
                prepare_service(&registry, &service.namespace, &service.name, &service.spec, true, &ClusterSecrets::default(), &store);
            for trigger in prepared {
                let event = event();
                let vars = Vars::for_event(&event, &trigger.id.trigger, Utc::now());
                if let Some(filter) = &trigger.filter {
                    let _ = filter.eval_bool(&vars);
                }
                if let Some((key, window)) = &trigger.dedup {
                    prop_assert!(*window <= MAX_DURATION);
                    let _ = key.eval_string(&vars);
                }
                prop_assert!(trigger.debounce.is_none_or(|d| d <= MAX_DURATION));
                for target in &trigger.targets {
                    let request = DeliveryRequest { id: "d", trigger: &trigger.id, event: &event, attempt: 1 };
                    let _ = target.destination.render(&request);
                }
            }
        }
    }
}
