//! The `email` destination against a real SMTP server: `tests/receivers/smtp_server.py`, built on
//! `aiosmtpd`, which parses what it receives with Python's own `email` package. The STARTTLS
//! cases use a CA and a server certificate made for each test.
//!
//! Needs `python3` with the packages of `tests/requirements.txt`; fails (never skips) without them.

#[path = "../../../tests/support/python.rs"]
mod support;

use std::sync::Arc;

use ktrigger_core::{BuildContext, DeliveryError, DeliveryRequest, Destination, Event, Registry, TriggerId};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{Value, json};
use support::{PythonServer, json_lines};

/// PEM files of a test CA and of a server certificate it signed for 127.0.0.1 and localhost.
struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    fn new() -> TestPki {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "ktrigger test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();

        let mut server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        server.distinguished_name.push(DnType::CommonName, "smtp.test");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let certificate = server.signed_by(&key, &ca).unwrap();

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), certificate.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        TestPki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// The SMTP server process; killed when dropped.
struct SmtpServer(PythonServer);

impl SmtpServer {
    fn start(options: &[&str]) -> SmtpServer {
        SmtpServer(PythonServer::start("smtp_server.py", "import aiosmtpd.smtp", "`aiosmtpd` is", "mail", options))
    }

    fn port(&self) -> u16 {
        self.0.port
    }

    /// The messages the server accepted, as Python's `email` package parsed them.
    fn messages(&self) -> Vec<Value> {
        json_lines(&self.0.output.join("messages.jsonl"))
    }

    /// The AUTH attempts the server saw.
    fn auth_attempts(&self) -> Vec<Value> {
        json_lines(&self.0.output.join("auth.jsonl"))
    }
}

fn trigger() -> TriggerId {
    TriggerId { namespace: "apps".into(), service: "mail".into(), trigger: "crashloop".into() }
}

fn email(properties: Value) -> Arc<dyn Destination> {
    let mut registry = Registry::default();
    ktrigger_destinations::register(&mut registry);
    let factory = registry.destination("email").expect("email is registered");
    factory.build(&properties, &BuildContext::new(trigger())).unwrap()
}

fn restart_event() -> Event {
    let mut event = Event::new(
        "k8s-events",
        "create",
        json!({
            "kind": "Event",
            "metadata": {"name": "web-0.17f0c2a5b3e1d9a0", "namespace": "apps"},
            "involvedObject": {"kind": "Pod", "namespace": "apps", "name": "web-0"},
            "reason": "BackOff",
            "message": "Back-off restarting failed container web",
            "count": 5
        }),
    );
    event.meta.preset = Some("pod-restart".into());
    event
}

async fn deliver(destination: &Arc<dyn Destination>, id: &str) -> Result<String, DeliveryError> {
    let trigger = trigger();
    let event = restart_event();
    let request = DeliveryRequest { id, trigger: &trigger, event: &event, attempt: 1 };
    destination.deliver(&request).await.map(|receipt| receipt.detail.unwrap_or_default())
}

#[tokio::test]
async fn a_plain_relay_receives_a_multipart_plain_and_html_message() {
    let server = SmtpServer::start(&[]);
    let destination = email(json!({
        "host": "127.0.0.1",
        "port": server.port(),
        "tls": "none",
        "from": "ktrigger <alerts@example.com>",
        "to": ["oncall@example.com", "Platform Team <platform@example.com>"],
        "cc": "audit@example.com",
        "subject": "{{ object.involvedObject.name }} restarted {{ object.count }} times — ünïcode",
        "body": "Pod {{ object.involvedObject.name }}: {{ object.message }}\nReason: {{ object.reason }}",
        "html": "<p>Pod <b>{{ object.involvedObject.name | escape }}</b> restarted {{ object.count }} times</p>",
    }));

    let detail = deliver(&destination, "delivery-1").await.unwrap();
    assert_eq!(detail, "SMTP 250 2.0.0 Ok: queued as 1");

    let messages = server.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let message = &messages[0];
    assert_eq!(message["tls"], false);
    assert_eq!(message["mail_from"], "alerts@example.com");
    assert_eq!(message["rcpt_tos"], json!(["oncall@example.com", "platform@example.com", "audit@example.com"]));
    assert_eq!(message["from"], "ktrigger <alerts@example.com>");
    assert_eq!(message["to"], "oncall@example.com, Platform Team <platform@example.com>");
    assert_eq!(message["cc"], "audit@example.com");
    assert_eq!(message["subject"], "web-0 restarted 5 times — ünïcode");
    assert_eq!(message["message_id"], "<delivery-1@ktrigger>");
    assert_eq!(message["delivery_id"], "delivery-1");
    assert_eq!(message["content_type"], "multipart/alternative");
    let parts = message["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[0]["content_type"], "text/plain");
    assert_eq!(
        parts[0]["text"].as_str().unwrap().trim_end(),
        "Pod web-0: Back-off restarting failed container web\nReason: BackOff"
    );
    assert_eq!(parts[1]["content_type"], "text/html");
    assert_eq!(parts[1]["text"].as_str().unwrap().trim_end(), "<p>Pod <b>web-0</b> restarted 5 times</p>");
}

#[tokio::test]
async fn starttls_with_a_private_ca_and_auth_delivers_the_default_message() {
    let pki = TestPki::new();
    let server = SmtpServer::start(&[
        "--tls-cert",
        &pki.path("server.pem"),
        "--tls-key",
        &pki.path("server.key"),
        "--auth",
        "mailer:correct horse battery",
    ]);
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("user"), "mailer\n").unwrap();
    std::fs::write(secrets.path().join("password"), "correct horse battery\n").unwrap();
    let destination = email(json!({
        "host": "127.0.0.1",
        "port": server.port(),
        "caFile": pki.path("ca.pem"),
        "usernameFrom": {"file": secrets.path().join("user").display().to_string()},
        "passwordFrom": {"file": secrets.path().join("password").display().to_string()},
        "from": "alerts@example.com",
        "to": "oncall@example.com",
    }));

    let detail = deliver(&destination, "delivery-2").await.unwrap();
    assert!(detail.starts_with("SMTP 250 "), "{detail}");

    let messages = server.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let message = &messages[0];
    assert_eq!(message["tls"], true);
    assert_eq!(message["authenticated_as"], "mailer");
    assert_eq!(message["subject"], "[ktrigger] crashloop: pod-restart web-0");
    assert_eq!(message["content_type"], "text/plain");
    let body = message["parts"][0]["text"].as_str().unwrap();
    assert!(body.starts_with("Trigger crashloop fired on a pod-restart event from the k8s-events source."), "{body}");
    assert!(body.contains("Object: web-0 in namespace apps\nReason: BackOff\n"), "{body}");
}

