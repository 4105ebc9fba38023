//! Label and field selectors of list and watch requests.

use std::collections::{BTreeMap, BTreeSet};

use kube::core::{Expression, Selector, SelectorExt};
use serde_json::Value;

use crate::status::ApiError;

/// A parsed `labelSelector`, evaluated by kube's own selector logic.
#[derive(Clone, Debug, Default)]
pub(crate) struct LabelSelector(Selector);

impl LabelSelector {
    /// Parses `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let mut expressions = Vec::new();
        for term in split_terms(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            expressions.push(parse_term(term).ok_or_else(|| {
                ApiError::bad_request(format!("unable to parse requirement: invalid label selector term {term:?}"))
            })?);
        }
        Ok(LabelSelector(Selector::from_iter(expressions)))
    }

    /// Whether an object's labels satisfy the selector.
    pub fn matches(&self, object: &Value) -> bool {
        let labels: BTreeMap<String, String> = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default();
        self.0.matches(&labels)
    }
}

/// Splits on commas that are not inside parentheses.
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn valid_value(value: &str) -> bool {
    value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn parse_term(term: &str) -> Option<Expression> {
    if let Some(key) = term.strip_prefix('!') {
        let key = key.trim();
        return valid_key(key).then(|| Expression::DoesNotExist(key.to_string()));
    }
    if let Some(open) = term.find('(') {
        let close = term.rfind(')')?;
        if close != term.len() - 1 || close < open {
            return None;
        }
        let mut words = term[..open].split_whitespace();
        let (key, op) = (words.next()?, words.next()?);
        if words.next().is_some() || !valid_key(key) {
            return None;
        }
        let values: BTreeSet<String> = term[open + 1..close].split(',').map(|v| v.trim().to_string()).collect();
        if values.iter().any(|v| !valid_value(v)) {
            return None;
        }
        return match op {
            "in" => Some(Expression::In(key.to_string(), values)),
            "notin" => Some(Expression::NotIn(key.to_string(), values)),
            _ => None,
        };
    }
    let (key, value, equal) = if let Some((k, v)) = term.split_once("!=") {
        (k, v, false)
    } else if let Some((k, v)) = term.split_once("==") {
        (k, v, true)
    } else if let Some((k, v)) = term.split_once('=') {
        (k, v, true)
    } else {
        return valid_key(term).then(|| Expression::Exists(term.to_string()));
    };
    let (key, value) = (key.trim(), value.trim());
    if !valid_key(key) || !valid_value(value) {
        return None;
    }
    Some(if equal {
        Expression::Equal(key.to_string(), value.to_string())
    } else {
        Expression::NotEqual(key.to_string(), value.to_string())
    })
}

/// A parsed `fieldSelector`: equality and inequality on dotted paths of the object.
#[derive(Clone, Debug, Default)]
pub(crate) struct FieldSelector(Vec<(String, String, bool)>);

impl FieldSelector {
    /// Parses `metadata.name=a,spec.nodeName!=b,status.phase==Running`.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (path, value, equal) = if let Some((k, v)) = term.split_once("!=") {
                (k, v, false)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, v, true)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, v, true)
            } else {
                return Err(ApiError::bad_request(format!("invalid field selector: {term:?}")));
            };
            terms.push((path.trim().to_string(), unescape(value.trim()), equal));
        }
        Ok(FieldSelector(terms))
    }

    /// Whether the object's fields satisfy every term; a missing field reads as "".
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, expected, equal)| {
            let actual = path.split('.').try_fold(object, |v, part| v.get(part)).map(field_text).unwrap_or_default();
            (actual == *expected) == *equal
        })
    }
}

fn field_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labelled(labels: Value) -> Value {
        json!({"metadata": {"name": "x", "namespace": "ns", "labels": labels}, "spec": {"n": 3, "ok": true}})
    }

    #[test]
    fn label_selectors_support_equality_sets_and_existence() {
        let obj = labelled(json!({"app": "web", "tier": "front"}));
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app=db", false),
            ("app in (db, web)", true),
            ("app notin (db,web)", false),
            ("tier,app", true),
            ("!tier", false),
            ("!missing", true),
            ("missing!=x", true),
            ("app=web,tier in (back)", false),
            ("", true),
        ];
        for (selector, expected) in cases {
            assert_eq!(LabelSelector::parse(selector).unwrap().matches(&obj), expected, "{selector}");
        }
    }

    #[test]
    fn malformed_label_selectors_are_rejected() {
        for selector in ["app in web", "a b", "app=(x)", "app in (a) x"] {
            assert!(LabelSelector::parse(selector).is_err(), "{selector}");
        }
    }

    #[test]
    fn field_selectors_compare_dotted_paths_as_text() {
        let obj = labelled(json!({}));
        let cases = [
            ("metadata.name=x", true),
            ("metadata.name!=x", false),
            ("metadata.namespace==ns,metadata.name=x", true),
            ("spec.n=3", true),
            ("spec.ok=true", true),
            ("spec.missing=", true),
            ("spec.missing=a", false),
        ];
        for (selector, expected) in cases {
            assert_eq!(FieldSelector::parse(selector).unwrap().matches(&obj), expected, "{selector}");
        }
        assert!(FieldSelector::parse("metadata.name").is_err());
    }
}
