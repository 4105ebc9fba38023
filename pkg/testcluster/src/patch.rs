//! Strategic merge patches, approximated without schemas.
//!
//! The API server knows each list's patch strategy from the Go types. Here a list of objects is
//! merged element by element when every patch element carries one of the usual merge keys
//! (`name`, `containerPort`, `port`, `mountPath`, `devicePath`, `ip`, `uid`, `type`); any other
//! list is replaced, as in a JSON merge patch. The `$patch` (`replace`, `delete`),
//! `$setElementOrder/<list>`, `$deleteFromPrimitiveList/<list>` and `$retainKeys` directives are
//! honoured.

use serde_json::{Map, Value};

/// Merge keys, most specific first.
const MERGE_KEYS: [&str; 8] = ["name", "containerPort", "port", "mountPath", "devicePath", "ip", "uid", "type"];

/// Removes every directive key (`$...`) from a value that is inserted as a whole.
fn strip_directives(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|k, _| !k.starts_with('$'));
            map.values_mut().for_each(strip_directives);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

fn stripped(value: &Value) -> Value {
    let mut value = value.clone();
    strip_directives(&mut value);
    value
}

fn directive(value: &Value) -> Option<&str> {
    value.get("$patch").and_then(Value::as_str)
}

/// The merge key shared by every element of a patch list, if the list is one of objects.
fn merge_key(items: &[Value]) -> Option<&'static str> {
    if items.is_empty() || !items.iter().all(Value::is_object) {
        return None;
    }
    MERGE_KEYS.into_iter().find(|key| items.iter().all(|item| item.get(*key).is_some()))
}

fn merge_list(current: &mut Vec<Value>, items: &[Value], key: &str) {
    for item in items {
        let id = item.get(key);
        if directive(item) == Some("delete") {
            current.retain(|c| c.get(key) != id);
        } else if let Some(existing) = current.iter_mut().find(|c| c.get(key) == id) {
            apply(existing, item);
        } else {
            current.push(stripped(item));
        }
    }
}

/// Orders `list` like `order` (by merge key); elements not named in `order` keep their place after them.
fn set_order(list: &mut [Value], order: &[Value]) {
    let Some(key) = merge_key(order) else { return };
    let position = |item: &Value| order.iter().position(|o| o.get(key) == item.get(key)).unwrap_or(order.len());
    list.sort_by_key(position);
}

/// Applies a strategic merge patch to `target`.
pub(crate) fn apply(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if directive(patch) == Some("replace") || !target.is_object() {
        *target = stripped(patch);
        return;
    }
    if directive(patch) == Some("delete") {
        *target = Value::Object(Map::new());
        return;
    }
    let map = target.as_object_mut().expect("checked above");
    for (key, value) in patch_map.iter().filter(|(k, _)| !k.starts_with('$')) {
        if value.is_null() {
            map.remove(key);
            continue;
        }
        match (map.get_mut(key), value) {
            (Some(Value::Array(current)), Value::Array(items)) => match merge_key(items) {
                Some(merge) => merge_list(current, items, merge),
                None => *current = items.iter().map(stripped).collect(),
            },
            (Some(existing @ Value::Object(_)), Value::Object(_)) => apply(existing, value),
            _ => {
                map.insert(key.clone(), stripped(value));
            }
        }
    }
    for (key, value) in patch_map {
        if let Some(list) = key.strip_prefix("$setElementOrder/")
            && let (Some(Value::Array(current)), Value::Array(order)) = (map.get_mut(list), value)
        {
            set_order(current, order);
        } else if let Some(list) = key.strip_prefix("$deleteFromPrimitiveList/")
            && let (Some(Value::Array(current)), Value::Array(doomed)) = (map.get_mut(list), value)
        {
            current.retain(|item| !doomed.contains(item));
        } else if key == "$retainKeys"
            && let Value::Array(keep) = value
        {
            map.retain(|k, _| keep.iter().any(|kept| kept.as_str() == Some(k)));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn patched(mut target: Value, patch: Value) -> Value {
        apply(&mut target, &patch);
        target
    }

    #[test]
    fn lists_with_merge_keys_are_merged_element_by_element() {
        let deployment = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "app:1", "ports": [{"containerPort": 80}]},
            {"name": "sidecar", "image": "side:1"},
        ]}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}],
            "containers": [{"name": "app", "image": "app:2"}],
        }}}});
        assert_eq!(
            patched(deployment, patch),
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "sidecar", "image": "side:1"},
                {"name": "app", "image": "app:2", "ports": [{"containerPort": 80}]},
            ]}}}})
        );
    }

    #[test]
    fn directives_delete_replace_and_retain() {
        let target = json!({"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                            "finalizers": ["x", "y"], "args": ["a", "b"], "m": {"k": 1, "j": 2}});
        let patch = json!({
            "env": [{"name": "A", "$patch": "delete"}, {"name": "C", "value": "3"}],
            "$deleteFromPrimitiveList/finalizers": ["x"],
            "args": ["c"],
            "m": {"$patch": "replace", "z": 0},
        });
        assert_eq!(
            patched(target, patch),
            json!({"env": [{"name": "B", "value": "2"}, {"name": "C", "value": "3"}],
                   "finalizers": ["y"], "args": ["c"], "m": {"z": 0}})
        );
        assert_eq!(
            patched(json!({"a": 1, "b": 2}), json!({"$retainKeys": ["a", "c"], "c": 3})),
            json!({"a": 1, "c": 3})
        );
    }

    #[test]
    fn plain_values_and_nulls_behave_like_a_merge_patch() {
        let patch = json!({"data": {"a": null, "b": "2"}, "new": {"$patch": "merge", "x": 1}});
        assert_eq!(patched(json!({"data": {"a": "1"}}), patch), json!({"data": {"b": "2"}, "new": {"x": 1}}));
    }
}
