//! Fan-out: one change of a watch to the subscribers that select the object and want the
//! change, each distinct event built once and shared.

use std::sync::{Arc, LazyLock};

use ktrigger_core::{Event, SharedEvent};
use serde_json::Value;

use super::catch_up::Durable;
use super::task::WatchTask;
use super::{Change, ChangeKind, EventShape, uid_of};
use crate::selector::{ObjectSelector, StoredLabels, labels_of};

impl WatchTask {
    /// Sends one change to every subscriber that selects the object and wants the change (or
    /// only to `only`), building each distinct event once. Subscribers with an index see it
    /// relative to what they know, and record it there once they have handled it.
    pub(super) async fn dispatch(&mut self, change: Change, only: Option<&[u64]>) {
        self.deliver(change, only, true).await;
    }

    /// [`dispatch`](Self::dispatch), with the subscribers' selectors applied when `select` (not
    /// to the changes of a catch-up, which are already made relative to what the subscriber knows).
    pub(super) async fn deliver(&mut self, change: Change, only: Option<&[u64]>, select: bool) {
        let uid = uid_of(&change.object);
        let mut built: Vec<(EventShape, SharedEvent)> = Vec::new();
        let mut closed = Vec::new();
        // The change as a create, for subscribers it moved the object into, and as a delete, for
        // those it moved it out of: made at most once each, and only when needed.
        let (mut entered, mut left): (Option<Change>, Option<Change>) = (None, None);
        for member in &mut self.subscribers {
            if only.is_some_and(|ids| !ids.contains(&member.id)) {
                continue;
            }
            let behind = match &mut member.durable {
                Some(durable) if !durable.caught_up => continue,
                Some(durable) => durable.behind.remove(&uid),
                None => None,
            };
            let selector = &member.subscriber.selector;
            let base: &Change = if !select || selector.selects_all() {
                &change
            } else {
                let now = change.kind != ChangeKind::Delete && selector.matches(&change.object);
                // A subscriber behind the watch knows the object as its index says.
                let before = match &behind {
                    Some(view) => view.is_some(),
                    None => was_selected(selector, &change),
                };
                match (before, now) {
                    (false, false) => continue,
                    (true, true) => &change,
                    (_, true) if change.kind == ChangeKind::Create || behind.is_some() => &change,
                    (_, true) => entered.get_or_insert_with(|| change.moved_in()),
                    (_, false) if change.kind == ChangeKind::Delete => &change,
                    (_, false) => left.get_or_insert_with(|| change.moved_out()),
                }
            };
            let own = match behind {
                Some(view) => match Durable::view(base, view, member.subscriber.needs_old) {
                    Some(own) => Some(own),
                    None => continue,
                },
                None => None,
            };
            let seen = own.as_ref().unwrap_or(base);
            let event = match member.subscriber.interest.shape(seen) {
                None => None,
                Some(shape) if own.is_some() => Some(Arc::new(build_event(&shape, seen))),
                Some(shape) => Some(match built.iter().find(|(s, _)| *s == shape) {
                    Some((_, event)) => event.clone(),
                    None => {
                        let event = Arc::new(build_event(&shape, seen));
                        built.push((shape, event.clone()));
                        event
                    }
                }),
            };
            let sink = &member.subscriber.sink;
            match (&mut member.durable, event) {
                (None, None) => {}
                (None, Some(event)) => {
                    if !sink.send_shared(event).await {
                        closed.push(member.id);
                    }
                }
                (Some(durable), event) => {
                    let tracked = match event {
                        None => None,
                        Some(event) => match sink.send_tracked(event).await {
                            Some(tracked) => Some(tracked),
                            None => {
                                closed.push(member.id);
                                continue;
                            }
                        },
                    };
                    durable.record(tracked, seen).await;
                }
            }
        }
        if !closed.is_empty() {
            self.subscribers.retain(|m| !closed.contains(&m.id));
        }
    }

    /// The index of subscriber `id`, when it keeps one.
    pub(super) fn durable(&mut self, id: u64) -> Option<&mut Durable> {
        self.subscribers.iter_mut().find(|m| m.id == id)?.durable.as_mut()
    }
}

/// The labels of an object without any.
pub(super) static NO_LABELS: LazyLock<StoredLabels> = LazyLock::new(StoredLabels::default);

/// Whether the object was selected before `change`, by its previous labels.
fn was_selected(selector: &ObjectSelector, change: &Change) -> bool {
    let metadata = &change.object["metadata"];
    let (name, namespace) =
        (metadata["name"].as_str().unwrap_or_default(), metadata["namespace"].as_str().unwrap_or_default());
    match (change.kind, &change.old_labels) {
        (ChangeKind::Create, _) => false,
        (_, Some(labels)) => selector.matches_parts(&**labels, name, namespace),
        (ChangeKind::Update, None) => selector.matches_parts(labels_of(&Value::Null), name, namespace),
        (ChangeKind::Delete, None) => selector.matches_parts(labels_of(&change.object), name, namespace),
    }
}

fn build_event(shape: &EventShape, change: &Change) -> Event {
    let object = if shape.derived {
        change.derived.get().cloned().unwrap_or_else(|| change.object.clone())
    } else {
        change.object.clone()
    };
    let mut event = Event::new(shape.source, shape.event_type, object).with_id(shape.id.clone());
    if change.kind == ChangeKind::Update {
        event.old_object = change.old.as_deref().cloned();
    }
    event.meta.preset = shape.preset.as_deref().map(str::to_string);
    if let Some(annotation) = &shape.annotation {
        annotation.apply(&mut event.meta);
    }
    if let Some(time) = shape.time {
        event.meta.time = time;
    }
    event
}
