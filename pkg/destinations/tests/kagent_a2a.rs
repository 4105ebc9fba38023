//! The `kagent` destination against a real A2A server: `tests/receivers/a2a_agent.py`, an agent
//! built on the official `a2a-sdk` package behind kagent's session and A2A paths. Malformed
//! answers no real agent gives (not JSON, too large) come from a small in-process server.
//!
//! Needs `python3` with the packages of `tests/requirements.txt`; fails (never skips) without them.

#[path = "../../../tests/support/python.rs"]
mod support;

use std::sync::Arc;

use ktrigger_core::{BuildContext, DeliveryError, DeliveryRequest, Destination, Event, Registry, TriggerId};
use ktrigger_destinations::kagent::message_id;
use serde_json::{Value, json};
use support::{PythonServer, json_lines};

/// The agent server process; killed when dropped.
struct AgentServer(PythonServer);

impl AgentServer {
    fn start() -> AgentServer {
        AgentServer(PythonServer::start(
            "a2a_agent.py",
            "import a2a.server.routes, a2a.server.request_handlers, uvicorn",
            "`a2a-sdk` (with its http-server extra) or `uvicorn` is",
            "agent.jsonl",
            &["--agent", "kagent/k8s-agent"],
        ))
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.0.port)
    }

    /// Every request the server recorded, one JSON object each.
    fn records(&self) -> Vec<Value> {
        json_lines(&self.0.output)
    }

    fn records_of(&self, kind: &str) -> Vec<Value> {
        self.records().into_iter().filter(|r| r["kind"] == kind).collect()
    }
}

fn trigger() -> TriggerId {
    TriggerId { namespace: "apps".into(), service: "restart-doctor".into(), trigger: "crashloop".into() }
}

fn kagent(properties: Value) -> Arc<dyn Destination> {
    let mut registry = Registry::default();
    ktrigger_destinations::register(&mut registry);
    let factory = registry.destination("kagent").expect("kagent is registered");
    factory.build(&properties, &BuildContext::new(trigger())).unwrap()
}

/// A core/v1 Event of a crash-looping pod, as the pod-restart preset sees it.
fn restart_event() -> Event {
    let mut event = Event::new(
        "k8s-events",
        "create",
        json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "web-0.17f0c2a5b3e1d9a0", "namespace": "apps"},
            "involvedObject": {"kind": "Pod", "namespace": "apps", "name": "web-0", "fieldPath": "spec.containers{web}"},
            "reason": "BackOff",
            "message": "Back-off restarting failed container web in pod web-0_apps",
            "firstTimestamp": "2026-03-02T10:00:05Z",
            "lastTimestamp": "2026-03-02T10:09:41Z",
            "count": 5,
            "type": "Warning"
        }),
    );
    event.meta.preset = Some("pod-restart".into());
    event
}

