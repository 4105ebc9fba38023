//! Calls a typed [`EventHandler`] with the JSON objects the queue holds.

use std::marker::PhantomData;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::change::Change;
use crate::handler::{Context, Error, EventHandler};
use crate::queue::Key;

/// How handling one key ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The callback succeeded.
    Done,
    /// The callback failed: retry after a backoff.
    Failed(Error),
    /// The object is not a `K`: retrying cannot help.
    Undecodable(serde_json::Error),
}

/// A handler of any object type, seen by the loop.
#[async_trait]
pub(crate) trait Dispatch: Send + Sync {
    /// The handler's name.
    fn name(&self) -> &str;

    /// Calls the callback for `change` of `key`.
    async fn handle(&self, ctx: &Context, key: &Key, change: &Change) -> Outcome;
}

/// An [`EventHandler<K>`] behind [`Dispatch`].
pub(crate) struct Typed<K, H> {
    handler: H,
    _objects: PhantomData<fn(K)>,
}

impl<K, H> Typed<K, H> {
    pub(crate) fn new(handler: H) -> Self {
        Typed { handler, _objects: PhantomData }
    }
}

fn decode<K: DeserializeOwned>(value: &Value) -> Result<K, serde_json::Error> {
    K::deserialize(value)
}

#[async_trait]
impl<K, H> Dispatch for Typed<K, H>
where
    K: DeserializeOwned + Send + Sync + 'static,
    H: EventHandler<K>,
{
    fn name(&self) -> &str {
        self.handler.name()
    }

    async fn handle(&self, ctx: &Context, key: &Key, change: &Change) -> Outcome {
        let (namespace, name) = (key.namespace.as_deref(), key.name.as_str());
        let result = match change {
            Change::Add(object) => match decode::<K>(object) {
                Ok(object) => self.handler.add(ctx, namespace, name, &object).await,
                Err(e) => return Outcome::Undecodable(e),
            },
            Change::Update { old, new } => {
                let old = match old.as_deref().map(decode::<K>).transpose() {
                    Ok(old) => old,
                    Err(e) => return Outcome::Undecodable(e),
                };
                match decode::<K>(new) {
                    Ok(new) => self.handler.update(ctx, namespace, name, old.as_ref(), &new).await,
                    Err(e) => return Outcome::Undecodable(e),
                }
            }
            Change::Delete(object) => match decode::<K>(object) {
                Ok(object) => self.handler.delete(ctx, namespace, name, &object).await,
                Err(e) => return Outcome::Undecodable(e),
            },
        };
        match result {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Failed(e),
        }
    }
}
