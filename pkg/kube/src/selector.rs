//! Label and field selectors: checked when a trigger loads (so a typo is reported on that trigger,
//! not as a watch that fails later), written in one canonical form, and evaluated by the engine on
//! each change of a shared watch: label selectors always, field selectors on `metadata.name` and
//! `metadata.namespace`. Other field selectors are left to the API server, as part of the watch.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

/// Checks a label selector and returns it in canonical form: requirements sorted, `==` written
/// as `=`, set values sorted. The empty selector selects everything.
pub fn canonical_labels(selector: &str) -> Result<String, String> {
    Ok(LabelSelector::parse(selector)?.to_string())
}

/// The canonical label selector of `matchingLabels` (kube-trigger) and `labelSelector` together.
pub fn merge_labels(matching: &BTreeMap<String, String>, selector: Option<&str>) -> Result<String, String> {
    let mut text: Vec<String> = matching.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if let Some(selector) = selector.filter(|s| !s.trim().is_empty()) {
        text.push(selector.to_string());
    }
    canonical_labels(&text.join(","))
}

/// One requirement of a label selector, with Kubernetes' meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    /// `key=value` (`==`): the label is set to the value.
    Equal(String, String),
    /// `key!=value`: the label is absent or set to another value.
    NotEqual(String, String),
    /// `key in (a,b)`: the label is set to one of the values.
    In(String, Vec<String>),
    /// `key notin (a,b)`: the label is absent or set to none of the values.
    NotIn(String, Vec<String>),
    /// `key`: the label is set.
    Exists(String),
    /// `!key`: the label is absent.
    DoesNotExist(String),
    /// `key>n`: the label is an integer greater than n.
    Greater(String, i64),
    /// `key<n`: the label is an integer less than n.
    Less(String, i64),
}

impl Requirement {
    fn matches(&self, labels: &impl LabelSet) -> bool {
        match self {
            Requirement::Equal(key, value) => labels.label(key) == Some(value.as_str()),
            Requirement::NotEqual(key, value) => labels.label(key) != Some(value.as_str()),
            Requirement::In(key, values) => labels.label(key).is_some_and(|v| values.iter().any(|x| x == v)),
            Requirement::NotIn(key, values) => !labels.label(key).is_some_and(|v| values.iter().any(|x| x == v)),
            Requirement::Exists(key) => labels.label(key).is_some(),
            Requirement::DoesNotExist(key) => labels.label(key).is_none(),
            Requirement::Greater(key, bound) => {
                labels.label(key).and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v > *bound)
            }
            Requirement::Less(key, bound) => {
                labels.label(key).and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v < *bound)
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Equal(key, value) => write!(f, "{key}={value}"),
            Requirement::NotEqual(key, value) => write!(f, "{key}!={value}"),
            Requirement::In(key, values) => write!(f, "{key} in ({})", values.join(",")),
            Requirement::NotIn(key, values) => write!(f, "{key} notin ({})", values.join(",")),
            Requirement::Exists(key) => write!(f, "{key}"),
            Requirement::DoesNotExist(key) => write!(f, "!{key}"),
            Requirement::Greater(key, bound) => write!(f, "{key}>{bound}"),
            Requirement::Less(key, bound) => write!(f, "{key}<{bound}"),
        }
    }
}

/// Labels to match a selector against, read where they are (no copy).
pub trait LabelSet {
    /// The value of label `key`, when set.
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelSet for Map<String, Value> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
}

/// A checked label selector, evaluated by the engine. Displays in canonical form (requirements
/// sorted, `==` written as `=`, set values sorted); the empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// Checks and parses a label selector such as `app=web,tier in (api,db),!legacy`.
    pub fn parse(selector: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in split_top_level(selector)? {
            let part = part.trim();
            if part.is_empty() {
                if selector.trim().is_empty() {
                    continue;
                }
                return Err(format!("empty requirement in label selector {selector:?}"));
            }
            requirements.push(label_requirement(part).map_err(|e| format!("label selector {selector:?}: {e}"))?);
        }
        requirements.sort_by_cached_key(ToString::to_string);
        requirements.dedup();
        Ok(LabelSelector(requirements))
    }

    /// Whether it selects every object.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &impl LabelSet) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, requirement) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{requirement}")?;
        }
        Ok(())
    }
}

/// The labels of an object as a watch remembers them, sorted by key; objects with the same
/// labels share one copy (see [`LabelInterner`]).
#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct StoredLabels(Box<[(Box<str>, Box<str>)]>);

