//! `ktrigger controller --serve khook,kube-trigger`: khook Hooks and kube-trigger TriggerServices
//! applied with kubectl run without being converted by hand, on the test cluster or on the cluster
//! of `KTRIGGER_TEST_KUBECONFIG`, with the CRDs and RBAC of config/compat.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cluster::{CONTROLLER_ACCOUNT, Env, WAIT};
use support::{PythonServer, json_lines, repo, wait_for_lines};

/// Installs the CRDs of config/compat (kept afterwards: other tests and users may rely on them)
/// and, on a real cluster, binds its ClusterRole to the controller's ServiceAccount; the guard
/// removes that binding.
fn install_compat(env: &Env) -> Binding<'_> {
    for crd in ["kagent.dev_hooks.yaml", "standard.oam.dev_triggerservices.yaml"] {
        let path = repo().join("config/compat").join(crd);
        let (ok, text) = env.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", path.to_str().unwrap()]);
        assert!(ok, "{text}");
    }
    for crd in ["crd/hooks.kagent.dev", "crd/triggerservices.standard.oam.dev"] {
        let (ok, text) = env.kubectl(&["wait", "--for", "condition=established", crd, "--timeout=30s"]);
        assert!(ok, "{text}");
    }
    let name = format!("{}-compat", env.namespace);
    if !env.external() {
        return Binding { env, name: None };
    }
    env.controller_kubeconfig();
    let role = repo().join("config/compat/role.yaml");
    let (ok, text) = env.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", role.to_str().unwrap()]);
    assert!(ok, "{text}");
    let subject = format!("{}:{CONTROLLER_ACCOUNT}", env.namespace);
    let (ok, text) = env.kubectl(&[
        "create",
        "clusterrolebinding",
        &name,
        "--clusterrole=ktrigger-controller-compat",
        &format!("--serviceaccount={subject}"),
    ]);
    assert!(ok, "{text}");
    Binding { env, name: Some(name) }
}

/// A ClusterRoleBinding made by a test, deleted when dropped.
struct Binding<'a> {
    env: &'a Env,
    name: Option<String>,
}

impl Drop for Binding<'_> {
    fn drop(&mut self) {
        if let Some(name) = &self.name {
            let _ = self.env.kubectl(&["delete", "clusterrolebinding", name, "--ignore-not-found"]);
        }
    }
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

fn backoff_event(namespace: &str, count: u32, last: &str) -> String {
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "web-0.restart"},
        "type": "Warning", "count": count, "source": {"component": "kubelet"},
        "firstTimestamp": "2026-11-22T10:00:00Z", "lastTimestamp": last,
        "reason": "BackOff", "message": "Back-off restarting failed container app in pod web-0",
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": "web-0", "namespace": namespace},
    });
    serde_yaml::to_string(&event).unwrap()
}

/// `kubectl get KIND NAME -o json`, or null.
fn object(env: &Env, kind: &str, name: &str) -> Value {
    let (ok, text) = env.kubectl(&["get", kind, name, "-n", &env.namespace, "-o", "json"]);
    if ok { serde_json::from_str(&text).unwrap() } else { Value::Null }
}

