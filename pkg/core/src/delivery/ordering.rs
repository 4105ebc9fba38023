//! Per-key ordering: which deliveries may be sent now, so that two deliveries of one object are
//! never in flight together nor sent out of order, while deliveries of other keys go ahead.

use std::collections::{HashMap, VecDeque};

use serde_json::Value;

use crate::event::{Event, stable_id};

/// Keys longer than this are replaced by a digest, so that a sender cannot make them large.
const MAX_KEY_BYTES: usize = 256;

/// The object an event is about, for `ordering: perObject`: the involved object of a Kubernetes
/// Event (`involvedObject` or `regarding`), else the object itself; by uid, else by
/// namespace/name. `None` when the event names no object: such events are not ordered.
pub fn order_key(event: &Event) -> Option<String> {
    let object = &event.object;
    let subject = ["involvedObject", "regarding"]
        .iter()
        .filter(|_| event.meta.source == "k8s-events")
        .find_map(|field| object.get(*field).filter(|v| v.is_object()));
    let key = match subject {
        Some(involved) => {
            text(involved, "uid").map(str::to_string).or_else(|| named(involved, text(involved, "namespace")))
        }
        None => {
            let metadata = object.get("metadata")?;
            text(metadata, "uid").map(str::to_string).or_else(|| named(metadata, text(metadata, "namespace")))
        }
    }?;
    Some(if key.len() > MAX_KEY_BYTES { stable_id(&["order", &key]) } else { key })
}

fn text<'a>(value: &'a Value, field: &str) -> Option<&'a str> {
    value.get(field).and_then(Value::as_str).filter(|text| !text.is_empty())
}

fn named(value: &Value, namespace: Option<&str>) -> Option<String> {
    let name = text(value, "name")?;
    let kind = text(value, "kind").unwrap_or("");
    Some(format!("{}/{kind}/{name}", namespace.unwrap_or("")))
}

/// Hands out items so that items with the same key leave one at a time and in the order they
/// came; items without a key leave in arrival order with no other constraint.
///
/// An item of a key is *active* from [`take_ready`](Self::take_ready) until [`done`](Self::done) is called
/// for its key; the items behind it wait, holding no slot. Memory is bounded by what is pushed:
/// the caller pushes only what its bounded queue gave it.
#[derive(Debug)]
pub struct KeyedScheduler<T> {
    /// Items that may be sent now, oldest first.
    ready: VecDeque<(Option<String>, T)>,
    /// Keys with an item ready or active, and the items waiting behind it.
    blocked: HashMap<String, VecDeque<T>>,
    waiting: usize,
}

impl<T> Default for KeyedScheduler<T> {
    fn default() -> Self {
        KeyedScheduler { ready: VecDeque::new(), blocked: HashMap::new(), waiting: 0 }
    }
}

impl<T> KeyedScheduler<T> {
    /// Adds an item: ready at once unless an item of its key is ready or active.
    pub fn push(&mut self, key: Option<String>, item: T) {
        if let Some(key) = &key {
            if let Some(behind) = self.blocked.get_mut(key) {
                behind.push_back(item);
                self.waiting = self.waiting.saturating_add(1);
                return;
            }
            self.blocked.insert(key.clone(), VecDeque::new());
        }
        self.ready.push_back((key, item));
    }

    /// The oldest ready item and its key; it is active until [`done`](Self::done).
    pub fn take_ready(&mut self) -> Option<(Option<String>, T)> {
        self.ready.pop_front()
    }

    /// The active item of `key` finished: the next item of that key becomes ready.
    pub fn done(&mut self, key: Option<&str>) {
        let Some(key) = key else { return };
        let Some(behind) = self.blocked.get_mut(key) else { return };
        match behind.pop_front() {
            Some(item) => {
                self.waiting = self.waiting.saturating_sub(1);
                self.ready.push_back((Some(key.to_string()), item));
            }
            None => {
                self.blocked.remove(key);
            }
        }
    }

    /// Items that may be sent now.
    pub fn ready(&self) -> usize {
        self.ready.len()
    }

    /// Whether no item is ready or waiting (active items are the caller's).
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.waiting == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[derive(Debug, Clone)]
    enum Op {
        Push(Option<u8>),
        Start,
        Finish(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => proptest::option::weighted(0.8, 0u8..4).prop_map(Op::Push),
            2 => Just(Op::Start),
            2 => any::<usize>().prop_map(Op::Finish),
        ]
    }