impl StoredLabels {
    fn of(labels: &Map<String, Value>) -> Self {
        let mut pairs: Vec<(Box<str>, Box<str>)> =
            labels.iter().filter_map(|(k, v)| Some((k.as_str().into(), v.as_str()?.into()))).collect();
        pairs.sort_unstable();
        StoredLabels(pairs.into_boxed_slice())
    }

    /// Whether these are exactly `labels`.
    fn same_as(&self, labels: &Map<String, Value>) -> bool {
        labels.values().all(Value::is_string)
            && self.0.len() == labels.len()
            && self.0.iter().all(|(k, v)| labels.label(k) == Some(&**v))
    }
}

impl LabelSet for StoredLabels {
    fn label(&self, key: &str) -> Option<&str> {
        let i = self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        self.0.get(i).map(|(_, v)| &**v)
    }
}

/// The labels of an object (empty when it has none).
pub fn labels_of(object: &Value) -> &Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    object["metadata"]["labels"].as_object().unwrap_or_else(|| EMPTY.get_or_init(Map::new))
}

/// One copy of each distinct label set a watch remembers.
#[derive(Debug, Default)]
pub struct LabelInterner(HashSet<Arc<StoredLabels>>);

impl LabelInterner {
    /// The shared copy of `labels`: `previous` when they did not change, `None` when empty.
    pub fn intern(
        &mut self,
        labels: &Map<String, Value>,
        previous: Option<&Arc<StoredLabels>>,
    ) -> Option<Arc<StoredLabels>> {
        if labels.is_empty() {
            return None;
        }
        if let Some(previous) = previous.filter(|p| p.same_as(labels)) {
            return Some(previous.clone());
        }
        let stored = StoredLabels::of(labels);
        if let Some(shared) = self.0.get(&stored) {
            return Some(shared.clone());
        }
        let shared = Arc::new(stored);
        self.0.insert(shared.clone());
        Some(shared)
    }

    /// Drops the copy of `labels` once nothing but the interner holds it.
    pub fn release(&mut self, labels: Option<Arc<StoredLabels>>) {
        if let Some(labels) = labels
            && Arc::strong_count(&labels) == 2
        {
            self.0.remove(&labels);
        }
    }

    /// Distinct label sets kept.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none are kept.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A field the engine evaluates itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    Namespace,
}

/// What one trigger selects on a shared watch: its label selector and its field selectors on
/// `metadata.name` and `metadata.namespace`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectSelector {
    labels: LabelSelector,
    fields: Vec<(Field, bool, String)>,
}

impl ObjectSelector {
    /// The selector of a canonical label selector and a canonical field selector, and what is
    /// left of the field selector for the API server (fields the engine does not evaluate).
    pub fn new(labels: &str, fields: &str) -> Result<(ObjectSelector, String), String> {
        let labels = LabelSelector::parse(labels)?;
        let mut local = Vec::new();
        let mut server = Vec::new();
        for part in split_unescaped(fields).into_iter().map(str::trim).filter(|p| !p.is_empty()) {
            let (key, equal, value) = match part.split_once("!=") {
                Some((k, v)) => (k, false, v),
                None => match part.split_once('=') {
                    Some((k, v)) => (k, true, v),
                    None => return Err(format!("field selector {fields:?}: {part:?} is not key=value or key!=value")),
                },
            };
            let field = match key.trim() {
                "metadata.name" => Field::Name,
                "metadata.namespace" => Field::Namespace,
                _ => {
                    server.push(part);
                    continue;
                }
            };
            local.push((field, equal, unescape(value.trim())));
        }
        Ok((ObjectSelector { labels, fields: local }, server.join(",")))
    }

    /// This selector, also requiring the object to be in `namespace`: for a trigger on one
    /// namespace served by a watch of all namespaces.
    pub fn in_namespace(mut self, namespace: &str) -> Self {
        self.fields.push((Field::Namespace, true, namespace.to_string()));
        self
    }

