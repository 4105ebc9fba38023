//! What a TriggerService may read from the controller's process and where its sources and
//! destinations may connect: credential references to files, the egress policy on every
//! connection, redirects, and the http-poller's response limits. Controller tests run on the test
//! cluster or on the cluster of `KTRIGGER_TEST_KUBECONFIG`; the others use `ktrigger run`.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cluster::{Env, WAIT};
use support::{Running, write_config};

/// What the test server answers.
#[derive(Clone)]
enum Answer {
    Ok,
    RedirectTo(String),
    /// A 200 response of this many bytes of `[0,0,…`, written as fast as the client reads.
    Large(usize),
}

/// An HTTP server on 127.0.0.1 recording the requests it receives (connections that sent nothing
/// are not requests).
struct Server {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    written: Arc<AtomicUsize>,
}

impl Server {
    fn start(answer: Answer) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let written = Arc::new(AtomicUsize::new(0));
        let (seen, counter) = (requests.clone(), written.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (answer, seen, counter) = (answer.clone(), seen.clone(), counter.clone());
                std::thread::spawn(move || serve(stream, &answer, &seen, &counter));
            }
        });
        Server { port, requests, written }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    fn wait_for_requests(&self, count: usize) -> Vec<String> {
        let start = Instant::now();
        loop {
            let requests = self.requests();
            if requests.len() >= count {
                return requests;
            }
            assert!(start.elapsed() < WAIT, "the server got {} of {count} requests", requests.len());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn serve(mut stream: TcpStream, answer: &Answer, seen: &Mutex<Vec<String>>, written: &AtomicUsize) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut buffer = [0; 4096];
    while let Ok(read @ 1..) = stream.read(&mut buffer) {
        request.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&request).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_string))
                .and_then(|value| value.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                break;
            }
        }
    }
    // A connection the egress policy closed right after connecting sent nothing: not a request.
    if request.is_empty() {
        return;
    }
    seen.lock().unwrap().push(String::from_utf8_lossy(&request).to_string());
    let head = match answer {
        Answer::Ok => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_string(),
        Answer::RedirectTo(url) => {
            format!("HTTP/1.1 302 Found\r\nLocation: {url}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        }
        Answer::Large(_) => "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n".into(),
    };
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    if let Answer::Large(total) = answer {
        let piece = format!("[{}", "0,".repeat(32 * 1024 - 1));
        while written.load(Ordering::SeqCst) < *total {
            if stream.write_all(piece.as_bytes()).is_err() {
                return;
            }
            written.fetch_add(piece.len(), Ordering::SeqCst);
        }
    }
}

/// A TriggerService `name` whose trigger `tick` sends a webhook to `url` every second.
fn tick_to(name: &str, url: &str) -> String {
    format!(
        r#"apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {{name: {name}}}
spec:
  triggers:
  - name: tick
    source: {{type: cron, properties: {{schedule: "* * * * * *"}}}}
    destinations: [{{type: webhook, properties: {{url: "{url}"}}}}]
"#
    )
}

fn last_error(status: &Value) -> String {
    status["lastError"].as_str().unwrap_or_default().to_string()
}

#[test]
fn the_controller_refuses_a_loopback_destination_unless_egress_allow_names_it() {
    let env = Env::new("egress-loopback");
    env.install_trigger_service_crd();
    let receiver = Server::start(Answer::Ok);
    let refusing = env.start_controller(&[], &[]);
    env.apply(&env.namespace, &tick_to("hook", &format!("http://127.0.0.1:{}/hook", receiver.port)));
    let tick = env.wait_trigger("hook", "tick", "a refused delivery dead-lettered at once", |t| {
        t["deadLettered"].as_u64() >= Some(1)
    });
    let error = last_error(&tick);
    assert!(error.ends_with("connection refused: 127.0.0.1 is refused by the egress policy (loopback)"), "{error}");
    assert!(receiver.requests().is_empty(), "nothing reached the receiver");
    assert_eq!(refusing.stop(), Some(0));

    let _allowing = env.start_controller(&["--egress-allow", "127.0.0.1/32"], &[]);
    let requests = receiver.wait_for_requests(1);
    assert!(requests[0].starts_with("POST /hook "), "{}", requests[0]);
}

#[test]
fn a_name_resolving_to_a_denied_address_is_refused() {
    let receiver = Server::start(Answer::Ok);
    let (_dir, path) = write_config(&tick_to("hook", &format!("http://localhost:{}/hook", receiver.port)));
    let path = path.to_str().unwrap();

    // `run` allows loopback by default.
    let allowed = Running::start(&["-f", path]);
    receiver.wait_for_requests(1);
    assert_eq!(allowed.stop(), Some(0));

    let before = receiver.requests().len();
    let denied = Running::start(&["-f", path, "--egress-deny", "127.0.0.0/8", "--egress-deny", "::1/128"]);
    denied.stderr.wait_for("is refused by the egress policy (--egress-deny", WAIT);
    assert_eq!(receiver.requests().len(), before, "localhost was not reached at any of its addresses");
}

#[test]
fn a_redirect_to_another_origin_does_not_carry_the_secret_header() {
    let elsewhere = Server::start(Answer::Ok);
    let origin = Server::start(Answer::RedirectTo(format!("http://127.0.0.1:{}/collect", elsewhere.port)));
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("api-key");
    std::fs::write(&key, "k3y-for-the-origin-only\n").unwrap();
    let config = format!(
        r#"triggers:
- name: poll
  source:
    type: http-poller
    properties:
      url: http://127.0.0.1:{}/items
      interval: 200ms
      headers: {{X-Api-Key: {{file: {}}}}}
  destinations: [{{type: log}}]
"#,
        origin.port,
        key.display()
    );
    let (_config_dir, path) = write_config(&config);
    let running = Running::start(&["-f", path.to_str().unwrap()]);
    let requests = origin.wait_for_requests(2);
    assert!(requests[0].to_ascii_lowercase().contains("x-api-key: k3y-for-the-origin-only"), "{}", requests[0]);
    running.stderr.wait_for("redirects are not followed", WAIT);
    assert!(elsewhere.requests().is_empty(), "the other origin got: {:?}", elsewhere.requests());
}

/// Peak resident memory of process `pid` (VmHWM), as /proc says it.
fn peak_rss(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l["VmHWM:".len()..].trim().to_string()).unwrap_or_default()
}

