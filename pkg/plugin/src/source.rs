//! A source served by a plugin: events arrive on a RunSource stream and each is acknowledged to
//! the plugin only after the engine accepted it.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ktrigger_core::{BuildContext, Event, EventMappings, EventSink, Handled, Source, SourceError};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::manager::Plugin;
use crate::proto::{Ack, SourceEvent, SourceRequest, StartSource, Trigger, source_request};
use crate::types::{cut, trigger};

/// Longest event id a plugin may send, in bytes.
const MAX_ID_BYTES: usize = 256;
/// Acknowledgements waiting to be sent; the engine waits when the plugin reads them slowly.
const ACK_BUFFER: usize = 64;

/// A running plugin source of one trigger.
pub struct PluginSource {
    plugin: Arc<Plugin>,
    type_name: &'static str,
    properties_json: String,
    trigger: Trigger,
    mappings: Arc<EventMappings>,
}

impl PluginSource {
    /// The source of type `type_name` from `plugin`, with `properties`, for `context`'s trigger.
    pub fn new(plugin: Arc<Plugin>, type_name: &'static str, properties: &Value, context: &BuildContext) -> Self {
        PluginSource {
            plugin,
            type_name,
            properties_json: properties.to_string(),
            trigger: trigger(context),
            mappings: Arc::default(),
        }
    }

    /// The same source, giving its events the severity and tags `mappings` name for them.
    pub fn with_mappings(self, mappings: Arc<EventMappings>) -> Self {
        PluginSource { mappings, ..self }
    }

    /// Turns a plugin's event into an engine event with a deterministic id.
    fn event(&self, sent: SourceEvent) -> Result<Event, SourceError> {
        let invalid =
            |reason: String| SourceError(format!("plugin {:?} sent an invalid event: {reason}", self.plugin.name()));
        if sent.id.len() > MAX_ID_BYTES {
            return Err(invalid(format!("id longer than {MAX_ID_BYTES} bytes")));
        }
        let object: Value =
            serde_json::from_str(&sent.object_json).map_err(|e| invalid(format!("object_json: {e}")))?;
        let event_type = if sent.r#type.is_empty() { "receive".to_string() } else { cut(&sent.r#type) };
        let mut event = Event::new(self.type_name, &event_type, object);
        event.meta.id = if sent.id.is_empty() {
            derived_id(self.plugin.name(), &self.trigger, &sent.r#type, &sent.object_json)
        } else {
            sent.id
        };
        if let Ok(time) = DateTime::parse_from_rfc3339(&sent.time) {
            event.meta.time = time.with_timezone(&Utc);
        }
        if let Some(annotation) = self.mappings.find(self.type_name, &event.meta.event_type) {
            annotation.apply(&mut event.meta);
        }
        Ok(event)
    }
}

/// An id for an event a plugin sent without one: the same plugin, trigger, type and object
/// always give the same id, so an event sent again is recognised.
fn derived_id(plugin: &str, trigger: &Trigger, event_type: &str, object_json: &str) -> String {
    let mut hash = Sha256::new();
    for part in [plugin, &trigger.namespace, &trigger.service, &trigger.name, event_type, object_json] {
        // Lengths first, so that ("ab", "c") and ("a", "bc") differ.
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(&hash.finalize()[..16])
}

/// How long a stopping source waits for the plugin to close the stream after its last acknowledgement.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

#[async_trait]
impl Source for PluginSource {
    async fn run(&self, sink: EventSink, cancel: CancellationToken) -> Result<(), SourceError> {
        let failed = |reason: String| SourceError(format!("plugin {:?}: {reason}", self.plugin.name()));
        let mut client = self.plugin.client().map_err(|e| SourceError(e.to_string()))?;
        let (requests, outgoing) = mpsc::channel(ACK_BUFFER);
        let start = StartSource {
            r#type: self.type_name.to_string(),
            properties_json: self.properties_json.clone(),
            trigger: Some(self.trigger.clone()),
        };
        let _ = requests.send(SourceRequest { request: Some(source_request::Request::Start(start)) }).await;
        let mut events = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            answer = client.run_source(ReceiverStream::new(outgoing)) => {
                answer.map_err(|s| failed(format!("RunSource failed: {}", cut(s.message()))))?.into_inner()
            }
        };
        loop {
            let sent = tokio::select! {
                _ = cancel.cancelled() => {
                    // End the request stream so the acknowledgements already sent reach the
                    // plugin before the call goes away; wait briefly for the plugin to close.
                    drop(requests);
                    let _ = tokio::time::timeout(CLOSE_WAIT, async { while let Ok(Some(_)) = events.message().await {} })
                        .await;
                    return Ok(());
                }
                sent = events.message() => sent,
            };
            let sent = match sent {
                Ok(Some(sent)) => sent,
                Ok(None) => return Err(failed("the source stream ended".into())),
                Err(status) => return Err(failed(format!("source stream broke: {}", cut(status.message())))),
            };
            let event = self.event(sent)?;
            let id = event.meta.id.clone();
            // An answer already given wins over a stop: its event is acknowledged, not sent again.
            let handled = tokio::select! {
                biased;
                handled = async {
                    let tracked = sink.send_tracked(std::sync::Arc::new(event)).await?;
                    Some(tracked.handled().await)
                } => handled,
                _ = cancel.cancelled() => return Ok(()),
            };
            match handled {
                None => return Ok(()),
                Some(Handled::NotStored(reason)) => {
                    return Err(failed(format!("an event was not stored ({reason}); the plugin sends it again")));
                }
                Some(_) => {}
            }
            // Only now is the event the engine's (stored, or decided on): an event lost before
            // this line is sent again by the plugin, one acknowledged after it is never asked for
            // again.
            let ack = SourceRequest { request: Some(source_request::Request::Ack(Ack { event_id: id })) };
            if requests.send(ack).await.is_err() {
                return Err(failed("the source stream closed before an acknowledgement".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger(name: &str) -> Trigger {
        Trigger { namespace: "ns".into(), service: "svc".into(), name: name.into() }
    }

    #[test]
    fn derived_ids_are_the_same_for_the_same_event_and_differ_otherwise() {
        let id = derived_id("p", &trigger("t"), "tick", r#"{"n":1}"#);
        assert_eq!(id, derived_id("p", &trigger("t"), "tick", r#"{"n":1}"#));
        assert_eq!(id.len(), 32);
        assert_ne!(id, derived_id("p", &trigger("u"), "tick", r#"{"n":1}"#));
        assert_ne!(id, derived_id("q", &trigger("t"), "tick", r#"{"n":1}"#));
        assert_ne!(id, derived_id("p", &trigger("t"), "tick", r#"{"n":2}"#));
        assert_ne!(derived_id("p", &trigger("t"), "ab", "c"), derived_id("p", &trigger("t"), "a", "bc"));
    }
}
