//! What a joining subscriber is told of the objects that already exist: replays for
//! `replayExisting`, and catch-ups that compare a subscriber's stored index (see `position.rs`)
//! with a list, one list for all the subscribers that wait for one. A first start that neither
//! replays nor keeps objects lists nothing: its index is what the watch knows.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ktrigger_core::Tracked;
use kube::api::ListParams;
use serde_json::Value;

use super::task::{Replay, WatchTask};
use super::{Change, ChangeKind, resource_version, uid_of};
use crate::position::{Checkpoints, Position, Stored, Write};
use crate::selector::ObjectSelector;

/// A subscriber's own index of the watch's objects, kept in the state store.
pub(super) struct Durable {
    pub(super) checkpoints: Checkpoints,
    pub(super) scope: String,
    pub(super) keep_objects: bool,
    /// The index loaded at subscription, until the subscriber has caught up with it.
    pub(super) stored: Option<HashMap<String, Stored>>,
    /// Objects the subscriber knows in another state than the watch does (`None`: not at all),
    /// until the watch reports their next change.
    pub(super) behind: HashMap<String, Option<Stored>>,
    /// Changes are reported to it once it has compared its index with the watch's.
    pub(super) caught_up: bool,
}

impl Durable {
    pub(super) fn new(position: Position, checkpoints: Checkpoints) -> Self {
        Durable {
            checkpoints,
            scope: position.scope,
            keep_objects: position.keep_objects,
            stored: position.stored,
            behind: HashMap::new(),
            caught_up: false,
        }
    }

    /// Queues the index write for `change`, made once `tracked` (its event, if it got one) is
    /// handled.
    pub(super) async fn record(&mut self, tracked: Option<Tracked>, change: &Change) {
        let uid = uid_of(&change.object);
        let write = match change.kind {
            ChangeKind::Create | ChangeKind::Update => Write::Put(uid, Stored::of(&change.object, self.keep_objects)),
            ChangeKind::Delete => Write::Delete(uid),
        };
        self.checkpoints.send(tracked, write).await;
    }

    /// How a change the watch reports looks to a subscriber that knows the object as `view`;
    /// `None` when it has nothing to learn from it.
    pub(super) fn view(change: &Change, view: Option<Stored>, needs_old: bool) -> Option<Change> {
        match (change.kind, view) {
            (ChangeKind::Delete, None) => None,
            (ChangeKind::Create | ChangeKind::Update, Some(known))
                if known.resource_version == resource_version(&change.object) =>
            {
                None
            }
            (ChangeKind::Create | ChangeKind::Update, None) => {
                Some(Change::new(ChangeKind::Create, change.object.clone()))
            }
            (kind, Some(known)) => {
                let kind = if kind == ChangeKind::Delete { kind } else { ChangeKind::Update };
                let mut own = Change::new(kind, change.object.clone());
                own.old_occurrences = Some(known.occurrences);
                own.old_resource_version = Some(known.resource_version.as_str().into());
                if needs_old {
                    own.old = known.object.map(Arc::new);
                }
                Some(own)
            }
        }
    }
}

/// One subscriber's catch-up while its list runs.
struct CatchUp {
    id: u64,
    selector: ObjectSelector,
    replay: bool,
    needs_old: bool,
    keep_objects: bool,
    /// Nothing was stored for this watch: its first start.
    first: bool,
    /// What it stored and the list has not shown yet.
    stored: HashMap<String, Stored>,
    /// The objects listed that it selects.
    listed: HashSet<String>,
}

