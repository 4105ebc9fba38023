//! An example ktrigger plugin in Rust: a `sequence` source and a `tally` destination.
//!
//! Started by ktrigger, it serves the `ktrigger.plugin.v1` protocol on a free local port and
//! prints the handshake line; `--listen HOST:PORT` serves on a fixed address (as a sidecar).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ktrigger_plugin::connect::{HANDSHAKE_MAGIC, PROTOCOL_VERSION};
use ktrigger_plugin::proto::plugin_server::{Plugin, PluginServer};
use ktrigger_plugin::proto::{
    DeliverRequest, DeliverResponse, Delivered, DescribeRequest, DescribeResponse, HealthRequest, HealthResponse,
    SourceEvent, SourceRequest, TypeInfo, ValidateRequest, ValidateResponse, deliver_response, source_request,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// Most events sent and not yet acknowledged, per stream.
const MAX_IN_FLIGHT: u64 = 100;

/// The plugin's state: the last acknowledged number of each trigger, and deliveries counted.
#[derive(Default)]
struct State {
    acked: Mutex<HashMap<String, u64>>,
    tallies: Mutex<HashMap<String, u64>>,
}

/// The plugin service.
#[derive(Default)]
struct Example(Arc<State>);

fn key(trigger: Option<&ktrigger_plugin::proto::Trigger>) -> String {
    trigger.map(|t| format!("{}/{}/{}", t.namespace, t.service, t.name)).unwrap_or_default()
}

fn properties(json: &str) -> Value {
    serde_json::from_str(json).unwrap_or(Value::Null)
}

#[tonic::async_trait]
impl Plugin for Example {
    type RunSourceStream = Pin<Box<dyn Stream<Item = Result<SourceEvent, Status>> + Send>>;

    async fn describe(&self, _: Request<DescribeRequest>) -> Result<Response<DescribeResponse>, Status> {
        let sequence = json!({
            "type": "object",
            "properties": {
                "from": {"type": "integer", "minimum": 0},
                "count": {"type": "integer", "minimum": 1},
                "intervalMs": {"type": "integer", "minimum": 0}
            },
            "required": ["count"],
            "additionalProperties": false
        });
        Ok(Response::new(DescribeResponse {
            sources: vec![TypeInfo {
                name: "sequence".into(),
                description: "Numbers from `from` (default 1), `count` of them, one every intervalMs (default 100)"
                    .into(),
                properties_schema: sequence.to_string(),
                example: "type: sequence\nproperties: {count: 10}\n".into(),
            }],
            destinations: vec![TypeInfo {
                name: "tally".into(),
                description: "Counts the deliveries of each trigger and answers with the count".into(),
                properties_schema: json!({"type": "object", "additionalProperties": false}).to_string(),
                example: "type: tally\n".into(),
            }],
        }))
    }

    async fn validate(&self, _: Request<ValidateRequest>) -> Result<Response<ValidateResponse>, Status> {
        Ok(Response::new(ValidateResponse { errors: Vec::new() }))
    }

    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse {}))
    }

    async fn run_source(
        &self,
        request: Request<Streaming<SourceRequest>>,
    ) -> Result<Response<Self::RunSourceStream>, Status> {
        let mut requests = request.into_inner();
        let Some(source_request::Request::Start(start)) = requests.message().await?.and_then(|r| r.request) else {
            return Err(Status::invalid_argument("the first request must be start"));
        };
        let props = properties(&start.properties_json);
        let from = props["from"].as_u64().unwrap_or(1);
        let count = props["count"].as_u64().unwrap_or(1);
        let interval = Duration::from_millis(props["intervalMs"].as_u64().unwrap_or(100));
        let trigger = key(start.trigger.as_ref());
        // Go on after the last acknowledged number: unacknowledged ones are sent again.
        let first = self.0.acked.lock().unwrap().get(&trigger).map_or(from, |n| n + 1);
        let (acked_tx, mut acked_rx) = watch::channel(first.saturating_sub(1));
        let state = self.0.clone();
        let acks_for = trigger.clone();
        tokio::spawn(async move {
            while let Ok(Some(request)) = requests.message().await {
                if let Some(source_request::Request::Ack(ack)) = request.request
                    && let Some(n) = ack.event_id.rsplit('-').next().and_then(|n| n.parse::<u64>().ok())
                {
                    state.acked.lock().unwrap().insert(acks_for.clone(), n);
                    acked_tx.send_replace(n);
                }
            }
        });
        let (events, outgoing) = mpsc::channel(16);
        tokio::spawn(async move {
            for n in first..from.saturating_add(count) {
                while n.saturating_sub(*acked_rx.borrow()) > MAX_IN_FLIGHT {
                    if acked_rx.changed().await.is_err() {
                        return;
                    }
                }
                let event = SourceEvent {
                    id: format!("sequence-{n}"),
                    r#type: "next".into(),
                    object_json: json!({"n": n}).to_string(),
                    time: String::new(),
                };
                if events.send(Ok(event)).await.is_err() {
                    return;
                }
                if !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
            }
            // Keep the stream open: a source that ends is restarted.
            events.closed().await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(outgoing))))
    }

    async fn deliver(&self, request: Request<DeliverRequest>) -> Result<Response<DeliverResponse>, Status> {
        let request = request.into_inner();
        let mut tallies = self.0.tallies.lock().unwrap();
        let tally = tallies.entry(key(request.trigger.as_ref())).or_default();
        *tally += 1;
        let detail = format!("delivery {tally} of trigger {}", request.trigger.map(|t| t.name).unwrap_or_default());
        Ok(Response::new(DeliverResponse { result: Some(deliver_response::Result::Delivered(Delivered { detail })) }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = match (args.next().as_deref(), args.next()) {
        (Some("--listen"), Some(addr)) => addr.parse()?,
        (None, _) => "127.0.0.1:0".parse()?,
        _ => return Err("usage: ktrigger-example-plugin [--listen HOST:PORT]".into()),
    };
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    println!("{HANDSHAKE_MAGIC}|{PROTOCOL_VERSION}|{addr}");
    tonic::transport::Server::builder()
        .add_service(PluginServer::new(Example::default()))
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await?;
    Ok(())
}
