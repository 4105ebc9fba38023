//! What a TriggerService may read from the controller's process and where its sources and
//! destinations may connect: credential references to files, the egress policy on every
//! connection, redirects, and the http-poller's response limits. Controller tests run on the test
//! cluster or on the cluster of `KTRIGGER_TEST_KUBECONFIG`; the others use `ktrigger run`.

mod support;

use support::cluster::{Env, WAIT};
use support::http_server::{Answer, TestServer as Server};
use support::{Running, last_error, write_config};

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
        server.written(),
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