    /// The label selector and field selector that make the API server list only what this
    /// selects: for a list made for one subscriber (its catch-up after a restart).
    pub fn for_server(&self) -> (String, String) {
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|(field, equal, value)| {
                let name = match field {
                    Field::Name => "metadata.name",
                    Field::Namespace => "metadata.namespace",
                };
                let value = value.replace('\\', "\\\\").replace(',', "\\,");
                format!("{name}{}{value}", if *equal { "=" } else { "!=" })
            })
            .collect();
        (self.labels.to_string(), fields.join(","))
    }

    /// Whether it selects every object.
    pub fn selects_all(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    /// Whether `object` is selected.
    pub fn matches(&self, object: &Value) -> bool {
        let metadata = &object["metadata"];
        self.matches_parts(
            labels_of(object),
            metadata["name"].as_str().unwrap_or_default(),
            metadata["namespace"].as_str().unwrap_or_default(),
        )
    }

    /// Whether an object with these labels, name and namespace is selected.
    pub fn matches_parts(&self, labels: &impl LabelSet, name: &str, namespace: &str) -> bool {
        self.fields.iter().all(|(field, equal, value)| {
            let actual = match field {
                Field::Name => name,
                Field::Namespace => namespace,
            };
            (actual == value) == *equal
        }) && self.labels.matches(labels)
    }
}

/// A field selector value without its escapes (`\,` is a comma).
fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

/// Checks a field selector (`key=value`, `key==value`, `key!=value`, comma separated) and returns
/// it in canonical form. Which fields a resource supports is up to the API server.
pub fn canonical_fields(selector: &str) -> Result<String, String> {
    let mut requirements = Vec::new();
    for part in split_unescaped(selector) {
        let part = part.trim();
        if part.is_empty() {
            if selector.trim().is_empty() {
                continue;
            }
            return Err(format!("empty requirement in field selector {selector:?}"));
        }
        let (key, op, value) = if let Some((k, v)) = part.split_once("!=") {
            (k, "!=", v)
        } else if let Some((k, v)) = part.split_once("==") {
            (k, "=", v)
        } else if let Some((k, v)) = part.split_once('=') {
            (k, "=", v)
        } else {
            return Err(format!("field selector {selector:?}: {part:?} is not key=value or key!=value"));
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c)) {
            return Err(format!("field selector {selector:?}: invalid field name {key:?}"));
        }
        requirements.push(format!("{key}{op}{}", value.trim()));
    }
    requirements.sort();
    requirements.dedup();
    Ok(requirements.join(","))
}

/// Splits on commas outside parentheses (set-based requirements hold commas).
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("unbalanced ')' in label selector {text:?}"));
                }
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in label selector {text:?}"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

/// Splits on commas not preceded by a backslash (field selector values may escape them).
fn split_unescaped(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in text.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            ',' if !escaped => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => escaped = false,
        }
    }
    parts.push(&text[start..]);
    parts
}

fn label_requirement(part: &str) -> Result<Requirement, String> {
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        check_key(key)?;
        return Ok(Requirement::DoesNotExist(key.to_string()));
    }
    for (word, canonical) in [(" notin ", "notin"), (" in ", "in")] {
        if let Some((key, rest)) = part.split_once(word) {
            let key = key.trim();
            check_key(key)?;
            let rest = rest.trim();
            let inner = rest
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("{part:?}: the values of `{canonical}` go in parentheses"))?;
            let mut values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
            if values.iter().all(String::is_empty) {
                return Err(format!("{part:?}: `{canonical}` needs at least one value"));
            }
            for value in &values {
                check_value(value)?;
            }
            values.sort_unstable();
            values.dedup();
            let key = key.to_string();
            return Ok(if canonical == "in" { Requirement::In(key, values) } else { Requirement::NotIn(key, values) });
        }
    }
    for op in ["!=", "==", "=", ">", "<"] {
        if let Some((key, value)) = part.split_once(op) {
            let (key, value) = (key.trim().to_string(), value.trim());
            check_key(&key)?;
            if op == ">" || op == "<" {
                let bound = value.parse::<i64>().map_err(|_| format!("{part:?}: `{op}` needs an integer"))?;
                return Ok(if op == ">" { Requirement::Greater(key, bound) } else { Requirement::Less(key, bound) });
            }
            check_value(value)?;
            let value = value.to_string();
            return Ok(if op == "!=" { Requirement::NotEqual(key, value) } else { Requirement::Equal(key, value) });
        }
    }
    check_key(part)?;
    Ok(Requirement::Exists(part.to_string()))
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters.
fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let valid = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|label| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !valid {
            return Err(format!("invalid label key {key:?}: the prefix must be a DNS subdomain"));
        }
    }
    if name.is_empty() || !is_label_word(name) {
        return Err(format!(
            "invalid label key {key:?}: a name is 1-63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A label value: empty, or at most 63 letters, digits, `-`, `_`, `.`, alphanumeric at both ends.
fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_word(value) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value {value:?}: at most 63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit"
        ))
    }
}

