//! The object store: JSON objects per resource, a global resourceVersion counter and a bounded
//! log of changes that watches replay from.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::registry::{CRD_GROUP, CRD_PLURAL, Registry, ResourceDef, crd_resource, crd_status};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;

/// The type of a change, as named in watch events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One committed change of one object.
#[derive(Debug)]
pub(crate) struct Change {
    pub rv: u64,
    pub group: String,
    pub plural: String,
    pub kind: ChangeType,
    pub object: Value,
    /// The object before a modification or a deletion.
    pub prev: Option<Value>,
}

/// Which objects a list, watch or deletecollection is about.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    /// Whether the object is in the namespace and matches both selectors.
    pub fn matches(&self, object: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && object.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default() != ns
        {
            return false;
        }
        self.labels.matches(object) && self.fields.matches(object)
    }
}

/// Preconditions of a delete.
#[derive(Clone, Debug, Default)]
pub(crate) struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// How an update writes: the whole object or only its status, for real or as a dry run.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WriteMode {
    pub status_only: bool,
    pub dry_run: bool,
}

/// One page of a list.
pub(crate) struct Page {
    pub items: Vec<Value>,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
    /// The resourceVersion the whole list is as of.
    pub resource_version: u64,
}

type Objects<T = Value> = BTreeMap<(String, String), T>;

/// Where the next page of a list starts: the list's resourceVersion and the last key served.
struct ContinueToken;

impl ContinueToken {
    fn encode(rv: u64, (namespace, name): &(String, String)) -> String {
        hex::encode(format!("{rv}\0{namespace}\0{name}"))
    }

    /// The resourceVersion and key of `token`, which cannot be newer than `newest`.
    fn decode(token: &str, newest: u64) -> Result<(u64, (String, String)), ApiError> {
        let invalid = || ApiError::bad_request("continue key is not valid");
        let text = String::from_utf8(hex::decode(token).map_err(|_| invalid())?).map_err(|_| invalid())?;
        let mut parts = text.splitn(3, '\0');
        let (Some(rv), Some(namespace), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid());
        };
        let rv: u64 = rv.parse().ok().filter(|rv| *rv <= newest).ok_or_else(invalid)?;
        Ok((rv, (namespace.to_string(), name.to_string())))
    }
}

/// All objects and their history.
pub(crate) struct Store {
    rv: u64,
    pub registry: Registry,
    objects: HashMap<(String, String), Objects>,
    log: VecDeque<Arc<Change>>,
    capacity: usize,
    /// The newest resourceVersion dropped from the log: watches from before it get 410 Gone.
    floor: u64,
    changes: broadcast::Sender<Arc<Change>>,
}

/// The current time as the API server writes it.
pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    let root = object.as_object_mut().expect("objects are JSON objects");
    let meta = root.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut().expect("metadata is an object")
}

/// The name generated for `generateName`: the prefix and five random characters.
fn generated_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let random = uuid::Uuid::new_v4();
    let suffix: String =
        random.as_bytes()[..5].iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect();
    format!("{prefix}{suffix}")
}

/// The parts of an object that make up its spec: everything but metadata and status.
fn spec_part(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        for key in ["metadata", "status", "apiVersion", "kind"] {
            map.remove(key);
        }
    }
    copy
}

fn has_finalizers(object: &Value) -> bool {
    object.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty())
}

