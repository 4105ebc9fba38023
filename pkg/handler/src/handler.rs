//! What a controller author implements: an [`EventHandler`] of one resource type, called with a
//! [`Context`] for every add, update and delete.

use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use kube::Client;
use tokio_util::sync::CancellationToken;

/// What a handler callback returns when it fails: any error. The loop logs it (with the handler's
/// name and the object's key) and retries the key after a backoff.
pub type Error = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What every callback of an [`EventHandler`] gets: the cluster's client and a cancellation
/// token. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    client: Client,
    cancel: CancellationToken,
    loop_name: Arc<str>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("loop_name", &self.loop_name).finish_non_exhaustive()
    }
}

impl Context {
    pub(crate) fn new(client: Client, cancel: CancellationToken, loop_name: Arc<str>) -> Self {
        Context { client, cancel, loop_name }
    }

    /// The client the loop watches with, for reading and changing objects.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Cancelled when the loop stops for good: its shutdown grace has run out and callbacks still
    /// running are aborted a second later. Long callbacks should select on it.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The name of the [`EventLoop`](crate::EventLoop) running the handler.
    pub fn loop_name(&self) -> &str {
        &self.loop_name
    }
}

/// Reacts to the changes of objects of type `K` (a `k8s-openapi` type, a `CustomResource`, or
/// `kube::api::DynamicObject` for any kind).
///
/// Every callback has a default that does nothing, so a handler implements only what it needs.
/// A callback is never run twice at once for the same object, and it sees the latest state:
/// changes made while the object waits for a worker are merged. Returning an error retries the
/// object after an exponential backoff (see [`EventLoop::retry_backoff`](crate::EventLoop::retry_backoff));
/// so does a panic.
///
/// `namespace` is `None` for cluster-scoped objects.
#[async_trait]
pub trait EventHandler<K>: Send + Sync + 'static
where
    K: Send + Sync + 'static,
{
    /// The handler's name, in logs and errors.
    fn name(&self) -> &str;

    /// The object appeared, or existed when the loop started.
    async fn add(&self, ctx: &Context, namespace: Option<&str>, name: &str, object: &K) -> Result<(), Error> {
        let _ = (ctx, namespace, name, object);
        Ok(())
    }

    /// The object changed. `old` is the state this handler last saw, unless the watch did not
    /// keep it (it was opened by other subscribers before this loop joined it, and the object has
    /// not changed since).
    async fn update(
        &self,
        ctx: &Context,
        namespace: Option<&str>,
        name: &str,
        old: Option<&K>,
        new: &K,
    ) -> Result<(), Error> {
        let _ = (ctx, namespace, name, old, new);
        Ok(())
    }

    /// The object was deleted; `object` is its last known state (only its identity when it was
    /// deleted while the watch was away and its last state was not kept).
    async fn delete(&self, ctx: &Context, namespace: Option<&str>, name: &str, object: &K) -> Result<(), Error> {
        let _ = (ctx, namespace, name, object);
        Ok(())
    }
}

/// A handler whose callbacks do nothing, for any object type: a placeholder while a controller
/// is being written, or a way to keep a watch open.
pub struct DefaultHandler<K = kube::api::DynamicObject> {
    name: String,
    _objects: PhantomData<fn(K)>,
}

impl<K> DefaultHandler<K> {
    /// A handler named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        DefaultHandler { name: name.into(), _objects: PhantomData }
    }
}

impl<K> std::fmt::Debug for DefaultHandler<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DefaultHandler").field("name", &self.name).finish()
    }
}

impl<K: Send + Sync + 'static> EventHandler<K> for DefaultHandler<K> {
    fn name(&self) -> &str {
        &self.name
    }
}