/// Waits until `check` holds for the object, and returns it.
fn wait_object(env: &Env, kind: &str, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let value = object(env, kind, name);
        if check(&value) {
            return value;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}: {:#}", value["status"]);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The reasons and notes of the Kubernetes Events about the `kind` `name`.
fn events_about(env: &Env, kind: &str, name: &str) -> Vec<(String, String)> {
    let (ok, text) = env.kubectl(&["get", "events.events.k8s.io", "-n", &env.namespace, "-o", "json"]);
    assert!(ok, "{text}");
    let list: Value = serde_json::from_str(&text).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["regarding"]["kind"] == kind && e["regarding"]["name"] == name)
        .map(|e| (e["reason"].as_str().unwrap_or("").to_string(), e["note"].as_str().unwrap_or("").to_string()))
        .collect()
}

fn wait_hook_event(env: &Env, name: &str, reason: &str) -> Vec<(String, String)> {
    wait_event(env, "Hook", name, reason)
}

fn wait_event(env: &Env, kind: &str, name: &str, reason: &str) -> Vec<(String, String)> {
    let start = Instant::now();
    loop {
        let events = events_about(env, kind, name);
        if events.iter().any(|(r, _)| r == reason) {
            return events;
        }
        assert!(start.elapsed() < WAIT, "no {reason} Event about {kind} {name}: {events:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

const HOOK: &str = "apiVersion: kagent.dev/v1alpha2
kind: Hook
metadata:
  name: pod-monitoring
spec:
  eventConfigurations:
  - eventType: pod-restart
    agentRef: {name: k8s-agent, namespace: kagent}
    prompt: 'Pod {{.ResourceName}} in {{.Namespace}} restarted at {{.EventTime}}: {{.EventMessage}}'
";

/// khook with this Hook would call agent kagent/k8s-agent once for the BackOff Event with the
/// prompt filled in, show the event as firing in the Hook's status, record EventFiring and
/// AgentCallSuccess Events, and ignore the repeat within 10 minutes with DuplicateEventIgnored.
#[test]
fn a_hook_applied_with_kubectl_calls_the_agent_once_and_reports_as_khook() {
    let env = Env::new("serve-khook");
    let ns = env.namespace.clone();
    env.install_trigger_service_crd();
    let _binding = install_compat(&env);
    let agent = agent();
    let url = format!("http://127.0.0.1:{}", agent.port);
    let running =
        env.start_controller(&["--serve", "khook", "--khook-kagent-url", &url, "--egress-allow", "127.0.0.1/32"], &[]);
    env.apply(&ns, HOOK);
    wait_object(&env, "hook", "pod-monitoring", "the Hook's triggers running", |hook| {
        hook["status"]["conditions"][0]["status"] == "True"
    });

    env.apply(&ns, &backoff_event(&ns, 1, "2026-11-22T10:00:00Z"));
    wait_for_lines(&agent.output, 2, WAIT);
    let hook = wait_object(&env, "hook", "pod-monitoring", "the active event", |hook| {
        hook["status"]["activeEvents"].as_array().is_some_and(|a| !a.is_empty())
    });
    let active = &hook["status"]["activeEvents"][0];
    assert_eq!((active["eventType"].as_str(), active["resourceName"].as_str()), (Some("pod-restart"), Some("web-0")));
    assert_eq!(active["status"], "firing");
    assert!(active["firstSeen"].is_string() && active["lastSeen"].is_string(), "{hook:#}");
    assert!(hook["status"]["lastUpdated"].is_string(), "{hook:#}");
    wait_hook_event(&env, "pod-monitoring", "AgentCallSuccess");
    let events = wait_hook_event(&env, "pod-monitoring", "EventFiring");
    let firing = events.iter().find(|(r, _)| r == "EventFiring").unwrap();
    assert!(firing.1.starts_with(&format!("trigger pod-restart: event pod-restart:{ns}:web-0 firing")), "{firing:?}");

    // lastSeen has whole seconds, as khook's: a repeat within the second of the first sighting
    // leaves the status as it was, and the audit trail tells repeats by the status alone.
    std::thread::sleep(Duration::from_millis(1100));
    env.apply(&ns, &backoff_event(&ns, 5, "2026-11-22T10:04:00Z"));
    let events = wait_hook_event(&env, "pod-monitoring", "DuplicateEventIgnored");
    let duplicate = events.iter().find(|(r, _)| r == "DuplicateEventIgnored").unwrap();
    assert!(
        duplicate.1.contains(&format!("duplicate of firing event pod-restart:{ns}:web-0 ignored")),
        "{duplicate:?}"
    );

    let runs: Vec<Value> = json_lines(&agent.output).into_iter().filter(|r| r["kind"] == "message").collect();
    assert_eq!(runs.len(), 1, "one message/send, the repeat ignored: {runs:#?}");
    assert_eq!(
        runs[0]["text"],
        format!(
            "Pod web-0 in {ns} restarted at 2026-11-22T10:00:00Z: Back-off restarting failed container app in pod web-0"
        )
    );
    assert_eq!(running.stop(), Some(0));
}

/// kube-trigger with triggerservice-bump-app.yaml bumps Application this-will-be-updated-1 when
/// ConfigMap this-will-trigger-update-1 is edited; the same object applied as it is does that
/// under `--serve kube-trigger`, and its status says it runs.
#[test]
fn a_kube_trigger_trigger_service_applied_with_kubectl_bumps_the_application() {
    let env = Env::new("serve-kube-trigger");
    let ns = env.namespace.clone();
    env.install_trigger_service_crd();
    let _binding = install_compat(&env);
    install_application_crd(&env);
    if env.external() {
        // What an operator grants for kube-trigger's action: Applications are outside `edit`.
        env.apply(
            &ns,
            &format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: bump-apps}}\n\
                 rules: [{{apiGroups: [core.oam.dev], resources: [applications], verbs: [get, list, patch, update]}}]\n\
                 ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: bump-apps}}\n\
                 roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: bump-apps}}\n\
                 subjects: [{{kind: ServiceAccount, name: {CONTROLLER_ACCOUNT}, namespace: {ns}}}]\n"
            ),
        );
    }
    let running = env.start_controller(&["--serve", "kube-trigger"], &[]);
    let original = std::fs::read_to_string(repo().join("tests/upstream/kube-trigger/triggerservice-bump-app.yaml"));
    env.apply(&ns, &original.unwrap().replace("namespace: default", &format!("namespace: {ns}")));
    let sample = std::fs::read_to_string(repo().join("tests/upstream/kube-trigger/sample.yaml")).unwrap();
    let documents: Vec<&str> =
        sample.split("\n---").filter(|d| d.contains("kind: ConfigMap") || d.contains("kind: Application")).collect();
    let documents = documents.join("\n---\n").replace("\"default\"", "default");
    env.apply(&ns, &documents.replace("namespace: default", &format!("namespace: {ns}")));
    let kind = "triggerservices.standard.oam.dev";
    let service = wait_object(&env, kind, "kubetrigger-sample-config", "Ready", |o| {
        o["status"]["conditions"][0]["status"] == "True"
    });
    assert_eq!(service["status"]["readyTriggers"], "1/1", "{service:#}");
    let events = wait_event(&env, "TriggerService", "kubetrigger-sample-config", "ConvertedWithChanges");
    let (_, changes) = events.iter().find(|(reason, _)| reason == "ConvertedWithChanges").unwrap();
    assert!(
        changes
            .contains("trigger trigger-0: triggers[0].filter: kube-trigger let every event through this struct-shaped"),
        "{changes}"
    );

    let patch = r#"{"data":{"content":"edited"}}"#;
    let (ok, text) =
        env.kubectl(&["patch", "configmap", "this-will-trigger-update-1", "-n", &ns, "--type=merge", "-p", patch]);
    assert!(ok, "{text}");
    let start = Instant::now();
    loop {
        let app = object(&env, "applications.core.oam.dev", "this-will-be-updated-1");
        if app["metadata"]["annotations"]["app.oam.dev/publishVersion"] == "2" {
            break;
        }
        assert!(start.elapsed() < WAIT, "Application 1 was not bumped: {app:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let service =
        wait_object(&env, kind, "kubetrigger-sample-config", "the fire counted", |o| o["status"]["fired"] == 1);
    assert!(service["status"]["lastUpdated"].is_string(), "{service:#}");
    assert_eq!(running.stop(), Some(0));
}

/// Registers KubeVela's Application kind (kept when the cluster already has it).
fn install_application_crd(env: &Env) {
    let crd = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n\
               metadata: {name: applications.core.oam.dev}\n\
               spec:\n  group: core.oam.dev\n  scope: Namespaced\n\
               \x20 names: {plural: applications, singular: application, kind: Application, shortNames: [app]}\n\
               \x20 versions:\n  - name: v1beta1\n    served: true\n    storage: true\n\
               \x20   schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}\n";
    let (_dir, path) = support::write_config(crd);
    let (ok, text) = env.kubectl(&["apply", "-f", path.to_str().unwrap()]);
    assert!(ok || text.contains("AlreadyExists"), "{text}");
    let (ok, text) =
        env.kubectl(&["wait", "--for", "condition=established", "crd/applications.core.oam.dev", "--timeout=30s"]);
    assert!(ok, "{text}");
}