impl Store {
    /// An empty store whose change log keeps `capacity` changes.
    pub fn new(capacity: usize) -> Self {
        let mut store = Store {
            rv: 0,
            registry: Registry::builtin(),
            objects: HashMap::new(),
            log: VecDeque::new(),
            capacity: capacity.max(1),
            floor: 0,
            changes: broadcast::channel(4096).0,
        };
        let namespaces = store.registry.find("", "v1", "namespaces").cloned().expect("namespaces are built in");
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            store
                .create(&namespaces, "v1", None, json!({"metadata": {"name": ns}}), false)
                .expect("a fresh store accepts the initial namespaces");
        }
        store
    }

    /// The newest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// A receiver of every change committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// The logged changes after `rv`, or 410 Gone when some of them were dropped from the log.
    pub fn changes_since(&self, rv: u64) -> Result<Vec<Arc<Change>>, ApiError> {
        if rv < self.floor {
            return Err(ApiError::gone(rv, self.floor + 1));
        }
        Ok(self.log.iter().filter(|c| c.rv > rv).cloned().collect())
    }

    fn bucket(&self, def: &ResourceDef) -> Option<&Objects> {
        self.objects.get(&(def.group.clone(), def.plural.clone()))
    }

    fn key(def: &ResourceDef, namespace: Option<&str>, name: &str) -> (String, String) {
        let ns = if def.namespaced { namespace.unwrap_or_default() } else { "" };
        (ns.to_string(), name.to_string())
    }

    /// The stored objects of a resource that match `filter`, in key order.
    pub fn matching<'a>(&'a self, def: &ResourceDef, filter: &'a Filter) -> impl Iterator<Item = &'a Value> + 'a {
        self.bucket(def).into_iter().flat_map(|b| b.values()).filter(move |o| filter.matches(o))
    }

    /// One page of the objects matching `filter` as they were at one resourceVersion: the newest
    /// for a first page, the first page's for the pages after it (their continue token carries
    /// it), as the API server serves every page of a list from one snapshot. A token older than
    /// the change log answers 410 Expired, as the API server does once it has compacted.
    pub fn list(
        &self,
        def: &ResourceDef,
        filter: &Filter,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<Page, ApiError> {
        let (rv, start) = match continue_token.filter(|t| !t.is_empty()) {
            None => (self.rv, Bound::Unbounded),
            Some(token) => {
                let (rv, after) = ContinueToken::decode(token, self.rv)?;
                (rv, Bound::Excluded(after))
            }
        };
        if rv < self.floor {
            return Err(ApiError::continue_expired());
        }
        let snapshot = self.snapshot(def, rv, start);
        let mut matching = snapshot.into_iter().filter(|(_, o)| filter.matches(o));
        let limit = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut last = None;
        for (key, object) in matching.by_ref() {
            items.push(object.clone());
            last = Some(key);
            if items.len() == limit {
                break;
            }
        }
        let remaining = matching.count();
        let continue_token = if remaining > 0 { last.map(|key| ContinueToken::encode(rv, &key)) } else { None };
        Ok(Page { items, continue_token, remaining: (remaining > 0).then_some(remaining), resource_version: rv })
    }

    /// The objects of `def` after `start` as they were at `rv`: the stored ones, with the changes
    /// logged since undone (an object changed since was as its first change since found it).
    fn snapshot(&self, def: &ResourceDef, rv: u64, start: Bound<(String, String)>) -> Objects<&Value> {
        let mut changed: Objects<Option<&Value>> = BTreeMap::new();
        for change in self.log.iter().filter(|c| c.rv > rv && c.group == def.group && c.plural == def.plural) {
            let name = meta_str(&change.object, "name").unwrap_or_default();
            let key = Self::key(def, meta_str(&change.object, "namespace"), name);
            changed.entry(key).or_insert(change.prev.as_ref());
        }
        let range = (start, Bound::Unbounded);
        let mut snapshot: Objects<&Value> = BTreeMap::new();
        if let Some(bucket) = self.bucket(def) {
            let unchanged = bucket.range(range.clone()).filter(|(key, _)| !changed.contains_key(*key));
            snapshot.extend(unchanged.map(|(key, object)| (key.clone(), object)));
        }
        for (key, before) in changed.range(range) {
            if let Some(object) = before {
                snapshot.insert(key.clone(), object);
            }
        }
        snapshot
    }

    /// The stored object, or 404.
    pub fn get(&self, def: &ResourceDef, namespace: Option<&str>, name: &str) -> Result<Value, ApiError> {
        self.bucket(def)
            .and_then(|b| b.get(&Self::key(def, namespace, name)))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))
    }

    /// Stores a change: bumps the resourceVersion, logs it and tells the watches.
    fn commit(&mut self, def: &ResourceDef, kind: ChangeType, mut object: Value, prev: Option<Value>) -> Value {
        let prev = if kind == ChangeType::Deleted { Some(object.clone()) } else { prev };
        self.rv += 1;
        metadata_mut(&mut object).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let name = meta_str(&object, "name").unwrap_or_default().to_string();
        let key = Self::key(def, meta_str(&object, "namespace"), &name);
        let bucket = self.objects.entry((def.group.clone(), def.plural.clone())).or_default();
        if kind == ChangeType::Deleted {
            bucket.remove(&key);
        } else {
            bucket.insert(key, object.clone());
        }
        let change = Arc::new(Change {
            rv: self.rv,
            group: def.group.clone(),
            plural: def.plural.clone(),
            kind,
            object: object.clone(),
            prev,
        });
        self.log.push_back(change.clone());
        while self.log.len() > self.capacity {
            if let Some(dropped) = self.log.pop_front() {
                self.floor = dropped.rv;
            }
        }
        let _ = self.changes.send(change);
        object
    }

    /// Server-side normalisation shared by create and update.
    fn normalize(def: &ResourceDef, version: &str, object: &mut Value) {
        let map = object.as_object_mut().expect("objects are JSON objects");
        map.insert("apiVersion".into(), json!(def.api_version(version)));
        map.insert("kind".into(), json!(def.kind));
        if def.group.is_empty()
            && def.plural == "secrets"
            && let Some(Value::Object(string_data)) = map.remove("stringData")
        {
            let data = map.entry("data").or_insert_with(|| json!({}));
            if let Some(data) = data.as_object_mut() {
                for (k, v) in string_data {
                    let text = v.as_str().unwrap_or_default();
                    data.insert(k, json!(base64::engine::general_purpose::STANDARD.encode(text)));
                }
            }
        }
        metadata_mut(object).remove("selfLink");
    }

    /// Creates an object in `namespace` (ignored for cluster-scoped resources).
    pub fn create(
        &mut self,
        def: &ResourceDef,
        version: &str,
        namespace: Option<&str>,
        mut object: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request("the body of the request must be a JSON object"));
        }
        let body_ns = meta_str(&object, "namespace").filter(|ns| !ns.is_empty()).map(str::to_string);
        let namespace = if def.namespaced {
            match (namespace, body_ns) {
                (Some(path), Some(body)) if path != body => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                (Some(path), _) => Some(path.to_string()),
                (None, Some(body)) => Some(body),
                (None, None) => return Err(ApiError::bad_request("a namespace is required to create this object")),
            }
        } else {
            None
        };
        let mut name = meta_str(&object, "name").unwrap_or_default().to_string();
        if name.is_empty() {
            match meta_str(&object, "generateName").filter(|p| !p.is_empty()) {
                Some(prefix) => name = generated_name(prefix),
                None => {
                    return Err(ApiError::invalid(
                        &def.group,
                        &def.kind,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            }
        }
        if name.contains('/') || name.contains('%') {
            return Err(ApiError::invalid(
                &def.group,
                &def.kind,
                &name,
                "metadata.name: Invalid value: may not contain '/' or '%'",
            ));
        }
        if self.get(def, namespace.as_deref(), &name).is_ok() {
            return Err(ApiError::already_exists(&def.group, &def.plural, &name));
        }
        Self::normalize(def, version, &mut object);
        let created = now();
        {
            let meta = metadata_mut(&mut object);
            meta.insert("name".into(), json!(name));
            match &namespace {
                Some(ns) => meta.insert("namespace".into(), json!(ns)),
                None => meta.remove("namespace"),
            };
            meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            meta.insert("creationTimestamp".into(), json!(created));
            meta.insert("generation".into(), json!(1));
            meta.remove("resourceVersion");
            meta.remove("deletionTimestamp");
            meta.remove("deletionGracePeriodSeconds");
        }
        if def.has_status(version) {
            object.as_object_mut().expect("object").remove("status");
        }
        Self::admit(def, version, &mut object, None)?;
        let crd = self.crd_hook(def, &mut object, &created)?;
        if def.group.is_empty() && def.plural == "namespaces" {
            object["status"] = json!({"phase": "Active"});
        }
        if dry_run {
            return Ok(object);
        }
        let stored = self.commit(def, ChangeType::Added, object, None);
        if let Some(crd) = crd {
            self.registry.register_crd(crd);
        }
        Ok(stored)
    }

    /// Applies what the CRD's schema of `version` enforces (nothing for built-in resources) to an
    /// object about to be stored; `old` is the stored object on updates.
    fn admit(def: &ResourceDef, version: &str, object: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
        let Some(schema) = def.version(version).and_then(|v| v.schema.as_deref()) else { return Ok(()) };
        schema.admit(object, old).map_err(|errors| {
            ApiError::invalid_fields(&def.group, &def.kind, meta_str(object, "name").unwrap_or_default(), &errors)
        })
    }

    /// For CRDs: validates the object, fills in its status and returns the resource it defines.
    fn crd_hook(&self, def: &ResourceDef, object: &mut Value, now: &str) -> Result<Option<ResourceDef>, ApiError> {
        if def.group != CRD_GROUP || def.plural != CRD_PLURAL {
            return Ok(None);
        }
        let resource = crd_resource(object)?;
        if let Some(existing) = self.registry.find_any(&resource.group, &resource.plural)
            && existing.crd != resource.crd
        {
            return Err(ApiError::invalid(
                CRD_GROUP,
                "CustomResourceDefinition",
                resource.crd.as_deref().unwrap_or_default(),
                "spec.names.plural: the resource is already served",
            ));
        }
        object["status"] = crd_status(object, &resource, now);
        Ok(Some(resource))
    }

    /// Replaces an object (or only its status when `status_only`), checking its resourceVersion.
    pub fn update(
        &mut self,
        def: &ResourceDef,
        version: &str,
        namespace: Option<&str>,
        name: &str,
        mut object: Value,
        mode: WriteMode,
    ) -> Result<Value, ApiError> {
        let WriteMode { status_only, dry_run } = mode;
        let old = self.get(def, namespace, name)?;
        if !object.is_object() {
            return Err(ApiError::bad_request("the body of the request must be a JSON object"));
        }
        let old_rv = meta_str(&old, "resourceVersion").unwrap_or_default();
        if let Some(rv) = meta_str(&object, "resourceVersion").filter(|rv| !rv.is_empty())
            && rv != old_rv
        {
            return Err(ApiError::conflict(&def.group, &def.plural, name));
        }
        if let Some(body_name) = meta_str(&object, "name").filter(|n| !n.is_empty())
            && body_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if def.namespaced
            && let Some(body_ns) = meta_str(&object, "namespace").filter(|n| !n.is_empty())
            && Some(body_ns) != namespace
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let mut new = if status_only {
            let mut new = old.clone();
            match object.get("status") {
                Some(status) => new["status"] = status.clone(),
                None => {
                    new.as_object_mut().expect("object").remove("status");
                }
            }
            new
        } else {
            if def.has_status(version) {
                let map = object.as_object_mut().expect("object");
                match old.get("status") {
                    Some(status) => map.insert("status".into(), status.clone()),
                    None => map.remove("status"),
                };
            }
            let old_meta = old.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
            let meta = metadata_mut(&mut object);
            for key in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                match old_meta.get(key) {
                    Some(v) => meta.insert(key.into(), v.clone()),
                    None => meta.remove(key),
                };
            }
            object
        };
        Self::normalize(def, version, &mut new);
        Self::admit(def, version, &mut new, Some(&old))?;
        metadata_mut(&mut new).insert("resourceVersion".into(), json!(old_rv));
        if !status_only && spec_part(&new) != spec_part(&old) {
            let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0) + 1;
            metadata_mut(&mut new).insert("generation".into(), json!(generation));
        }
        let crd = if status_only { None } else { self.crd_hook(def, &mut new, &now())? };
        let mut old_same_version = old.clone();
        old_same_version["apiVersion"] = json!(def.api_version(version));
        if new == old_same_version {
            return Ok(old);
        }
        if dry_run {
            return Ok(new);
        }
        if new.pointer("/metadata/deletionTimestamp").is_some() && !has_finalizers(&new) {
            return Ok(self.remove(def, new));
        }
        let stored = self.commit(def, ChangeType::Modified, new, Some(old));
        if let Some(crd) = crd {
            self.registry.register_crd(crd);
        }
        Ok(stored)
    }

    /// Deletes an object; one with finalizers only gets its deletionTimestamp set.
    pub fn delete(
        &mut self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        preconditions: &Preconditions,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let old = self.get(def, namespace, name)?;
        let mismatch = |expected: &Option<String>, field: &str| {
            expected.as_deref().is_some_and(|e| !e.is_empty() && Some(e) != meta_str(&old, field))
        };
        if mismatch(&preconditions.uid, "uid") || mismatch(&preconditions.resource_version, "resourceVersion") {
            return Err(ApiError::conflict(&def.group, &def.plural, name));
        }
        if dry_run {
            return Ok(old);
        }
        if has_finalizers(&old) {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(old);
            }
            let mut marked = old.clone();
            let meta = metadata_mut(&mut marked);
            meta.insert("deletionTimestamp".into(), json!(now()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            return Ok(self.commit(def, ChangeType::Modified, marked, Some(old)));
        }
        Ok(self.remove(def, old))
    }

    /// Removes an object for good, with what depends on it: a namespace's objects, a CRD's resource.
    fn remove(&mut self, def: &ResourceDef, object: Value) -> Value {
        let deleted = self.commit(def, ChangeType::Deleted, object, None);
        let name = meta_str(&deleted, "name").unwrap_or_default().to_string();
        if def.group.is_empty() && def.plural == "namespaces" {
            let mut doomed = Vec::new();
            for ((group, plural), bucket) in &self.objects {
                for ((ns, _), object) in bucket {
                    if *ns == name {
                        doomed.push((group.clone(), plural.clone(), object.clone()));
                    }
                }
            }
            for (group, plural, object) in doomed {
                if let Some(def) = self.registry.find_any(&group, &plural).cloned() {
                    self.commit(&def, ChangeType::Deleted, object, None);
                }
            }
        } else if def.group == CRD_GROUP
            && def.plural == CRD_PLURAL
            && let Some(resource) = self.registry.unregister_crd(&name)
        {
            let objects: Vec<Value> = self.bucket(&resource).map(|b| b.values().cloned().collect()).unwrap_or_default();
            for object in objects {
                self.commit(&resource, ChangeType::Deleted, object, None);
            }
            self.objects.remove(&(resource.group, resource.plural));
        }
        deleted
    }
}