impl WatchTask {
    /// Brings the subscribers waiting for it up to date with the synced watch (see
    /// [`catch_up_object`](Self::catch_up_object)), all from one list: a single subscriber's list
    /// is selected by the API server (a trigger that selects few objects of a watch shared with
    /// many does not read them all), a shared one lists what the watch watches.
    pub(super) async fn serve_catch_ups(&mut self) {
        let waiting = std::mem::take(&mut self.pending_catch_ups);
        let mut round = Vec::with_capacity(waiting.len());
        for id in waiting {
            if let Some(catch_up) = self.begin_catch_up(id).await {
                round.push(catch_up);
            }
        }
        let mut params = self.list_params();
        match round.as_slice() {
            [] => return,
            [only] => {
                let (labels, fields) = only.selector.for_server();
                if !labels.is_empty() {
                    params = params.labels(&labels);
                }
                if !fields.is_empty() {
                    let all = [params.field_selector.take().unwrap_or_default(), fields];
                    let all: Vec<String> = all.into_iter().filter(|f| !f.is_empty()).collect();
                    params = params.fields(&all.join(","));
                }
            }
            _ => {}
        }
        tracing::debug!(watch = %self.key, subscribers = round.len(), "catching up");
        if let Err(error) = self.catch_up_from_list(params, &mut round).await {
            let reason = format!("cannot list {} to catch up: {error}", self.key.scope());
            for catch_up in &round {
                if let Some(durable) = self.durable(catch_up.id) {
                    durable.checkpoints.fail(reason.clone());
                }
            }
            return;
        }
        for catch_up in round {
            self.finish_catch_up(catch_up).await;
        }
    }

    /// Runs the list `params` asks for through the catch-ups of `round`, page after page.
    async fn catch_up_from_list(&mut self, params: ListParams, round: &mut [CatchUp]) -> Result<(), String> {
        let mut cursor = Some(params);
        while let Some(page) = self.next_page(&mut cursor).await? {
            for object in page.objects() {
                let object = object?;
                let uid = uid_of(&object);
                for catch_up in round.iter_mut() {
                    self.catch_up_object(catch_up, &uid, &object).await;
                }
            }
        }
        Ok(())
    }

    /// Starts the catch-up of subscriber `id`: from then on the watch reports changes to it.
    /// On its first start (nothing stored for this watch) its index is reset.
    async fn begin_catch_up(&mut self, id: u64) -> Option<CatchUp> {
        let member = self.subscribers.iter_mut().find(|m| m.id == id)?;
        let (replay, needs_old) = (member.subscriber.replay_existing, member.subscriber.needs_old);
        let selector = member.subscriber.selector.clone();
        let durable = member.durable.as_mut()?;
        durable.caught_up = true;
        let stored = durable.stored.take();
        let first = stored.is_none();
        if first {
            let scope = durable.scope.clone();
            durable.checkpoints.send(None, Write::Reset(scope)).await;
            if !replay && !durable.keep_objects {
                self.index_what_the_watch_knows(id, &selector).await;
                return None;
            }
        }
        Some(CatchUp {
            id,
            selector,
            replay,
            needs_old,
            keep_objects: durable.keep_objects,
            first,
            stored: stored.unwrap_or_default(),
            listed: HashSet::new(),
        })
    }

    /// The first start of subscriber `id`, which neither replays nor keeps objects: its index is
    /// what the synced watch knows of the objects it selects, with no list of its own. (A list
    /// would hold the watch's events back while it runs and tell it nothing more: objects the
    /// list shows in another state than the watch knows are reported by the watch soon anyway.)
    async fn index_what_the_watch_knows(&mut self, id: u64, selector: &ObjectSelector) {
        let Some(durable) = self.subscribers.iter_mut().find(|m| m.id == id).and_then(|m| m.durable.as_mut()) else {
            return;
        };
        for (uid, known) in &self.known {
            if known.selected_by(selector) {
                durable.checkpoints.send(None, Write::Put(uid.clone(), known.stored())).await;
            }
        }
    }