#[tokio::test]
async fn wrong_credentials_fail_permanently_without_showing_the_password() {
    let pki = TestPki::new();
    let server = SmtpServer::start(&[
        "--tls-cert",
        &pki.path("server.pem"),
        "--tls-key",
        &pki.path("server.key"),
        "--auth",
        "mailer:right-password",
    ]);
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("user"), "mailer").unwrap();
    std::fs::write(secrets.path().join("password"), "Wr0ng-Pa55word").unwrap();
    let destination = email(json!({
        "host": "127.0.0.1",
        "port": server.port(),
        "caFile": pki.path("ca.pem"),
        "usernameFrom": {"file": secrets.path().join("user").display().to_string()},
        "passwordFrom": {"file": secrets.path().join("password").display().to_string()},
        "from": "alerts@example.com",
        "to": "oncall@example.com",
    }));
    let error = deliver(&destination, "delivery-3").await.unwrap_err();
    match &error {
        DeliveryError::Permanent { reason } => {
            assert!(reason.contains("535"), "{reason}");
            assert!(reason.contains("Authentication credentials invalid"), "{reason}");
        }
        other => panic!("expected a permanent failure, got {other:?}"),
    }
    assert!(!format!("{error:?} {error}").contains("Wr0ng-Pa55word"));
    let attempts = server.auth_attempts();
    assert!(!attempts.is_empty() && attempts.iter().all(|a| a["password_matched"] == false), "{attempts:?}");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn without_the_private_ca_the_server_certificate_is_refused() {
    let pki = TestPki::new();
    let server = SmtpServer::start(&["--tls-cert", &pki.path("server.pem"), "--tls-key", &pki.path("server.key")]);
    let destination = email(json!({
        "host": "127.0.0.1", "port": server.port(), "from": "alerts@example.com", "to": "oncall@example.com",
    }));
    match deliver(&destination, "delivery-4").await.unwrap_err() {
        DeliveryError::Transient { reason, .. } => {
            assert_eq!(reason, "SMTP: Connection error: invalid peer certificate: UnknownIssuer")
        }
        other => panic!("expected a transient failure, got {other:?}"),
    }
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn starttls_is_required_when_configured() {
    let server = SmtpServer::start(&[]);
    let destination = email(json!({
        "host": "127.0.0.1", "port": server.port(), "tls": "starttls", "from": "a@example.com", "to": "b@example.com",
    }));
    match deliver(&destination, "delivery-5").await.unwrap_err() {
        DeliveryError::Permanent { reason } => assert!(reason.contains("STARTTLS is not supported"), "{reason}"),
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

#[tokio::test]
async fn smtp_replies_decide_whether_a_retry_may_help() {
    let server = SmtpServer::start(&[]);
    let to = |address: &str| {
        email(
            json!({"host": "127.0.0.1", "port": server.port(), "tls": "none", "from": "a@example.com", "to": address}),
        )
    };
    match deliver(&to("busy-desk@example.com"), "delivery-6").await.unwrap_err() {
        DeliveryError::Transient { reason, .. } => {
            assert!(reason.contains("451") && reason.contains("Mailbox busy"), "{reason}")
        }
        other => panic!("expected a transient failure, got {other:?}"),
    }
    match deliver(&to("unknown-user@example.com"), "delivery-7").await.unwrap_err() {
        DeliveryError::Permanent { reason } => {
            assert!(reason.contains("550") && reason.contains("No such mailbox"), "{reason}")
        }
        other => panic!("expected a permanent failure, got {other:?}"),
    }
    assert!(server.messages().is_empty());

    // Nothing listens on a port the server has just given up: a transient connection failure.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let destination = email(
        json!({"host": "127.0.0.1", "port": closed, "tls": "none", "from": "a@example.com", "to": "b@example.com"}),
    );
    assert!(matches!(deliver(&destination, "delivery-8").await, Err(DeliveryError::Transient { .. })));
}