fn is_label_word(word: &str) -> bool {
    let bytes = word.as_bytes();
    word.len() <= 63
        && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors_that_mean_the_same_have_one_canonical_form() {
        let a = canonical_labels("tier in (web, api),app==shop, !legacy").unwrap();
        let b = canonical_labels("!legacy,app=shop,tier in (api,web)").unwrap();
        assert_eq!(a, "!legacy,app=shop,tier in (api,web)");
        assert_eq!(a, b);
        assert_eq!(canonical_labels("").unwrap(), "");
        assert_eq!(
            canonical_labels("example.com/team notin (a),release").unwrap(),
            "example.com/team notin (a),release"
        );
        assert_eq!(canonical_labels("replicas>2").unwrap(), "replicas>2");
    }

    #[test]
    fn invalid_label_selectors_say_what_is_wrong() {
        for (selector, expected) in [
            ("app=", ""),
            ("app in web", "parentheses"),
            ("app in ()", "at least one value"),
            ("-app=x", "invalid label key"),
            ("app=sh op", "invalid label value"),
            ("a,,b", "empty requirement"),
            ("tier in (a", "unbalanced"),
            ("Bad_Prefix/app=x", "DNS subdomain"),
            ("n>two", "integer"),
        ] {
            let result = canonical_labels(selector);
            if expected.is_empty() {
                assert!(result.is_ok(), "{selector}: {result:?}");
            } else {
                let error = result.expect_err(selector);
                assert!(error.contains(expected), "{selector}: {error}");
            }
        }
    }

    #[test]
    fn matching_labels_merge_with_the_selector() {
        let matching = BTreeMap::from([("app".to_string(), "shop".to_string())]);
        assert_eq!(merge_labels(&matching, Some("tier!=db")).unwrap(), "app=shop,tier!=db");
        assert_eq!(merge_labels(&BTreeMap::new(), None).unwrap(), "");
    }

    #[test]
    fn field_selectors_are_checked_and_sorted() {
        assert_eq!(
            canonical_fields("status.phase!=Running, metadata.name==web").unwrap(),
            "metadata.name=web,status.phase!=Running"
        );
        assert_eq!(canonical_fields("").unwrap(), "");
        assert!(canonical_fields("metadata.name").unwrap_err().contains("is not key=value"));
        assert!(canonical_fields("a=1,,b=2").unwrap_err().contains("empty requirement"));
        assert!(canonical_fields("=x").unwrap_err().contains("invalid field name"));
    }

    fn object(labels: Value) -> Value {
        serde_json::json!({"metadata": {"name": "web", "namespace": "apps", "labels": labels}})
    }

    #[test]
    fn label_selectors_are_evaluated_with_every_operator() {
        let obj = object(serde_json::json!({"app": "web", "tier": "front", "replicas": "3", "empty": ""}));
        for (selector, expected) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("missing!=web", true),
            ("app in (db, web)", true),
            ("missing in (web)", false),
            ("app notin (db,web)", false),
            ("missing notin (web)", true),
            ("tier,app", true),
            ("missing", false),
            ("!tier", false),
            ("!missing", true),
            ("empty=", true),
            ("missing=", false),
            ("replicas>2", true),
            ("replicas<3", false),
            ("app>2", false),
            ("app=web,tier in (back)", false),
            ("", true),
        ] {
            let parsed = LabelSelector::parse(selector).unwrap();
            assert_eq!(parsed.matches(labels_of(&obj)), expected, "{selector}");
        }
        assert!(LabelSelector::parse("").unwrap().matches(labels_of(&serde_json::json!({}))));
    }

    #[test]
    fn name_and_namespace_field_selectors_are_evaluated_here_and_others_left_to_the_server() {
        let (selector, server) =
            ObjectSelector::new("app=web", "metadata.name=web,metadata.namespace!=kube-system,status.phase=Running")
                .unwrap();
        assert_eq!(server, "status.phase=Running");
        assert!(selector.matches(&object(serde_json::json!({"app": "web"}))));
        assert!(!selector.matches(&object(serde_json::json!({"app": "db"}))));
        let (named, server) = ObjectSelector::new("", "metadata.name=other").unwrap();
        assert_eq!(server, "");
        assert!(!named.matches(&object(serde_json::json!({}))));
        let scoped = ObjectSelector::default().in_namespace("apps");
        assert!(scoped.matches(&object(serde_json::json!({}))));
        assert!(!ObjectSelector::default().in_namespace("web").matches(&object(serde_json::json!({}))));
        assert!(ObjectSelector::default().selects_all() && !scoped.selects_all());
        let (labels, fields) = selector.in_namespace("apps").for_server();
        assert_eq!(labels, "app=web");
        assert_eq!(fields, "metadata.name=web,metadata.namespace!=kube-system,metadata.namespace=apps");
    }

    #[test]
    fn stored_labels_are_shared_and_released() {
        let mut interner = LabelInterner::default();
        let a = object(serde_json::json!({"app": "web", "tier": "front"}));
        let b = object(serde_json::json!({"tier": "front", "app": "web"}));
        let first = interner.intern(labels_of(&a), None);
        let second = interner.intern(labels_of(&b), None);
        assert!(Arc::ptr_eq(first.as_ref().unwrap(), second.as_ref().unwrap()));
        assert_eq!(first.as_deref().unwrap().label("tier"), Some("front"));
        assert_eq!(interner.len(), 1);
        assert!(interner.intern(labels_of(&object(serde_json::json!({}))), None).is_none());
        interner.release(first);
        assert_eq!(interner.len(), 1, "still held by the second object");
        interner.release(second);
        assert!(interner.is_empty());
    }

    mod matches_kubernetes {
        use std::collections::BTreeSet;

        use kube::core::{Expression, Selector, SelectorExt};
        use proptest::prelude::*;

        use super::super::*;

        const KEYS: &[&str] = &["app", "tier", "example.com/team", "x"];
        const VALUES: &[&str] = &["", "a", "b", "web", "a.b-c_d"];

        fn key() -> impl Strategy<Value = String> {
            proptest::sample::select(KEYS).prop_map(str::to_string)
        }

        fn value() -> impl Strategy<Value = String> {
            proptest::sample::select(VALUES).prop_map(str::to_string)
        }

        fn values() -> impl Strategy<Value = BTreeSet<String>> {
            proptest::collection::btree_set(value().prop_filter("a set value", |v| !v.is_empty()), 1..4)
        }

        /// A requirement as kube-rs models it, and as written in a selector (`==` and spacing vary).
        fn expression() -> impl Strategy<Value = (Expression, String)> {
            prop_oneof![
                (key(), value(), any::<bool>()).prop_map(|(k, v, double)| {
                    let text = if double { format!("{k} == {v}") } else { format!("{k}={v}") };
                    (Expression::Equal(k, v), text)
                }),
                (key(), value()).prop_map(|(k, v)| (Expression::NotEqual(k.clone(), v.clone()), format!("{k}!={v}"))),
                (key(), values()).prop_map(|(k, vs)| {
                    let text = format!("{k} in ({})", vs.iter().cloned().collect::<Vec<_>>().join(", "));
                    (Expression::In(k, vs), text)
                }),
                (key(), values()).prop_map(|(k, vs)| {
                    let text = format!("{k} notin ({})", vs.iter().cloned().collect::<Vec<_>>().join(","));
                    (Expression::NotIn(k, vs), text)
                }),
                key().prop_map(|k| (Expression::Exists(k.clone()), k)),
                key().prop_map(|k| (Expression::DoesNotExist(k.clone()), format!("!{k}"))),
            ]
        }

        proptest! {
            #[test]
            fn local_matching_agrees_with_kube_rs(
                labels in proptest::collection::btree_map(key(), value(), 0..4),
                requirements in proptest::collection::vec(expression(), 0..4),
            ) {
                let text: Vec<String> = requirements.iter().map(|(_, t)| t.clone()).collect();
                let reference = Selector::from_iter(requirements.into_iter().map(|(e, _)| e));
                let expected = reference.matches(&labels);
                let object = serde_json::json!({"metadata": {"labels": labels}});
                let ours = LabelSelector::parse(&text.join(",")).unwrap();
                prop_assert_eq!(ours.matches(labels_of(&object)), expected);
                // The canonical form means the same.
                let canonical = LabelSelector::parse(&ours.to_string()).unwrap();
                prop_assert_eq!(canonical.matches(labels_of(&object)), expected);
                // Remembered labels match like the object's own.
                let stored = StoredLabels::of(labels_of(&object));
                prop_assert_eq!(ours.matches(&stored), expected);
                prop_assert!(stored.same_as(labels_of(&object)));
            }

            #[test]
            fn any_text_parses_or_fails_without_panicking(text in ".{0,80}") {
                if let Ok(selector) = LabelSelector::parse(&text) {
                    let _ = selector.matches(labels_of(&serde_json::json!({"metadata": {"labels": {"a": "b"}}})));
                }
                let _ = ObjectSelector::new("", &text);
            }
        }
    }
}
