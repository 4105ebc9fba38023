//! In-process pieces the engine tests share.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ktrigger_core::{BuildContext, Event, EventSink, PropertyError, Source, SourceError, SourceType};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Emits whatever the test publishes; `{"panic": true}` makes the source panic.
pub struct Feed(broadcast::Sender<Value>);

#[async_trait]
impl Source for Feed {
    async fn run(&self, sink: EventSink, cancel: CancellationToken) -> Result<(), SourceError> {
        let mut feed = self.0.subscribe();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                item = feed.recv() => {
                    let Ok(object) = item else { return Err(SourceError("feed closed".into())) };
                    if object["panic"] == json!(true) {
                        panic!("feed asked to panic");
                    }
                    sink.send(Event::new("feed", "create", object)).await;
                }
            }
        }
    }
}

/// Builds [`Feed`]s of one test's channel, as source type `feed`.
pub struct FeedFactory(pub broadcast::Sender<Value>);

/// A test feed: takes no properties.
#[derive(serde::Deserialize, schemars::JsonSchema)]
pub struct NoProperties {}

impl SourceType for FeedFactory {
    type Properties = NoProperties;
    const NAME: &'static str = "feed";
    const EXAMPLE: &'static str = "type: feed";

    fn build(&self, _: NoProperties, _: &BuildContext) -> Result<Arc<dyn Source>, PropertyError> {
        Ok(Arc::new(Feed(self.0.clone())))
    }
}

/// Publishes `object` on `feed` once a source listens (sources subscribe when they start or
/// restart), waiting at most a second for one.
pub async fn publish(feed: &broadcast::Sender<Value>, object: Value) {
    for _ in 0..200 {
        if feed.receiver_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    feed.send(object).unwrap();
}
