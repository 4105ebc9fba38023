//! The `log` destination: one JSON line per delivery on stdout, for Fluent Bit, EFK and friends.

use std::io::Write;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::Utc;
use ktrigger_core::{
    BuildContext, DeliveryError, DeliveryRequest, Destination, DestinationType, PropertyError, Receipt, Template,
    rfc3339,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// Writes one JSON line per delivery to stdout (eventrouter style, for log collectors)
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogProperties {
    /// Template rendered into the line's `message` field; no `message` field when absent
    #[serde(default)]
    message: Option<String>,
    /// Whether the line carries `object` (and `oldObject` when the event has one); default true
    #[serde(default = "default_true")]
    include_object: bool,
}

fn default_true() -> bool {
    true
}

/// Where the lines go: stdout, or a writer given by an embedding program.
#[derive(Clone)]
enum Output {
    Stdout,
    Writer(Arc<Mutex<dyn Write + Send>>),
}

/// Builds `log` destinations.
#[derive(Clone)]
pub struct LogFactory {
    output: Output,
}

impl LogFactory {
    /// Destinations that write to the process's stdout.
    pub fn stdout() -> Self {
        LogFactory { output: Output::Stdout }
    }

    /// Destinations that write to `writer` instead of stdout (lines are written under its lock).
    pub fn with_writer(writer: Arc<Mutex<dyn Write + Send>>) -> Self {
        LogFactory { output: Output::Writer(writer) }
    }
}

impl Default for LogFactory {
    fn default() -> Self {
        LogFactory::stdout()
    }
}

impl DestinationType for LogFactory {
    type Properties = LogProperties;
    const NAME: &'static str = "log";
    const EXAMPLE: &'static str = r#"type: log
properties:
  message: "{{ event.type }} of pod {{ object.metadata.name }} in {{ object.metadata.namespace }}"
  includeObject: false
"#;

    fn build(&self, props: LogProperties, _context: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
        let message = props
            .message
            .as_deref()
            .map(Template::compile)
            .transpose()
            .map_err(|e| PropertyError::new("message", e))?;
        Ok(Arc::new(LogDestination { message, include_object: props.include_object, output: self.output.clone() }))
    }
}

/// A built `log` destination.
struct LogDestination {
    message: Option<Template>,
    include_object: bool,
    output: Output,
}

impl LogDestination {
    /// The JSON line for `request`, without its newline.
    fn line(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        let meta = &request.event.meta;
        let mut event = json!({
            "type": meta.event_type,
            "source": meta.source,
            "id": meta.id,
            "time": rfc3339(meta.time),
        });
        if let Some(preset) = &meta.preset {
            event["preset"] = json!(preset);
        }
        if let Some(cluster) = &meta.cluster {
            event["cluster"] = json!(cluster);
        }
        let mut line = Map::new();
        line.insert("time".into(), json!(rfc3339(Utc::now())));
        line.insert("trigger".into(), json!(request.trigger.to_string()));
        line.insert("deliveryId".into(), json!(request.id));
        line.insert("event".into(), event);
        if self.include_object {
            line.insert("object".into(), request.event.object.clone());
            if let Some(old) = &request.event.old_object {
                line.insert("oldObject".into(), old.clone());
            }
        }
        if let Some(template) = &self.message {
            let message = template
                .render(&request.scope())
                .map_err(|e| DeliveryError::permanent(format!("properties.message: {e}")))?;
            line.insert("message".into(), json!(message));
        }
        Ok(Value::Object(line))
    }

    fn write(&self, bytes: &[u8]) -> std::io::Result<()> {
        match &self.output {
            Output::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Output::Writer(writer) => {
                let mut out = ktrigger_core::sync::lock(writer);
                out.write_all(bytes)?;
                out.flush()
            }
        }
    }
}

#[async_trait]
impl Destination for LogDestination {
    fn render(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        self.line(request)
    }

    async fn deliver(&self, request: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
        let mut bytes = serde_json::to_vec(&self.line(request)?)
            .map_err(|e| DeliveryError::permanent(format!("cannot encode the log line: {e}")))?;
        bytes.push(b'\n');
        self.write(&bytes).map_err(|e| DeliveryError::transient(format!("cannot write the log line: {e}")))?;
        Ok(Receipt { detail: Some("logged".into()) })
    }

    fn batches(&self) -> bool {
        true
    }

    /// One line per delivery, all written at once.
    async fn deliver_batch(&self, requests: &[DeliveryRequest<'_>]) -> Result<Receipt, DeliveryError> {
        let mut bytes = Vec::new();
        for request in requests {
            serde_json::to_writer(&mut bytes, &self.line(request)?)
                .map_err(|e| DeliveryError::permanent(format!("cannot encode the log line: {e}")))?;
            bytes.push(b'\n');
        }
        self.write(&bytes).map_err(|e| DeliveryError::transient(format!("cannot write the log lines: {e}")))?;
        Ok(Receipt { detail: Some(format!("logged {}", requests.len())) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrigger_core::{DestinationFactory, Event, TriggerId, TypedDestination};

    fn trigger() -> TriggerId {
        TriggerId { namespace: "apps".into(), service: "watch".into(), trigger: "pods".into() }
    }

    fn context() -> BuildContext {
        BuildContext::new(trigger())
    }

    fn buffer_factory() -> (TypedDestination<LogFactory>, Arc<Mutex<Vec<u8>>>) {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        (TypedDestination::new(LogFactory::with_writer(buffer.clone())), buffer)
    }

    fn lines(buffer: &Arc<Mutex<Vec<u8>>>) -> Vec<Value> {
        let bytes = buffer.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[tokio::test]
    async fn a_batch_is_one_line_per_delivery() {
        let (factory, buffer) = buffer_factory();
        let destination = factory.build(&serde_json::json!({}), &context()).unwrap();
        assert!(destination.batches());
        let events: Vec<Event> = (0..3).map(|n| Event::new("cron", "fire", serde_json::json!({"n": n}))).collect();
        let ids: Vec<String> = (0..3).map(|n| format!("d{n}")).collect();
        let id = trigger();
        let requests: Vec<DeliveryRequest<'_>> = events
            .iter()
            .zip(&ids)
            .map(|(event, delivery)| DeliveryRequest { id: delivery, trigger: &id, event, attempt: 1 })
            .collect();
        let receipt = destination.deliver_batch(&requests).await.unwrap();
        assert_eq!(receipt.detail.as_deref(), Some("logged 3"));
        let written: Vec<String> =
            lines(&buffer).iter().map(|line| line["deliveryId"].as_str().unwrap().to_string()).collect();
        assert_eq!(written, ids);
    }

    #[tokio::test]
    async fn writes_one_json_line_per_delivery() {
        let (factory, buffer) = buffer_factory();
        let destination =
            factory.build(&json!({"message": "{{ event.type }} {{ object.metadata.name }}"}), &context()).unwrap();
        let mut event = Event::new("resource-watcher", "update", json!({"metadata": {"name": "web"}}));
        event.old_object = Some(json!({"metadata": {"name": "web", "generation": 1}}));
        event.meta.preset = Some("pod-restart".into());
        let trigger = trigger();
        let request = DeliveryRequest { id: "d-1", trigger: &trigger, event: &event, attempt: 1 };

        let receipt = destination.deliver(&request).await.unwrap();
        assert_eq!(receipt.detail.as_deref(), Some("logged"));
        destination.deliver(&request).await.unwrap();

        let lines = lines(&buffer);
        assert_eq!(lines.len(), 2);
        let line = &lines[0];
        assert_eq!(line["trigger"], "apps/watch/pods");
        assert_eq!(line["deliveryId"], "d-1");
        assert_eq!(line["event"]["type"], "update");
        assert_eq!(line["event"]["source"], "resource-watcher");
        assert_eq!(line["event"]["id"], event.meta.id);
        assert_eq!(line["event"]["preset"], "pod-restart");
        assert_eq!(line["event"]["time"], rfc3339(event.meta.time));
        assert_eq!(line["object"]["metadata"]["name"], "web");
        assert_eq!(line["oldObject"]["metadata"]["generation"], 1);
        assert_eq!(line["message"], "update web");
        assert!(line["time"].as_str().unwrap().ends_with('Z'));

        let rendered = destination.render(&request).unwrap();
        assert_eq!(rendered["message"], "update web");
        assert_eq!(rendered["object"], line["object"]);
    }

    #[tokio::test]
    async fn objects_can_be_left_out() {
        let (factory, buffer) = buffer_factory();
        let destination = factory.build(&json!({"includeObject": false}), &context()).unwrap();
        let mut event = Event::new("cron", "fire", json!({"schedule": "* * * * *"}));
        event.old_object = Some(json!({}));
        let trigger = trigger();
        destination
            .deliver(&DeliveryRequest { id: "d-2", trigger: &trigger, event: &event, attempt: 1 })
            .await
            .unwrap();
        let line = &lines(&buffer)[0];
        assert!(line.get("object").is_none() && line.get("oldObject").is_none(), "{line}");
        assert!(line.get("message").is_none() && line["event"].get("preset").is_none(), "{line}");
    }

    #[test]
    fn bad_properties_are_refused_at_load() {
        let factory = TypedDestination::new(LogFactory::stdout());
        let err = factory.build(&json!({"message": "{{ pod.name }}"}), &context()).err().unwrap();
        assert_eq!(err.path, "message");
        assert!(err.to_string().starts_with("properties.message: unknown variable(s) pod"), "{err}");
        let err = factory.build(&json!({"mesage": "x"}), &context()).err().unwrap();
        assert!(err.path == "mesage" && err.message.contains("unknown field `mesage`"), "{err}");
        let err = factory.build(&json!({"includeObject": "yes"}), &context()).err().unwrap();
        assert_eq!(err.path, "includeObject");
    }
}
