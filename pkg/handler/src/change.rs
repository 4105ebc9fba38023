//! What the queue holds for a key: the change a handler has not seen yet, and how two changes of
//! the same object waiting at once become one.

use std::sync::Arc;

use serde_json::Value;

/// One change of one object, as a handler is told about it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change {
    /// The object appeared (or existed when the loop started).
    Add(Arc<Value>),
    /// The object changed; `old` is its state the handler last saw, when known.
    Update {
        /// The previous state, when the watch kept it.
        old: Option<Arc<Value>>,
        /// The new state.
        new: Arc<Value>,
    },
    /// The object was deleted; its last known state.
    Delete(Arc<Value>),
}

impl Change {
    /// The change a handler sees for `earlier` followed by `later` when it saw neither: the
    /// latest state wins, an add stays an add, and an update keeps the oldest previous state.
    pub(crate) fn merge(earlier: Change, later: Change) -> Change {
        match (earlier, later) {
            (Change::Add(_), Change::Update { new, .. }) => Change::Add(new),
            (Change::Update { old, .. }, Change::Update { new, .. }) => Change::Update { old, new },
            (_, later) => later,
        }
    }

    /// `add`, `update` or `delete`, for logs.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Change::Add(_) => "add",
            Change::Update { .. } => "update",
            Change::Delete(_) => "delete",
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn v(n: u64) -> Arc<Value> {
        Arc::new(json!({ "n": n }))
    }

    #[test]
    fn an_add_followed_by_updates_stays_an_add_of_the_latest_state() {
        let merged = Change::merge(Change::Add(v(1)), Change::Update { old: Some(v(1)), new: v(2) });
        assert_eq!(merged, Change::Add(v(2)));
    }

    #[test]
    fn updates_keep_the_oldest_previous_state_and_the_newest_state() {
        let first = Change::Update { old: Some(v(1)), new: v(2) };
        let second = Change::Update { old: Some(v(2)), new: v(3) };
        assert_eq!(Change::merge(first, second), Change::Update { old: Some(v(1)), new: v(3) });
    }

    #[test]
    fn a_delete_wins_over_what_came_before() {
        assert_eq!(Change::merge(Change::Add(v(1)), Change::Delete(v(1))), Change::Delete(v(1)));
        let update = Change::Update { old: None, new: v(2) };
        assert_eq!(Change::merge(update, Change::Delete(v(2))), Change::Delete(v(2)));
    }

    #[test]
    fn an_object_created_again_after_a_delete_is_an_add() {
        assert_eq!(Change::merge(Change::Delete(v(1)), Change::Add(v(2))), Change::Add(v(2)));
    }
}