#[test]
fn a_16_mib_poller_response_is_stopped_at_the_limit_with_a_status_error() {
    let env = Env::new("egress-poller");
    env.install_trigger_service_crd();
    let total = 16 * 1024 * 1024;
    let server = Server::start(Answer::Large(total));
    let running = env.start_controller(&["--egress-allow", "127.0.0.1/32"], &[]);
    let service = format!(
        r#"apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {{name: big}}
spec:
  triggers:
  - name: poll
    source: {{type: http-poller, properties: {{url: "http://127.0.0.1:{}/items", interval: 1s}}}}
    destinations: [{{type: log}}]
"#,
        server.port
    );
    env.apply(&env.namespace, &service);
    let poll = env.wait_trigger("big", "poll", "the limit reported", |t| !last_error(t).is_empty());
    assert!(last_error(&poll).contains("the response is larger than maxResponseBytes (4194304 bytes)"), "{poll:#}");
    eprintln!(
        "16 MiB response: the server wrote {} bytes before the poller stopped reading; controller peak RSS {}",
        server.written.load(Ordering::SeqCst),
        peak_rss(running.id())
    );
}

/// A TriggerService whose triggers each send a header read from one of `files` (never fired).
fn file_headers(files: &[(&str, &str)]) -> String {
    let mut text =
        "apiVersion: ktrigger.dev/v1alpha1\nkind: TriggerService\nmetadata: {name: files}\nspec:\n  triggers:\n"
            .to_string();
    for (name, file) in files {
        text.push_str(&format!(
            "  - name: {name}\n    source: {{type: cron, properties: {{schedule: \"0 0 1 1 *\"}}}}\n    \
             destinations: [{{type: webhook, properties: {{url: \"http://192.0.2.1/\", headers: {{X-Token: {{file: {file}}}}}}}}}]\n"
        ));
    }
    text
}

#[test]
fn the_controller_refuses_file_credentials_alike_for_existing_and_missing_paths_unless_allowed() {
    let env = Env::new("credential-files");
    env.install_trigger_service_crd();
    let allowed = tempfile::tempdir().unwrap();
    std::fs::write(allowed.path().join("token"), "t0ken").unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("token"), "not-for-tenants").unwrap();
    let inside = allowed.path().join("token").display().to_string();
    let existing = elsewhere.path().join("token").display().to_string();
    let missing = elsewhere.path().join("missing").display().to_string();
    let sibling = elsewhere.path().file_name().unwrap().to_string_lossy().to_string();
    let escape = format!("{}/../{sibling}/token", allowed.path().display());
    let token = "/var/run/secrets/kubernetes.io/serviceaccount/token";
    let service = file_headers(&[
        ("inside", &inside),
        ("existing", &existing),
        ("missing", &missing),
        ("escape", &escape),
        ("token", token),
    ]);

    let refusing = env.start_controller(&[], &[]);
    env.apply(&env.namespace, &service);
    let message = |trigger: &str, path: &str| {
        let status = env.wait_trigger("files", trigger, "the file refused", |t| t["ready"] == false);
        // The message without the trigger's position (`triggers[N].destinations[0]: `).
        let error = last_error(&status).replace(path, "PATH");
        error.find("properties.").map_or(error.clone(), |at| error[at..].to_string())
    };
    let expected = message("missing", &missing);
    assert!(expected.starts_with("properties.headers.X-Token: file PATH cannot be read"), "{expected}");
    assert!(expected.contains("--allow-credential-files"), "{expected}");
    assert_eq!(message("existing", &existing), expected);
    assert_eq!(message("inside", &inside), expected);
    assert_eq!(message("token", token), expected);
    assert_eq!(refusing.stop(), Some(0));

    let running = env.start_controller(&["--allow-credential-files", allowed.path().to_str().unwrap()], &[]);
    env.wait_trigger("files", "inside", "the allowed file read", |t| t["ready"] == true);
    assert_eq!(message("existing", &existing), expected);
    assert_eq!(message("escape", &escape), expected, "`..` does not lead out of the allowed directory");
    assert_eq!(message("token", token), expected);
    let (_, services) = env.kubectl(&["get", "triggerservices", "-n", &env.namespace, "-o", "json"]);
    assert!(!services.contains("not-for-tenants") && !services.contains("t0ken"), "no file content in status");
    assert_eq!(running.stop(), Some(0));
}