#[tokio::test]
async fn a_khook_prompt_runs_as_a_task_in_a_new_session() {
    let server = AgentServer::start();
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("token");
    std::fs::write(&token, "Bearer s3cr3t-token\n").unwrap();
    let destination = kagent(json!({
        "agentRef": {"name": "k8s-agent", "namespace": "kagent"},
        "baseUrl": server.base_url(),
        "userId": "sre@example.com",
        "prompt": "AUTONOMOUS MODE: Pod {{.ResourceName}} ({{.Namespace}}) hit {{.EventType}} at {{.EventTime}}: \
                   {{.Message}}. Restarts: {{ object.count }}.",
        "headersFrom": {"Authorization": {"file": token.display().to_string()}},
    }));
    let trigger = trigger();
    let event = restart_event();
    let request = DeliveryRequest { id: "delivery-1", trigger: &trigger, event: &event, attempt: 1 };

    let receipt = destination.deliver(&request).await.unwrap();

    let sessions = server.records_of("session");
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let session = &sessions[0];
    assert_eq!(session["body"]["agent_ref"], "kagent/k8s-agent");
    assert_eq!(session["body"]["name"], "ktrigger-crashloop-delivery");
    assert_eq!(session["query_user_id"], "sre@example.com");
    assert_eq!(session["headers"], json!({"x-user-id": "sre@example.com", "authorization": "Bearer s3cr3t-token"}));

    let messages = server.records_of("message");
    assert_eq!(messages.len(), 1, "{messages:?}");
    let message = &messages[0];
    assert_eq!(
        message["text"],
        "AUTONOMOUS MODE: Pod web-0 (apps) hit pod-restart at 2026-03-02T10:09:41Z: Back-off restarting failed \
         container web in pod web-0_apps. Restarts: 5."
    );
    assert_eq!(message["messageId"], message_id("delivery-1"));
    assert_eq!(message["headers"]["authorization"], "Bearer s3cr3t-token");
    let task = message["taskId"].as_str().unwrap();
    let context = message["contextId"].as_str().unwrap();
    assert_eq!(receipt.detail.unwrap(), format!("task {task} (completed), session {context}"));

    // The session the server created is the context the message ran in.
    let shown = destination.render(&request).unwrap();
    assert_eq!(shown["message"]["url"], format!("{}/api/a2a/kagent/k8s-agent/", server.base_url()));
    assert!(!shown.to_string().contains("s3cr3t"), "{shown}");
}

#[tokio::test]
async fn a_failed_task_is_a_failed_delivery_with_the_agents_message() {
    let server = AgentServer::start();
    let destination = kagent(json!({
        "agentRef": {"name": "k8s-agent", "namespace": "kagent"},
        "baseUrl": server.base_url(),
        "prompt": "[fail-task] diagnose {{.ResourceName}}",
    }));
    let trigger = trigger();
    let event = restart_event();
    let request = DeliveryRequest { id: "delivery-2", trigger: &trigger, event: &event, attempt: 1 };
    match destination.deliver(&request).await.unwrap_err() {
        DeliveryError::Transient { reason, .. } => {
            let task = server.records_of("message")[0]["taskId"].as_str().unwrap().to_string();
            assert_eq!(reason, format!("task {task} failed: cannot diagnose: the cluster API is unreachable"));
        }
        other => panic!("expected a transient failure, got {other:?}"),
    }
}

#[tokio::test]
async fn json_rpc_errors_carry_the_servers_code_and_message() {
    let server = AgentServer::start();
    let trigger = trigger();
    let event = restart_event();

    let refused = kagent(json!({
        "agentRef": {"name": "k8s-agent", "namespace": "kagent"},
        "baseUrl": server.base_url(),
        "prompt": "[reject-params] {{.ResourceName}}",
    }));
    let request = DeliveryRequest { id: "delivery-3", trigger: &trigger, event: &event, attempt: 1 };
    assert_eq!(
        refused.deliver(&request).await.unwrap_err(),
        DeliveryError::permanent(
            "JSON-RPC error -32602 (invalid params): the agent refuses prompts marked [reject-params]"
        )
    );

    let unavailable = kagent(json!({
        "agentRef": {"name": "k8s-agent", "namespace": "kagent"},
        "baseUrl": server.base_url(),
        "prompt": "[internal-error] {{.ResourceName}}",
    }));
    let request = DeliveryRequest { id: "delivery-4", trigger: &trigger, event: &event, attempt: 1 };
    assert_eq!(
        unavailable.deliver(&request).await.unwrap_err(),
        DeliveryError::transient("JSON-RPC error -32603 (internal error): the agent's model backend is unavailable")
    );
    assert_eq!(server.records_of("refused").len(), 2);
    assert!(server.records_of("message").is_empty());
}

