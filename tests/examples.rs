//! The example TriggerServices under `examples/` run by `ktrigger controller`, applied with the
//! real kubectl, on the test cluster or on the cluster of `KTRIGGER_TEST_KUBECONFIG`.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cluster::{Env, WAIT};
use support::{PythonServer, example_env, json_lines, repo, wait_for_lines};

/// The example's TriggerService documents, moved to `namespace` with the namespaces their
/// sources watch.
fn example(file: &str, namespace: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo().join("examples").join(file)).unwrap();
    text.split("\n---")
        .map(|document| serde_yaml::from_str::<Value>(document).unwrap())
        .filter(|document| document["kind"] == "TriggerService" && document["apiVersion"] == "ktrigger.dev/v1alpha1")
        .map(|mut document| {
            document["metadata"]["namespace"] = json!(namespace);
            for trigger in document["spec"]["triggers"].as_array_mut().into_iter().flatten() {
                let properties = &mut trigger["source"]["properties"];
                if properties.get("namespace").is_some() {
                    properties["namespace"] = json!(namespace);
                }
            }
            document
        })
        .collect()
}

/// `--allow-credential-env` for every variable the examples read credentials from (the controller
/// refuses `{env: NAME}` references otherwise), then `extra`.
fn controller_args(extra: &[&str]) -> Vec<String> {
    let names = example_env().into_iter().flat_map(|(name, _)| ["--allow-credential-env".to_string(), name]);
    names.chain(extra.iter().map(|arg| arg.to_string())).collect()
}

/// On a real cluster, creates the ServiceAccounts the `documents` name, allowed to read the
/// whole cluster (`view`) and to edit the test namespace (`edit`); the returned guard removes
/// the cluster-wide binding. The test cluster has no RBAC: nothing to grant there.
fn grant_service_accounts<'a>(env: &'a Env, documents: &[Value]) -> Bindings<'a> {
    let mut bindings = Bindings { env, names: Vec::new() };
    if !env.external() {
        return bindings;
    }
    let ns = &env.namespace;
    for account in documents.iter().filter_map(|d| d["spec"]["serviceAccountName"].as_str()) {
        let binding = format!("{ns}-{account}-view");
        env.apply(
            ns,
            &format!(
                "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {account}}}\n---\n\
                 apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {account}-edit}}\n\
                 roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}}\n\
                 subjects: [{{kind: ServiceAccount, name: {account}, namespace: {ns}}}]\n---\n\
                 apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {binding}}}\n\
                 roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}}\n\
                 subjects: [{{kind: ServiceAccount, name: {account}, namespace: {ns}}}]\n"
            ),
        );
        bindings.names.push(binding);
    }
    bindings
}

/// ClusterRoleBindings made by a test, deleted when dropped.
struct Bindings<'a> {
    env: &'a Env,
    names: Vec<String>,
}

impl Drop for Bindings<'_> {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = self.env.kubectl(&["delete", "clusterrolebinding", name, "--ignore-not-found"]);
        }
    }
}

/// The TriggerService's status once its Ready condition is known.
fn wait_ready(env: &Env, name: &str) -> Value {
    let start = Instant::now();
    loop {
        let (ok, text) = env.kubectl(&["get", "triggerservice", name, "-n", &env.namespace, "-o", "json"]);
        let status = if ok { serde_json::from_str::<Value>(&text).unwrap()["status"].clone() } else { Value::Null };
        if status["conditions"][0]["status"] == "True" {
            return status;
        }
        assert!(start.elapsed() < WAIT, "TriggerService {name} never became Ready: {status:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_example_trigger_service_is_ready_under_the_controller() {
    let env = Env::new("examples");
    env.install_trigger_service_crd();
    let args = controller_args(&[]);
    let running = env.start_controller(&args.iter().map(String::as_str).collect::<Vec<_>>(), &example_env());
    // The Secret pod-doctor.yaml reads its Slack webhook URL from.
    env.apply(
        &env.namespace,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: slack-webhook}\nstringData: {url: 'https://hooks.slack.test/x'}\n",
    );
    let mut files: Vec<String> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        // examples/events/ holds sample events for `ktrigger eval`, not TriggerServices.
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    files.sort();
    let documents: Vec<Value> = files.iter().flat_map(|file| example(file, &env.namespace)).collect();
    let _bindings = grant_service_accounts(&env, &documents);
    let mut applied = Vec::new();
    for file in &files {
        for document in example(file, &env.namespace) {
            env.apply(&env.namespace, &serde_yaml::to_string(&document).unwrap());
            let name = document["metadata"]["name"].as_str().unwrap().to_string();
            let count = document["spec"]["triggers"].as_array().map_or(0, Vec::len);
            applied.push((file.clone(), name, count));
        }
    }
    assert!(applied.len() >= 15, "the examples hold TriggerServices: {applied:?}");
    for (file, name, count) in &applied {
        let status = wait_ready(&env, name);
        assert_eq!(status["readyTriggers"], format!("{count}/{count}"), "{file}: {status:#}");
        let triggers = status["triggers"].as_array().unwrap();
        assert!(triggers.iter().all(|t| t["ready"] == true && t["lastError"].is_null()), "{file}: {status:#}");
    }
    let (ok, table) = env.kubectl(&["get", "kts", "-n", &env.namespace]);
    assert!(ok, "{table}");
    assert_eq!(table.lines().count(), applied.len() + 1, "{table}");
    assert_eq!(running.stop(), Some(0));
}

/// A kagent-like A2A agent (the official `a2a-sdk`) serving agent kagent/k8s-agent.
fn agent() -> PythonServer {
    PythonServer::start(
        "a2a_agent.py",
        "import a2a.server.routes, a2a.server.request_handlers, uvicorn",
        "`a2a-sdk` (with its http-server extra) or `uvicorn` is",
        "agent.jsonl",
        &["--agent", "kagent/k8s-agent"],
    )
}

const SLACK_PATH: &str = "/services/T0TEST/B0TEST/0123456789abcdefghijklmn";

fn event(name: &str, object: Value) -> Value {
    let mut event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name},
        "type": "Warning", "count": 1, "source": {"component": "kubelet"},
        "firstTimestamp": "2026-11-22T10:00:00Z", "lastTimestamp": "2026-11-22T10:00:00Z",
    });
    for (key, value) in object.as_object().unwrap() {
        event[key] = value.clone();
    }
    event
}

