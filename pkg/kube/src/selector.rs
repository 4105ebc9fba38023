//! Label and field selectors: checked when a trigger loads (so a typo is reported on that trigger,
//! not as a watch that fails later) and written in one canonical form, so that triggers whose
//! selectors mean the same share one watch.

use std::collections::BTreeMap;

/// Checks a label selector and returns it in canonical form: requirements sorted, `==` written
/// as `=`, set values sorted. The empty selector selects everything.
pub fn canonical_labels(selector: &str) -> Result<String, String> {
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
    requirements.sort();
    requirements.dedup();
    Ok(requirements.join(","))
}

/// The canonical label selector of `matchingLabels` (kube-trigger) and `labelSelector` together.
pub fn merge_labels(matching: &BTreeMap<String, String>, selector: Option<&str>) -> Result<String, String> {
    let mut text: Vec<String> = matching.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if let Some(selector) = selector.filter(|s| !s.trim().is_empty()) {
        text.push(selector.to_string());
    }
    canonical_labels(&text.join(","))
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

fn label_requirement(part: &str) -> Result<String, String> {
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        check_key(key)?;
        return Ok(format!("!{key}"));
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
            let mut values: Vec<&str> = inner.split(',').map(str::trim).collect();
            if values.iter().all(|v| v.is_empty()) {
                return Err(format!("{part:?}: `{canonical}` needs at least one value"));
            }
            for value in &values {
                check_value(value)?;
            }
            values.sort_unstable();
            values.dedup();
            return Ok(format!("{key} {canonical} ({})", values.join(",")));
        }
    }
    for (op, canonical) in [("!=", "!="), ("==", "="), ("=", "="), (">", ">"), ("<", "<")] {
        if let Some((key, value)) = part.split_once(op) {
            let (key, value) = (key.trim(), value.trim());
            check_key(key)?;
            if canonical == ">" || canonical == "<" {
                value.parse::<i64>().map_err(|_| format!("{part:?}: `{op}` needs an integer"))?;
            } else {
                check_value(value)?;
            }
            return Ok(format!("{key}{canonical}{value}"));
        }
    }
    check_key(part)?;
    Ok(part.to_string())
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
}
