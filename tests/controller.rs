//! `ktrigger controller` end to end: the real binary reconciling TriggerServices applied with
//! the real kubectl, on the test cluster or on the cluster of `KTRIGGER_TEST_KUBECONFIG`.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::cluster::{Env, WAIT};
use support::{Running, get, post, write_config};

fn status(env: &Env) -> Value {
    let (ok, text) = env.kubectl(&["get", "triggerservice", "svc", "-n", &env.namespace, "-o", "json"]);
    if !ok {
        return Value::Null;
    }
    serde_json::from_str::<Value>(&text).map(|object| object["status"].clone()).unwrap_or(Value::Null)
}

fn wait_status(env: &Env, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let status = status(env);
        if check(&status) {
            return status;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}; status: {status:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tick_lines(running: &Running) -> usize {
    running.stdout.text().lines().filter(|l| l.contains("/svc/tick\"")).count()
}

const SERVICE: &str = r#"
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata:
  name: svc
spec:
  triggers:
  - name: tick
    source: {type: cron, properties: {schedule: "* * * * * *"}}
    destinations: [{type: log, properties: {includeObject: false}}]
  - name: broken
    source: {type: cron, properties: {schedule: "* * * * * *"}}
    filter: 'object.schedule =='
    destinations: [{type: log}]
  - name: configs
    source: {type: resource-watcher, properties: {apiVersion: v1, kind: ConfigMap, events: [create]}}
    destinations: [{type: log}]
"#;

#[test]
fn the_controller_runs_applied_trigger_services_and_reports_their_status() {
    let env = Env::new("controller");
    env.install_trigger_service_crd();

    let running = env.start_controller(&[], &[]);
    let health = running.url_after("health probes on ");
    assert_eq!(get(&format!("{health}/healthz")).0, 200);
    let start = Instant::now();
    while get(&format!("{health}/readyz")).0 != 200 {
        assert!(start.elapsed() < WAIT, "readyz never turned ready:\n{}", running.stderr.text());
        std::thread::sleep(Duration::from_millis(100));
    }

    let (_dir, path) = write_config(SERVICE);
    let (ok, text) = env.kubectl(&["apply", "-n", &env.namespace, "-f", path.to_str().unwrap()]);
    assert!(ok, "kubectl apply of the TriggerService: {text}");
    running.stdout.wait_until("deliveries of the valid trigger", WAIT, |t| t.contains("/svc/tick\""));
    let status = wait_status(&env, "Ready=False naming the broken trigger", |s| {
        s["conditions"][0]["status"] == "False" && s["readyTriggers"] == "2/3"
    });
    assert_eq!(status["conditions"][0]["reason"], "InvalidTriggers");
    let message = status["conditions"][0]["message"].as_str().unwrap();
    assert!(message.starts_with("trigger broken: triggers[1].filter: line 1, column"), "{message}");
    assert_eq!(status["observedGeneration"], 1);
    let ready = &status["conditions"][0];
    assert_eq!((ready["type"].as_str(), ready["observedGeneration"].as_i64()), (Some("Ready"), Some(1)), "{ready}");
    assert!(ready["lastTransitionTime"].as_str().is_some_and(|t| t.ends_with('Z')), "metav1.Condition: {ready}");

    let metrics = running.url_after("metrics on ");
    let (code, text) = get(&metrics);
    assert_eq!(code, 200);
    let fired =
        format!("ktrigger_trigger_fired_total{{namespace=\"{}\",service=\"svc\",trigger=\"tick\"}}", env.namespace);
    assert!(text.contains(&fired), "{fired} missing from:\n{text}");
    assert!(text.contains("ktrigger_triggers_running 2"), "{text}");
    assert!(text.contains("ktrigger_watches_open 1"), "the ConfigMap trigger's watch is open:\n{text}");
    // Nothing breaks the test cluster's watches here; a real cluster may time one out.
    let restarts = if env.external() { "ktrigger_watch_restarts_total " } else { "ktrigger_watch_restarts_total 0" };
    assert!(text.contains(restarts), "{restarts} missing from:\n{text}");
    let latency = format!(
        "ktrigger_delivery_latency_seconds_count{{namespace=\"{}\",service=\"svc\",trigger=\"tick\"}}",
        env.namespace
    );
    assert!(text.contains(&latency), "{latency} missing from:\n{text}");
    let delivered = format!(
        "ktrigger_destination_delivered_total{{namespace=\"{}\",service=\"svc\",trigger=\"tick\",destination=\"log#0\"}}",
        env.namespace
    );
    assert!(text.contains(&delivered), "{delivered} missing from:\n{text}");
    for gauge in ["ktrigger_trigger_services{state=\"not_ready\"} 1", "ktrigger_triggers{state=\"invalid\"} 1"] {
        assert!(text.contains(gauge), "{gauge} missing from:\n{text}");
    }
    assert!(text.contains("ktrigger_triggers{state=\"ready\"} 2"), "{text}");
    let build = format!("ktrigger_build_info{{version=\"{}\",commit=\"", env!("CARGO_PKG_VERSION"));
    assert!(text.contains(&build), "{build} missing from:\n{text}");

    let (ok, table) = env.kubectl(&["get", "kts", "-n", &env.namespace]);
    assert!(ok, "{table}");
    let header = table.lines().next().unwrap_or_default();
    for column in ["NAME", "READY", "TRIGGERS", "FIRED", "FAILED", "AGE"] {
        assert!(header.contains(column), "printer column {column} missing:\n{table}");
    }
    assert!(table.contains("2/3"), "{table}");
    let row: Vec<&str> = table.lines().find(|l| l.starts_with("svc ")).unwrap_or_default().split_whitespace().collect();
    assert_eq!(row.get(1), Some(&"False"), "the READY column reads the Ready condition:\n{table}");
    let (ok, all) = env.kubectl(&["get", "ktrigger", "-n", &env.namespace]);
    assert!(ok && all.contains("svc"), "TriggerServices are in the `ktrigger` category:\n{all}");

    let (ok, text) = env.kubectl(&["delete", "triggerservice", "svc", "-n", &env.namespace]);
    assert!(ok, "{text}");
    std::thread::sleep(Duration::from_millis(1500));
    let after_delete = tick_lines(&running);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(tick_lines(&running), after_delete, "a deleted TriggerService's triggers stop");
    let (_, text) = get(&metrics);
    assert!(text.contains("ktrigger_watches_open 0"), "the deleted trigger's watch is closed:\n{text}");
    if let Some(cluster) = &env.cluster {
        assert_eq!(cluster.open_watches_for("configmaps"), 0, "no ConfigMap watch is left open");
    }
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn the_controller_refuses_to_start_without_a_cluster() {
    let output = support::ktrigger()
        .args(["controller", "--kubeconfig", "/nonexistent/kubeconfig", "--health-addr", "127.0.0.1:0"])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .args(["--webhook-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the controller needs a cluster"), "{stderr}");
    assert!(stderr.contains("/nonexistent/kubeconfig"), "the reason names the kubeconfig: {stderr}");
}

#[test]
fn secret_refresh_takes_zero_to_read_secrets_only_when_a_trigger_service_changes() {
    let output = support::ktrigger()
        .args(["controller", "--kubeconfig", "/nonexistent/kubeconfig", "--secret-refresh", "0s"])
        .args(["--health-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--webhook-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("--secret-refresh"), "0s is accepted: {stderr}");
    assert!(stderr.contains("the controller needs a cluster"), "it goes on to look for a cluster: {stderr}");
}

fn wait_for_tick(running: &Running, more_than: usize) {
    running
        .stdout
        .wait_until("deliveries", WAIT, |t| t.lines().filter(|l| l.contains("/svc/tick\"")).count() > more_than);
}

#[test]
fn only_the_leader_delivers_and_a_follower_takes_over_when_it_dies() {
    let env = Env::new("leader");
    env.install_trigger_service_crd();
    let args = [
        "--kubeconfig",
        env.controller_kubeconfig(),
        "--watch-namespaces",
        &env.namespace,
        "--leader-elect",
        "--lease-namespace",
        &env.namespace,
        "--lease-duration",
        "3s",
    ];
    let leader = Running::start_controller(&args);
    leader.stderr.wait_for("leading (lease", WAIT);
    let follower = Running::start_controller(&args);
    assert!(follower.stderr.text().contains("waiting to lead"), "{}", follower.stderr.text());

    let (_dir, path) = write_config(SERVICE);
    assert!(env.kubectl(&["apply", "-n", &env.namespace, "-f", path.to_str().unwrap()]).0);
    wait_for_tick(&leader, 2);
    assert_eq!(tick_lines(&follower), 0, "the follower delivers nothing while the leader runs");

    leader.kill();
    follower.stderr.wait_for("leading (lease", WAIT);
    wait_for_tick(&follower, 1);
    assert_eq!(follower.stop(), Some(0));
}

fn configmap_data(env: &Env, namespace: &str, name: &str) -> Value {
    let (ok, text) = env.kubectl(&["get", "configmap", name, "-n", namespace, "-o", "json"]);
    assert!(ok, "{text}");
    serde_json::from_str::<Value>(&text).unwrap()["data"].clone()
}

fn patch_trigger(name: &str, namespace: &str) -> String {
    format!(
        r#"
  - name: {name}
    source: {{type: cron, properties: {{schedule: "* * * * * *"}}}}
    destinations:
    - type: patch-resource
      properties: {{apiVersion: v1, kind: ConfigMap, name: target, namespace: {namespace}, patch: {{data: {{touched: "yes"}}}}}}
      retry: {{maxAttempts: 1}}"#
    )
}

#[test]
fn mutations_stay_in_their_namespace_unless_a_service_account_is_named() {
    let env = Env::new("identity");
    let other = format!("{}-other", env.namespace);
    let _cleanup = support::cluster::NamespaceGuard::create(&env, &other);
    for namespace in [env.namespace.as_str(), other.as_str()] {
        env.apply(namespace, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: target}\ndata: {v: \"1\"}\n");
    }
    env.install_trigger_service_crd();
    let running = env.start_controller(&[], &[]);

    // Without serviceAccountName: the controller's identity, in the TriggerService's namespace only.
    let own = format!(
        "apiVersion: ktrigger.dev/v1alpha1\nkind: TriggerService\nmetadata: {{name: own}}\nspec:\n  triggers:{}{}\n",
        patch_trigger("home", &env.namespace),
        patch_trigger("away", &other)
    );
    env.apply(&env.namespace, &own);
    let away =
        env.wait_trigger("own", "away", "a refused cross-namespace patch", |t| t["deadLettered"].as_u64() >= Some(1));
    let error = away["lastError"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("namespace {other:?} is outside the TriggerService's namespace")), "{away:#}");
    env.wait_trigger("own", "home", "a patch at home", |t| t["fired"].as_u64() >= Some(1));
    let start = Instant::now();
    while configmap_data(&env, &env.namespace, "target")["touched"] != "yes" {
        assert!(start.elapsed() < WAIT, "the patch in the TriggerService's own namespace was not made");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(configmap_data(&env, &other, "target")["touched"].is_null(), "nothing was patched elsewhere");
    assert!(env.kubectl(&["delete", "triggerservice", "own", "-n", &env.namespace]).0);

    // With serviceAccountName: the ServiceAccount's identity; what it may not do is refused by
    // the API server, reported, and not performed.
    env.apply(&env.namespace, "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: robot}\n");
    if let Some(cluster) = &env.cluster {
        // The test cluster has no RBAC: refuse the patch the way an unbound ServiceAccount would be.
        cluster.faults().forbid("patch", "configmaps");
    }
    let as_robot = format!(
        "apiVersion: ktrigger.dev/v1alpha1\nkind: TriggerService\nmetadata: {{name: robot}}\nspec:\n  serviceAccountName: robot\n  triggers:{}\n",
        patch_trigger("away", &other)
    );
    env.apply(&env.namespace, &as_robot);
    let away = env.wait_trigger("robot", "away", "a forbidden patch", |t| t["deadLettered"].as_u64() >= Some(1));
    assert!(away["lastError"].as_str().unwrap_or_default().contains("forbidden"), "{away:#}");
    assert!(configmap_data(&env, &other, "target")["touched"].is_null(), "the forbidden patch was not performed");
    if let Some(cluster) = &env.cluster {
        let user = format!("system:serviceaccount:{}:robot", env.namespace);
        let impersonated = cluster.requests().iter().any(|r| {
            r.method == "PATCH"
                && r.uri.contains(&format!("/namespaces/{other}/configmaps/target"))
                && r.impersonate_user.as_deref() == Some(user.as_str())
        });
        assert!(impersonated, "the patch was sent as {user}");
        cluster.faults().allow("patch", "configmaps");
    }
    assert_eq!(running.stop(), Some(0));
}

fn secret_hook(service: &str, path: &str, account: Option<&str>) -> String {
    let account = account.map(|a| format!("  serviceAccountName: {a}\n")).unwrap_or_default();
    format!(
        r#"apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {{name: {service}}}
spec:
{account}  triggers:
  - name: hook
    source:
      type: webhook
      properties:
        path: {path}
        auth: {{type: bearer, tokenFrom: {{secretKeyRef: {{name: hook-auth, key: token}}}}}}
    destinations: [{{type: log}}]
"#
    )
}

#[test]
fn secret_key_refs_are_read_as_the_trigger_service_identity_retried_and_refreshed() {
    let env = Env::new("secrets");
    env.install_trigger_service_crd();
    let running = env.start_controller(&["--secret-refresh", "1s"], &[]);
    let path = format!("/hooks/{}", env.namespace);

    // The Secret does not exist yet: the trigger is not loaded, and its status says why.
    env.apply(&env.namespace, &secret_hook("own", &path, None));
    let hook = env.wait_trigger("own", "hook", "the missing Secret reported", |t| t["ready"] == false);
    let expected = format!("Secret {}/hook-auth not found", env.namespace);
    assert!(hook["lastError"].as_str().unwrap_or_default().contains(&expected), "{hook:#}");

    // Once it exists, the controller reads it again and the trigger starts.
    let token = format!("s3cr3t-{}", support::cluster::uuid_suffix());
    env.apply(
        &env.namespace,
        &format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: hook-auth}}\nstringData: {{token: {token}}}\n"),
    );
    env.wait_trigger("own", "hook", "the trigger loaded with the Secret", |t| t["ready"] == true);
    let url = format!("{}/{}/own{path}", running.webhook_url(), env.namespace);
    let body = r#"{"deploy": "checkout"}"#;
    assert_eq!(post(&url, &[("Authorization", "Bearer wrong")], body).0, 401);
    let (code, text) = post(&url, &[("Authorization", &format!("Bearer {token}"))], body);
    assert!((200..300).contains(&code), "{code} {text}");
    running.stdout.wait_for("checkout", WAIT);

    // A rotated Secret is read again without any change to the TriggerService.
    let rotated = format!("r0tated-{}", support::cluster::uuid_suffix());
    env.apply(
        &env.namespace,
        &format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: hook-auth}}\nstringData: {{token: {rotated}}}\n"),
    );
    let start = Instant::now();
    while post(&url, &[("Authorization", &format!("Bearer {rotated}"))], body).0 == 401 {
        assert!(start.elapsed() < WAIT, "the rotated token was never accepted");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(post(&url, &[("Authorization", &format!("Bearer {token}"))], body).0, 401, "the old token is refused");

    // As a ServiceAccount: read with its identity; a refusal is reported, naming it.
    env.apply(&env.namespace, "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: robot}\n");
    if let Some(cluster) = &env.cluster {
        // The test cluster has no RBAC: refuse the read the way an unbound ServiceAccount would be.
        cluster.faults().forbid("get", "secrets");
    }
    env.apply(&env.namespace, &secret_hook("robot", &format!("{path}-robot"), Some("robot")));
    let hook = env.wait_trigger("robot", "hook", "the refused read reported", |t| t["ready"] == false);
    let refused = format!("as ServiceAccount {}/robot was refused", env.namespace);
    assert!(hook["lastError"].as_str().unwrap_or_default().contains(&refused), "{hook:#}");
    if let Some(cluster) = &env.cluster {
        let user = format!("system:serviceaccount:{}:robot", env.namespace);
        let impersonated = cluster.requests().iter().any(|r| {
            r.method == "GET" && r.uri.contains("/secrets/hook-auth") && r.impersonate_user.as_deref() == Some(&user)
        });
        assert!(impersonated, "the Secret was read as {user}");
    }

    // The value is nowhere but on the wire.
    let (ok, events) = env.kubectl(&["get", "events.events.k8s.io", "-n", &env.namespace, "-o", "json"]);
    assert!(ok, "{events}");
    let (ok, services) = env.kubectl(&["get", "triggerservices", "-n", &env.namespace, "-o", "json"]);
    assert!(ok, "{services}");
    assert!(events.contains("InvalidTrigger"), "the missing Secret was reported as an Event: {events}");
    let (logs, output) = (running.stderr.clone(), running.stdout.clone());
    assert_eq!(running.stop(), Some(0));
    for (place, text) in [("Events", events), ("status", services), ("logs", logs.text()), ("output", output.text())] {
        assert!(!text.contains(&token) && !text.contains(&rotated), "the Secret's value appears in {place}");
    }
}

#[test]
fn controller_with_log_format_json_prints_only_json_lines() {
    let env = Env::new("json-logs");
    env.install_trigger_service_crd();
    let running = env.start_controller(&["--log-format", "json"], &[]);
    env.apply(&env.namespace, SERVICE);
    wait_status(&env, "the broken trigger reported", |s| s["readyTriggers"] == "2/3");
    let health = running.url_after("health probes on ");
    assert_eq!(get(&format!("{health}/healthz")).0, 200);
    let stderr = running.stderr.text();
    assert_eq!(running.stop(), Some(0));
    let lines = support::json_log_lines(&stderr);
    let messages: Vec<&str> = lines.iter().filter_map(|l| l["fields"]["message"].as_str()).collect();
    for expected in
        ["kubernetes cluster", "webhook listener on http://", "metrics on http://", "ktrigger controller reconciling"]
    {
        assert!(messages.iter().any(|m| m.starts_with(expected)), "{expected} missing from {messages:#?}");
    }
    assert!(messages.iter().any(|m| m.starts_with("skipped trigger") && m.contains("/svc/broken")), "{messages:#?}");
}

#[test]
fn status_shows_each_trigger_from_the_cluster_also_as_a_kubectl_plugin() {
    let env = Env::new("status-view");
    env.install_trigger_service_crd();
    let running = env.start_controller(&[], &[]);
    env.apply(&env.namespace, SERVICE);
    wait_status(&env, "the tick trigger fired", |s| {
        s["readyTriggers"] == "2/3"
            && s["triggers"].as_array().is_some_and(|t| t.iter().any(|t| t["fired"].as_u64() > Some(0)))
    });
    let status = |args: &[&str]| {
        let output = support::ktrigger()
            .args(["status", "--kubeconfig", env.kubeconfig(), "-n", &env.namespace])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let table = status(&[]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAMESPACE") && lines[0].contains("SOURCE → FILTER → DESTINATIONS"), "{table}");
    assert_eq!(lines.len(), 4, "a header and one line per trigger:\n{table}");
    let tick = lines.iter().find(|l| l.contains(" tick ")).unwrap_or_else(|| panic!("{table}"));
    assert!(tick.contains("svc") && tick.contains("False") && tick.contains("cron → log"), "{tick}");
    let broken = lines.iter().find(|l| l.contains("broken (not running)")).unwrap_or_else(|| panic!("{table}"));
    assert!(broken.contains("cron → filter → log"), "{broken}");

    let rows: Value = serde_json::from_str(&status(&["svc", "-o", "json"])).unwrap();
    let tick = rows.as_array().unwrap().iter().find(|r| r["trigger"] == "tick").unwrap();
    assert_eq!((tick["service"].as_str(), tick["running"].as_bool()), (Some("svc"), Some(true)), "{tick}");
    assert!(tick["fired"].as_u64() > Some(0) && tick["lastFired"].is_string(), "{tick}");

    // Installed as kubectl-ktrigger on the PATH, it is a kubectl plugin.
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ktrigger"), bin.path().join("kubectl-ktrigger")).unwrap();
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
    let output = std::process::Command::new("kubectl")
        .args(["ktrigger", "status", "-n", &env.namespace])
        .env("PATH", path)
        .env("KUBECONFIG", env.kubeconfig())
        .output()
        .unwrap();
    let plugin = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{plugin}{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(plugin.lines().count(), 4, "{plugin}");
    assert!(plugin.contains("broken (not running)"), "{plugin}");
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn counters_are_written_at_most_once_per_status_interval_and_an_idle_status_not_at_all() {
    let env = Env::new("status-rate");
    env.install_trigger_service_crd();
    let args = ["--kubeconfig", env.controller_kubeconfig(), "--watch-namespaces", &env.namespace];
    let running = Running::start_controller(&[&args[..], &["--status-interval", "3s"]].concat());
    env.apply(
        &env.namespace,
        r#"
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {name: svc}
spec:
  triggers:
  - name: tick
    source: {type: cron, properties: {schedule: "* * * * * *"}}
    destinations: [{type: log, properties: {includeObject: false}}]
---
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {name: idle}
spec:
  triggers:
  - name: hook
    source: {type: webhook, properties: {path: /idle}}
    destinations: [{type: log}]
"#,
    );
    let version = |name: &str| {
        let (ok, text) = env.kubectl(&["get", "kts", name, "-n", &env.namespace, "-o", "json"]);
        let object: Value = if ok { serde_json::from_str(&text).unwrap_or(Value::Null) } else { Value::Null };
        let ready = object["status"]["conditions"][0]["status"] == "True";
        (ready, object["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string())
    };
    let start = Instant::now();
    while !(version("svc").0 && version("idle").0) {
        assert!(start.elapsed() < WAIT, "both Ready:\n{}", running.stderr.text());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let (mut busy, mut idle) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(9) {
        busy.insert(version("svc").1);
        idle.insert(version("idle").1);
        std::thread::sleep(Duration::from_millis(100));
    }
    // 9 s at one write per 3 s: at most 4 versions seen (the one before, then up to 3 writes).
    assert!((2..=4).contains(&busy.len()), "{} versions of a firing TriggerService in 9 s: {busy:?}", busy.len());
    assert_eq!(idle.len(), 1, "an idle TriggerService's status is not rewritten: {idle:?}");
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn delivery_metrics_say_which_destination_fails() {
    let env = Env::new("destination-metrics");
    env.install_trigger_service_crd();
    let running = env.start_controller(&[], &[]);
    env.apply(
        &env.namespace,
        r#"
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {name: svc}
spec:
  triggers:
  - name: tick
    source: {type: cron, properties: {schedule: "* * * * * *"}}
    destinations:
    - {type: log, properties: {includeObject: false}}
    - type: webhook
      properties: {url: "http://127.0.0.1:9/closed"}
      retry: {maxAttempts: 1}
"#,
    );
    let metrics = running.url_after("metrics on ");
    let series = |name: &str, destination: &str| {
        format!(
            "{name}{{namespace=\"{}\",service=\"svc\",trigger=\"tick\",destination=\"{destination}\"}}",
            env.namespace
        )
    };
    let value = |text: &str, series: &str| -> Option<u64> {
        text.lines().find_map(|line| line.strip_prefix(series)).and_then(|rest| rest.trim().parse().ok())
    };
    let start = Instant::now();
    let text = loop {
        let (_, text) = get(&metrics);
        let dead = value(&text, &series("ktrigger_destination_dead_lettered_total", "webhook#1"));
        if dead.is_some_and(|n| n > 0) {
            break text;
        }
        assert!(start.elapsed() < WAIT, "no dead letter for webhook#1:\n{text}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(value(&text, &series("ktrigger_destination_delivered_total", "log#0")).is_some_and(|n| n > 0), "{text}");
    assert_eq!(value(&text, &series("ktrigger_destination_dead_lettered_total", "log#0")), Some(0), "{text}");
    assert_eq!(value(&text, &series("ktrigger_destination_delivered_total", "webhook#1")), Some(0), "{text}");
    assert!(value(&text, &series("ktrigger_destination_failed_attempts_total", "webhook#1")).is_some_and(|n| n > 0));
    assert_eq!(running.stop(), Some(0));
}
