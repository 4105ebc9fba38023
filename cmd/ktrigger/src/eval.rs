//! `ktrigger eval`: one CEL filter against a sample event, with hints when it does not work.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use chrono::Utc;
use ktrigger_core::{CONTEXT_NAMES, CelExpr, Vars, rfc3339};
use serde_json::{Map, Value};

/// Where the sample comes from.
pub enum Sample<'a> {
    /// A document holding the context names (`object`, `event`, ...); one without any of them
    /// is read as the object alone.
    Context(&'a Path),
    /// The object alone: a Pod, a Kubernetes Event, a webhook payload.
    Object(&'a Path),
}

/// Most keys listed in a hint.
const MAX_LISTED: usize = 20;
/// Most nodes searched for a key in the sample.
const MAX_SEARCHED: usize = 10_000;

/// Compiles the filter, evaluates it against the sample and prints the result; exit code 0 when
/// it matches, 1 when not, 2 when the filter does not compile.
pub fn eval(filter: &str, sample: Sample) -> anyhow::Result<ExitCode> {
    let (path, as_object) = match sample {
        Sample::Context(path) => (path, false),
        Sample::Object(path) => (path, true),
    };
    let document = read(path)?;
    let mut fields = match document {
        Value::Object(fields) if !as_object && fields.keys().any(|k| CONTEXT_NAMES.contains(&k.as_str())) => {
            if let Some(unknown) = fields.keys().find(|k| !CONTEXT_NAMES.contains(&k.as_str())) {
                anyhow::bail!(
                    "unknown name {unknown:?} in {}; expected some of: {} (or pass the object alone with --object)",
                    path.display(),
                    CONTEXT_NAMES.join(", ")
                );
            }
            fields
        }
        object => {
            if !as_object {
                eprintln!("note: {} holds none of {}: read as `object`", path.display(), CONTEXT_NAMES.join(", "));
            }
            Map::from_iter([("object".to_string(), object)])
        }
    };
    if let Some(object) = fields.get("object").cloned() {
        fields.entry("context").or_insert_with(|| serde_json::json!({"data": object}));
    }
    fields.entry("now").or_insert_with(|| Value::String(rfc3339(Utc::now())));
    let expr = match CelExpr::filter(filter) {
        Ok(expr) => expr,
        Err(e) => {
            println!("invalid filter: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let null = Value::Null;
    let pairs: Vec<(&str, &Value)> =
        CONTEXT_NAMES.iter().map(|name| (*name, fields.get(*name).unwrap_or(&null))).collect();
    match expr.eval_json(&Vars::from_json(&pairs)) {
        Ok(Value::Bool(matched)) => {
            println!("{matched}");
            Ok(if matched { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Ok(other) => {
            println!("{other}");
            println!("not matched: the result is not a bool, so as a filter it never matches");
            Ok(ExitCode::FAILURE)
        }
        Err(reason) => {
            println!("not matched: evaluation error: {reason}");
            if let Some(hint) = missing_key_hint(filter, &reason, &Value::Object(fields)) {
                println!("hint: {hint}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

fn read(path: &Path) -> anyhow::Result<Value> {
    let text = if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("cannot read stdin")?;
        text
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    serde_yaml::from_str(&text).with_context(|| format!("{} is not JSON or YAML", path.display()))
}

/// For `No such key: cnt`: which keys the map the filter looked in has, where in the sample a
/// key of that name is, and `has()` for keys that may be missing.
fn missing_key_hint(filter: &str, reason: &str, context: &Value) -> Option<String> {
    let key = reason.split("No such key: ").nth(1)?.split_whitespace().next()?.trim_matches(['"', '\'']);
    let mut parts = Vec::new();
    if let Some(parent) = parent_path(filter, key) {
        let mut hint = format!("`{parent}` has no key `{key}`");
        if let Some(Value::Object(map)) = lookup(context, &parent) {
            let keys: Vec<&str> = map.keys().take(MAX_LISTED).map(String::as_str).collect();
            let more = if map.len() > MAX_LISTED { ", ..." } else { "" };
            hint.push_str(&format!(" (it has: {}{more})", keys.join(", ")));
            let known: Vec<String> = map.keys().take(MAX_SEARCHED).cloned().collect();
            if let Some(close) = crate::suggest::closest(key, &known) {
                hint.push_str(&format!("; did you mean `{parent}.{close}`?"));
            }
        }
        parts.push(hint);
        parts.push(format!("to test for a key that may be missing, use `has({parent}.{key})`"));
    }
    if let Some(found) = find_key(context, key) {
        parts.push(format!("the sample has `{key}` at `{found}`"));
    }
    if parts.is_empty() { None } else { Some(parts.join("; ")) }
}

/// The dotted path before `.key` in the filter, e.g. `object.status` for `object.status.cnt`.
fn parent_path(filter: &str, key: &str) -> Option<String> {
    let needle = format!(".{key}");
    let mut from = 0;
    while let Some(at) = filter[from..].find(&needle).map(|i| i + from) {
        let end = at + needle.len();
        let whole_word = !filter[end..].starts_with(|c: char| c.is_alphanumeric() || c == '_');
        let start = filter[..at]
            .char_indices()
            .rev()
            .find(|(_, c)| !(c.is_alphanumeric() || *c == '_' || *c == '.'))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let parent = &filter[start..at];
        if whole_word && !parent.is_empty() && CONTEXT_NAMES.iter().any(|name| parent.split('.').next() == Some(name)) {
            return Some(parent.to_string());
        }
        from = end;
    }
    None
}

/// The value at a dotted path of plain keys.
fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |node, key| node.get(key))
}

/// The first path (breadth first, so the shallowest) where the sample has a key named `key`.
fn find_key(value: &Value, key: &str) -> Option<String> {
    let mut queue = std::collections::VecDeque::from([(String::new(), value)]);
    let mut searched = 0usize;
    while let Some((path, node)) = queue.pop_front() {
        searched += 1;
        if searched > MAX_SEARCHED {
            return None;
        }
        match node {
            Value::Object(map) => {
                for (name, child) in map {
                    let child_path = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
                    // `context.data` repeats `object`: point at the object.
                    if child_path == "context" {
                        continue;
                    }
                    if name == key {
                        return Some(child_path);
                    }
                    queue.push_back((child_path, child));
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    queue.push_back((format!("{path}[{index}]"), item));
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_missing_key_hint_lists_the_keys_there_and_suggests_has() {
        let context = json!({"object": {"status": {"phase": "Running", "count": 3}}});
        let hint = missing_key_hint("object.status.cnt > 1", "No such key: cnt", &context).unwrap();
        assert_eq!(
            hint,
            "`object.status` has no key `cnt` (it has: count, phase); to test for a key that may be missing, \
             use `has(object.status.cnt)`"
        );
    }

    #[test]
    fn a_key_at_another_nesting_is_pointed_at() {
        let context = json!({"object": {"series": {"count": 5}}});
        let hint = missing_key_hint("object.count >= 3", "No such key: count", &context).unwrap();
        assert!(hint.ends_with("the sample has `count` at `object.series.count`"), "{hint}");
    }

    #[test]
    fn only_whole_names_after_a_context_name_are_parents() {
        assert_eq!(parent_path("size(x.countdown) > 0 && object.count > 1", "count").as_deref(), Some("object"));
        assert_eq!(parent_path("foo.count", "count"), None);
    }
}