    /// Compares one listed object with what a catching-up subscriber stored and reports to it
    /// what changed since; on its first start records it instead, or with `replayExisting`
    /// reports it as a create.
    async fn catch_up_object(&mut self, catch_up: &mut CatchUp, uid: &str, object: &Value) {
        let id = catch_up.id;
        let (first, replay) = (catch_up.first, catch_up.replay);
        // Objects it does not select are, to this subscriber, not there (a list selected by the
        // API server is checked here again).
        let selected = catch_up.selector.matches(object);
        if selected {
            catch_up.listed.insert(uid.to_string());
        }
        let own = catch_up.stored.remove(uid);
        let ahead = self.known.get(uid).map(|known| *known.resource_version != *resource_version(object));
        let Some(durable) = self.durable(id) else { return };
        let Some(ahead) = ahead else {
            // Newer than the watch's position: it reports the object soon, seen by the
            // subscriber relative to what it knows.
            if let Some(own) = own {
                durable.behind.insert(uid.to_string(), Some(own));
            }
            return;
        };
        if ahead {
            // The watch reports this change soon; the subscriber sees it relative to what it
            // knows.
            if !first || replay {
                durable.behind.insert(uid.to_string(), own);
            }
            return;
        }
        if first && !replay {
            if selected {
                durable
                    .checkpoints
                    .send(None, Write::Put(uid.to_string(), Stored::of(object, catch_up.keep_objects)))
                    .await;
            }
            return;
        }
        if !selected && own.is_none() {
            return;
        }
        let kind = if selected { ChangeKind::Create } else { ChangeKind::Delete };
        if let Some(change) = Durable::view(&Change::new(kind, object.clone()), own, catch_up.needs_old) {
            self.deliver(change, Some(&[id]), false).await;
        }
    }

    /// Ends the catch-up of a subscriber once the list is done: what it stored and the list did
    /// not show was deleted, or left its selection, while it was not running.
    async fn finish_catch_up(&mut self, catch_up: CatchUp) {
        let CatchUp { id, selector, first, stored, listed, .. } = catch_up;
        if first {
            return;
        }
        // Known to the watch as selected, gone from the list: the watch reports the change that
        // removed it soon, which means nothing to a subscriber that never knew the object. (Those
        // the watch knows as not selected mean nothing to it anyway.)
        let unknown: Vec<String> = self
            .known
            .iter()
            .filter(|(uid, known)| !listed.contains(*uid) && !stored.contains_key(*uid) && known.selected_by(&selector))
            .map(|(uid, _)| uid.clone())
            .collect();
        if let Some(durable) = self.durable(id) {
            durable.behind.extend(unknown.into_iter().map(|uid| (uid, None)));
        }
        // Stored and not listed: deleted, or no longer selected, while the subscriber was not
        // running.
        for (uid, own) in stored {
            if self.known.get(&uid).is_some_and(|known| known.selected_by(&selector)) {
                // Selected as the watch knows it: the watch reports the change that took it away
                // soon, seen by the subscriber relative to what it knows.
                if let Some(durable) = self.durable(id) {
                    durable.behind.insert(uid, Some(own));
                }
                continue;
            }
            if self.durable(id).is_none() {
                return;
            }
            let object = match own.object {
                Some(object) => object,
                None => self.identity_object(&uid, &own.name, own.namespace.as_deref(), &own.resource_version),
            };
            let mut change = Change::new(ChangeKind::Delete, object);
            change.old_occurrences = Some(own.occurrences);
            change.old_resource_version = Some(own.resource_version.into());
            self.deliver(change, Some(&[id]), false).await;
        }
    }

    /// Lists the objects the watch knows and sends them as creates to subscribers waiting for a
    /// replay. Objects the watch has not seen yet are left out: they arrive as creates anyway.
    pub(super) async fn serve_replays(&mut self) {
        if self.pending_replays.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.pending_replays);
        if let Err(error) = self.replay_from_list(&waiting).await {
            tracing::warn!(watch = %self.key, %error, "cannot list existing objects for replayExisting");
            return;
        }
        for member in &mut self.subscribers {
            if waiting.contains(&member.id) {
                member.replay = Replay::Done;
            }
        }
    }

    /// Sends the listed objects the watch knows as creates to the subscribers `waiting`, page
    /// after page.
    async fn replay_from_list(&mut self, waiting: &[u64]) -> Result<(), String> {
        let mut cursor = Some(self.list_params());
        while let Some(page) = self.next_page(&mut cursor).await? {
            for object in page.objects() {
                let object = object?;
                if self.known.contains_key(&uid_of(&object)) {
                    self.dispatch(Change::new(ChangeKind::Create, object), Some(waiting)).await;
                }
            }
        }
        Ok(())
    }
}