/// The `PartialObjectMetadata` form of an object, for clients that ask for metadata only.
pub(crate) fn partial_metadata(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configmaps(store: &Store) -> ResourceDef {
        store.registry.find("", "v1", "configmaps").cloned().unwrap()
    }

    #[test]
    fn changes_older_than_the_log_are_gone() {
        let mut store = Store::new(3);
        let cm = configmaps(&store);
        let start = store.resource_version();
        for i in 0..5 {
            store.create(&cm, "v1", Some("default"), json!({"metadata": {"name": format!("c{i}")}}), false).unwrap();
        }
        assert_eq!(store.changes_since(start).unwrap_err().code, 410);
        let recent = store.changes_since(store.resource_version() - 3).unwrap();
        assert_eq!(recent.len(), 3);
        assert!(store.changes_since(store.resource_version() - 4).is_err());
    }

    #[test]
    fn the_pages_of_a_list_show_one_resource_version() {
        let mut store = Store::new(100);
        let cm = configmaps(&store);
        let filter = Filter { namespace: Some("default".into()), ..Filter::default() };
        for name in ["a", "b", "c", "d"] {
            let object = json!({"metadata": {"name": name}, "data": {"v": "1"}});
            store.create(&cm, "v1", Some("default"), object, false).unwrap();
        }
        let first = store.list(&cm, &filter, Some(2), None).unwrap();
        let names = |page: &Page| -> Vec<String> {
            page.items.iter().map(|o| meta_str(o, "name").unwrap_or_default().to_string()).collect()
        };
        assert_eq!(names(&first), ["a", "b"]);
        // Changes after the first page: c modified, d deleted, e created, a deleted.
        let mut c = store.get(&cm, Some("default"), "c").unwrap();
        c["data"]["v"] = json!("2");
        store.update(&cm, "v1", Some("default"), "c", c, WriteMode::default()).unwrap();
        for name in ["d", "a"] {
            store.delete(&cm, Some("default"), name, &Preconditions::default(), false).unwrap();
        }
        store.create(&cm, "v1", Some("default"), json!({"metadata": {"name": "e"}}), false).unwrap();
        let second = store.list(&cm, &filter, Some(2), first.continue_token.as_deref()).unwrap();
        assert_eq!(names(&second), ["c", "d"], "as of the first page");
        assert_eq!(second.items[0]["data"]["v"], "1");
        assert_eq!(second.resource_version, first.resource_version);
        assert!(second.continue_token.is_none());
        let fresh = store.list(&cm, &filter, None, None).unwrap();
        assert_eq!(names(&fresh), ["b", "c", "e"]);
        assert_eq!(fresh.items[1]["data"]["v"], "2");
    }

    #[test]
    fn a_continue_token_older_than_the_log_is_expired() {
        let mut store = Store::new(2);
        let cm = configmaps(&store);
        let filter = Filter::default();
        for name in ["a", "b"] {
            store.create(&cm, "v1", Some("default"), json!({"metadata": {"name": name}}), false).unwrap();
        }
        let first = store.list(&cm, &filter, Some(1), None).unwrap();
        for name in ["c", "d", "e"] {
            store.create(&cm, "v1", Some("default"), json!({"metadata": {"name": name}}), false).unwrap();
        }
        let expired = store.list(&cm, &filter, Some(1), first.continue_token.as_deref()).err().unwrap();
        assert_eq!((expired.code, expired.reason), (410, "Expired"));
        let forged = ContinueToken::encode(store.resource_version() + 1, &("default".into(), "a".into()));
        assert_eq!(store.list(&cm, &filter, Some(1), Some(&forged)).err().unwrap().code, 400);
    }

    #[test]
    fn a_no_op_update_keeps_the_resource_version() {
        let mut store = Store::new(10);
        let cm = configmaps(&store);
        let created = store
            .create(&cm, "v1", Some("default"), json!({"metadata": {"name": "a"}, "data": {"k": "v"}}), false)
            .unwrap();
        let rv = store.resource_version();
        let same = store.update(&cm, "v1", Some("default"), "a", created.clone(), WriteMode::default()).unwrap();
        assert_eq!(same, created);
        assert_eq!(store.resource_version(), rv);
    }

    #[test]
    fn secrets_string_data_is_stored_as_base64_data() {
        let mut store = Store::new(10);
        let secrets = store.registry.find("", "v1", "secrets").cloned().unwrap();
        let created = store
            .create(
                &secrets,
                "v1",
                Some("default"),
                json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}}),
                false,
            )
            .unwrap();
        assert_eq!(created["data"]["k"], "dg==");
        assert!(created.get("stringData").is_none());
    }
}