#[tokio::test]
async fn retries_reuse_the_session_and_the_message_id() {
    let server = AgentServer::start();
    let destination = kagent(json!({
        "agentRef": {"name": "k8s-agent", "namespace": "kagent"},
        "baseUrl": server.base_url(),
        "prompt": "[internal-error] {{.ResourceName}}",
    }));
    let trigger = trigger();
    let event = restart_event();
    for attempt in 1..=2 {
        let request = DeliveryRequest { id: "delivery-5", trigger: &trigger, event: &event, attempt };
        assert!(matches!(destination.deliver(&request).await, Err(DeliveryError::Transient { .. })));
    }
    let sessions = server.records_of("session");
    assert_eq!(sessions.len(), 1, "one session for both attempts: {sessions:?}");
    let refused = server.records_of("refused");
    assert_eq!(refused.len(), 2);
    assert_eq!(refused[0]["messageId"], refused[1]["messageId"]);
    assert_eq!(refused[0]["contextId"], refused[1]["contextId"]);
}

#[tokio::test]
async fn without_sessions_the_standard_path_is_called_directly() {
    let server = AgentServer::start();
    let destination = kagent(json!({
        "agentRef": {"name": "k8s-agent", "namespace": "kagent"},
        "baseUrl": server.base_url(),
        "a2aPath": "standard",
        "createSession": false,
        "wait": false,
        "prompt": "Look at {{ object.involvedObject.name }}",
    }));
    let trigger = trigger();
    let event = restart_event();
    let request = DeliveryRequest { id: "delivery-6", trigger: &trigger, event: &event, attempt: 1 };
    let detail = destination.deliver(&request).await.unwrap().detail.unwrap();
    assert!(detail.starts_with("task ") && !detail.contains("session"), "{detail}");
    assert!(server.records_of("session").is_empty());
    let messages = server.records_of("message");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["text"], "Look at web-0");
}

#[tokio::test]
async fn an_unknown_agent_fails_at_session_creation() {
    let server = AgentServer::start();
    let destination = kagent(json!({
        "agentRef": {"name": "no-such-agent", "namespace": "kagent"},
        "baseUrl": server.base_url(),
        "prompt": "hello",
    }));
    let trigger = trigger();
    let event = restart_event();
    let request = DeliveryRequest { id: "delivery-7", trigger: &trigger, event: &event, attempt: 1 };
    match destination.deliver(&request).await.unwrap_err() {
        DeliveryError::Permanent { reason } => {
            assert!(reason.starts_with("creating the session: HTTP 400 Bad Request:"), "{reason}");
            assert!(reason.contains("Agent ref is invalid"), "{reason}");
        }
        other => panic!("expected a permanent failure, got {other:?}"),
    }
    assert!(server.records_of("message").is_empty());
}

/// Serves `body` with HTTP 200 to every request; returns the base URL.
async fn answering(body: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let body = Arc::new(body);
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move { (*body).clone() }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

#[tokio::test]
async fn answers_that_are_not_json_rpc_fail_clearly() {
    let trigger = trigger();
    let event = restart_event();
    let request = DeliveryRequest { id: "delivery-8", trigger: &trigger, event: &event, attempt: 1 };

    let html = answering(b"<html><body>kagent UI</body></html>".to_vec()).await;
    let destination = kagent(json!({
        "agentRef": {"name": "k8s-agent", "namespace": "kagent"}, "baseUrl": html, "prompt": "hi", "createSession": false,
    }));
    match destination.deliver(&request).await.unwrap_err() {
        DeliveryError::Permanent { reason } => {
            assert!(reason.starts_with("the response is not JSON"), "{reason}");
            assert!(reason.ends_with("<html><body>kagent UI</body></html>"), "{reason}");
        }
        other => panic!("expected a permanent failure, got {other:?}"),
    }

    let huge = format!("{{\"result\": \"{}\"}}", "x".repeat(5 * 1024 * 1024));
    let large = answering(huge.into_bytes()).await;
    let destination = kagent(json!({
        "agentRef": {"name": "k8s-agent", "namespace": "kagent"}, "baseUrl": large, "prompt": "hi", "createSession": false,
    }));
    assert_eq!(
        destination.deliver(&request).await.unwrap_err(),
        DeliveryError::permanent("the response is larger than 4 MiB (the agent may have acted)")
    );
}