    proptest! {
        /// Whatever the interleaving: one active item per key, each key's items in push order,
        /// and every pushed item handed out once everything finishes.
        #[test]
        fn one_active_item_per_key_in_push_order(ops in proptest::collection::vec(op(), 0..300)) {
            let mut scheduler = KeyedScheduler::default();
            let mut active: Vec<(Option<String>, u32)> = Vec::new();
            let mut sent: Vec<(Option<String>, u32)> = Vec::new();
            let mut pushed = 0u32;
            let mut run = |scheduler: &mut KeyedScheduler<u32>, active: &mut Vec<(Option<String>, u32)>, op: &Op| {
                match op {
                    Op::Push(key) => {
                        scheduler.push(key.map(|k| k.to_string()), pushed);
                        pushed += 1;
                    }
                    Op::Start => {
                        if let Some((key, item)) = scheduler.take_ready() {
                            if key.is_some() {
                                prop_assert!(!active.iter().any(|(k, _)| *k == key), "key {key:?} active twice");
                            }
                            active.push((key.clone(), item));
                            sent.push((key, item));
                        }
                    }
                    Op::Finish(at) => {
                        if !active.is_empty() {
                            let (key, _) = active.remove(at % active.len());
                            scheduler.done(key.as_deref());
                        }
                    }
                }
                Ok(())
            };
            for op in &ops {
                run(&mut scheduler, &mut active, op)?;
            }
            while !active.is_empty() || !scheduler.is_empty() {
                run(&mut scheduler, &mut active, &Op::Start)?;
                run(&mut scheduler, &mut active, &Op::Finish(0))?;
            }
            prop_assert_eq!(sent.len() as u32, pushed);
            for key in 0u8..4 {
                let key = Some(key.to_string());
                let order: Vec<u32> = sent.iter().filter(|(k, _)| *k == key).map(|(_, item)| *item).collect();
                prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "{key:?} reordered: {order:?}");
            }
            prop_assert!(scheduler.blocked.is_empty());
        }

        /// Any JSON object gives a key of bounded length, or none, without panicking.
        #[test]
        fn keys_are_bounded(name in ".{0,600}", uid in proptest::option::of(".{0,600}"), events in any::<bool>()) {
            let object = match &uid {
                Some(uid) => json!({"metadata": {"name": name, "uid": uid}, "involvedObject": {"name": name}}),
                None => json!({"metadata": {"name": name}, "regarding": {"uid": name}}),
            };
            let mut event = Event::new(if events { "k8s-events" } else { "resource-watcher" }, "update", object);
            event.meta.id = "x".into();
            if let Some(key) = order_key(&event) {
                prop_assert!(key.len() <= MAX_KEY_BYTES);
            }
        }
    }

    #[test]
    fn a_busy_key_does_not_hold_back_other_keys() {
        let mut scheduler = KeyedScheduler::default();
        scheduler.push(Some("a".into()), 1);
        scheduler.push(Some("a".into()), 2);
        scheduler.push(Some("b".into()), 3);
        scheduler.push(None, 4);
        assert_eq!(scheduler.take_ready(), Some((Some("a".into()), 1)));
        assert_eq!(scheduler.take_ready(), Some((Some("b".into()), 3)), "b goes ahead of a's second item");
        assert_eq!(scheduler.take_ready(), Some((None, 4)));
        assert_eq!(scheduler.take_ready(), None, "a's second item waits for the first");
        scheduler.done(Some("a"));
        assert_eq!(scheduler.take_ready(), Some((Some("a".into()), 2)));
        scheduler.done(Some("a"));
        scheduler.done(Some("b"));
        assert!(scheduler.is_empty());
    }

    #[test]
    fn kubernetes_events_are_keyed_by_their_involved_object() {
        let object = json!({"metadata": {"uid": "event-uid"}, "involvedObject": {"uid": "pod-uid", "name": "p"}});
        let event = Event::new("k8s-events", "create", object.clone());
        assert_eq!(order_key(&event).as_deref(), Some("pod-uid"));
        let modern = json!({"metadata": {"uid": "e"}, "regarding": {"kind": "Pod", "namespace": "n", "name": "p"}});
        assert_eq!(order_key(&Event::new("k8s-events", "create", modern)).as_deref(), Some("n/Pod/p"));
        assert_eq!(order_key(&Event::new("resource-watcher", "update", object)).as_deref(), Some("event-uid"));
        let named = json!({"metadata": {"namespace": "n", "name": "cm"}});
        assert_eq!(order_key(&Event::new("webhook", "receive", named)).as_deref(), Some("n//cm"));
        assert_eq!(order_key(&Event::new("webhook", "receive", json!({"a": 1}))), None);
    }
}