#[test]
fn pod_doctor_sends_restarts_and_oom_kills_to_kagent_and_slack_once_per_window() {
    let env = Env::new("pod-doctor");
    let ns = env.namespace.clone();
    env.install_trigger_service_crd();
    let agent = agent();
    let slack = PythonServer::start(
        "slack_webhook.py",
        "import http.server",
        "python3's standard library is",
        "slack.jsonl",
        &["--path", SLACK_PATH],
    );
    let webhook_url = format!("http://127.0.0.1:{}{SLACK_PATH}", slack.port);
    env.apply(
        &ns,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: slack-webhook}}\nstringData: {{url: '{webhook_url}'}}\n"
        ),
    );
    // The agent and the Slack receiver listen on loopback, which the controller refuses by default.
    let args = controller_args(&["--egress-allow", "127.0.0.1/32"]);
    let running = env.start_controller(&args.iter().map(String::as_str).collect::<Vec<_>>(), &example_env());

    // The example as written, pointed at this namespace and the local agent.
    let mut service = example("pod-doctor.yaml", &ns).remove(0);
    let _bindings = grant_service_accounts(&env, std::slice::from_ref(&service));
    let trigger = &mut service["spec"]["triggers"][0];
    trigger["destinations"][0]["properties"]["baseUrl"] = json!(format!("http://127.0.0.1:{}", agent.port));
    env.apply(&ns, &serde_yaml::to_string(&service).unwrap());
    wait_ready(&env, "pod-doctor");

    // A crash-looping container, then the same Event counted again within the window.
    let backoff = event(
        "web-0.restart",
        json!({"reason": "BackOff", "message": "Back-off restarting failed container app in pod web-0_apps",
               "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": "web-0", "namespace": ns}}),
    );
    env.apply(&ns, &serde_yaml::to_string(&backoff).unwrap());
    let messages = wait_for_lines(&agent.output, 2, WAIT).into_iter().filter(|r| r["kind"] == "message").count();
    let slacked = wait_for_lines(&slack.output, 1, WAIT);
    let mut repeat = backoff.clone();
    repeat["count"] = json!(4);
    repeat["lastTimestamp"] = json!("2026-11-22T10:03:00Z");
    env.apply(&ns, &serde_yaml::to_string(&repeat).unwrap());
    env.wait_trigger("pod-doctor", "restarts-and-ooms", "the repeat dropped by dedup", |t| {
        t["filtered"].as_u64() >= Some(1)
    });

    // An OOM kill of another container: a new key, delivered at once.
    let oom = event(
        "worker-1.oom",
        json!({"reason": "OOMKilling", "message": "Memory cgroup out of memory: Killed process 4242 (java)",
               "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": "worker-1", "namespace": ns}}),
    );
    env.apply(&ns, &serde_yaml::to_string(&oom).unwrap());
    let status = env.wait_trigger("pod-doctor", "restarts-and-ooms", "two deliveries", |t| {
        t["fired"].as_u64() == Some(2) && t["failed"].as_u64() == Some(0)
    });

    assert_eq!(messages, 1, "one agent run for the first Event");
    let runs: Vec<Value> = json_lines(&agent.output).into_iter().filter(|r| r["kind"] == "message").collect();
    assert_eq!(runs.len(), 2, "the repeat within 10 minutes did not call the agent: {runs:#?}");
    let first = runs[0]["text"].as_str().unwrap();
    assert!(first.starts_with(&format!("AUTONOMOUS MODE: pod-restart for web-0 in namespace {ns} at ")), "{first}");
    assert!(first.contains("Reason: BackOff. Message: Back-off restarting failed container app"), "{first}");
    let second = runs[1]["text"].as_str().unwrap();
    assert!(second.starts_with("AUTONOMOUS MODE: oom-kill for worker-1"), "{second}");

    let posts = json_lines(&slack.output);
    assert_eq!(posts.len(), 2, "one Slack message per agent run: {posts:#?}");
    assert_eq!(slacked[0]["text"], "pod-restart: Pod web-0");
    assert_eq!(posts[1]["text"], "oom-kill: Pod worker-1");
    let fields = posts[0]["blocks"][2]["fields"].to_string();
    assert!(fields.contains(&format!("*Namespace*\\n{ns}")), "the namespace is one of the facts: {fields}");

    let keys: Vec<&str> = status["activeEvents"].as_array().unwrap().iter().filter_map(|e| e["key"].as_str()).collect();
    assert_eq!(keys, ["oom-kill/Pod/worker-1", "pod-restart/Pod/web-0"], "{status:#}");
    let logs = running.stderr.text();
    assert!(!logs.contains(SLACK_PATH), "the webhook URL from the Secret is never logged");
    assert_eq!(running.stop(), Some(0));
}
