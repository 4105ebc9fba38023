//! `ktrigger convert` on the public kube-trigger and khook examples (tests/upstream): every file
//! converts with a report, the output validates, and the converted examples deliver what the
//! originals would have, under the controller on the test cluster or on the cluster of
//! `KTRIGGER_TEST_KUBECONFIG`.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cluster::{CONTROLLER_ACCOUNT, Env, WAIT};
use support::{PythonServer, json_lines, ktrigger, repo, wait_for_lines, write_config};

/// Runs `ktrigger convert` with `args`: exit code, stdout, stderr.
fn convert(args: &[&str]) -> (i32, String, String) {
    let output = ktrigger().arg("convert").args(args).output().unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

/// The TriggerServices `ktrigger convert -o json` makes of an upstream file.
fn converted(file: &str) -> Vec<Value> {
    let path = repo().join("tests/upstream").join(file);
    let (code, stdout, stderr) = convert(&["-f", path.to_str().unwrap(), "-o", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let list: Value = serde_json::from_str(&stdout).unwrap();
    list["items"].as_array().unwrap().clone()
}

#[test]
fn every_upstream_file_converts_with_a_report_and_the_output_validates() {
    let upstream = repo().join("tests/upstream");
    let (code, stdout, stderr) = convert(&["-f", upstream.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let report: Vec<&str> = stderr.lines().collect();
    let expected = [
        (
            "khook/ci-cd-monitoring.yaml: document 1: trigger \"probe-failed\": spec.eventConfigurations[2].agentId:",
            "the obsolete agentId \"kagent/ci-cd-engineer\" became agentRef {name: ci-cd-engineer, namespace: kagent}",
        ),
        (
            "kube-trigger/conf-bump-app.yaml: document 1: trigger \"trigger-0\": triggers[0].filter:",
            r#"CUE "context: data: metadata: name: =~\"this-will-trigger-update-.*\"" translated to CEL "context.data.metadata.name.matches(\"this-will-trigger-update-.*\")""#,
        ),
        (
            "kube-trigger/conf-bump-app.yaml: document 1: trigger \"trigger-0\": triggers[0].filter:",
            "kube-trigger let every event through this struct-shaped filter",
        ),
        (
            "kube-trigger/conf-cronjob.yaml: document 1: trigger \"trigger-0\": triggers[0].action:",
            "absent: kube-trigger did nothing with the events; the converted trigger logs them (type: log)",
        ),
        ("kube-trigger/sample.yaml: document 1: kind:", "v1/ConfigMap is not a Hook or a TriggerService; skipped"),
        ("kube-trigger/sample.yaml:", "nothing to convert"),
        (
            "kube-trigger/triggerservice-bump-app.yaml: document 1: trigger \"trigger-0\": triggers[0].filter:",
            "kube-trigger let every event through this struct-shaped filter",
        ),
        (
            "kube-trigger/triggerservice-record-event.yaml: document 1: spec.worker:",
            "worker settings ({\"config\":\"mul\"}) are dropped",
        ),
        (
            "kube-trigger/triggerservice-record-event.yaml: document 1: trigger \"trigger-1\": triggers[1].source.properties.clusters:",
            "watching other clusters ([\"cn-shanghai\"]) is not supported yet",
        ),
        (
            "kube-trigger/triggerservice-record-event.yaml: document 1: trigger \"trigger-1\": triggers[1].action.type:",
            "sae-record-event is not supported",
        ),
    ];
    for (place, what) in expected {
        let prefix = format!("note: {}/{place} ", upstream.display());
        assert!(
            report.iter().any(|line| line.starts_with(&prefix) && line.contains(what)),
            "no report line {prefix}...{what}:\n{stderr}"
        );
    }
    assert!(!stderr.contains("error:"), "{stderr}");

    // Six Hooks (one file holds two), four kube-trigger files, two kube-trigger TriggerServices.
    let documents: Vec<Value> = stdout.split("\n---\n").map(|d| serde_yaml::from_str(d).unwrap()).collect();
    assert_eq!(documents.len(), 12, "{stdout}");
    assert!(documents.iter().all(|d| d["apiVersion"] == "ktrigger.dev/v1alpha1" && d["kind"] == "TriggerService"));
    let (_dir, path) = write_config(&stdout);
    let output = ktrigger().args(["validate", "-f", path.to_str().unwrap()]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn a_hook_becomes_one_deduplicated_kagent_trigger_per_event_type() {
    let services = converted("khook/multi-namespace-monitoring.yaml");
    assert_eq!(services.len(), 2);
    let staging = &services[0];
    assert_eq!(staging["metadata"], json!({"name": "staging-monitoring", "namespace": "staging"}));
    let triggers = staging["spec"]["triggers"].as_array().unwrap();
    let names: Vec<&str> = triggers.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["pod-restart", "probe-failed"]);
    let restart = &triggers[0];
    assert_eq!(
        restart["source"],
        json!({"type": "k8s-events", "properties": {"namespace": "staging", "presets": ["pod-restart"]}})
    );
    assert_eq!(
        restart["dedup"],
        json!({"key": "event.preset + \":\" + object.regarding.namespace + \":\" + object.regarding.name", "window": "10m"})
    );
    let kagent = &restart["destinations"][0];
    assert_eq!(kagent["type"], "kagent");
    assert_eq!(kagent["properties"]["agentRef"], json!({"name": "staging-analyzer", "namespace": "kagent"}));
    let prompt = kagent["properties"]["prompt"].as_str().unwrap();
    assert!(prompt.starts_with("AUTONOMOUS MODE: STAGING - Pod {{ (object.involvedObject or"), "{prompt}");
    assert!(!prompt.contains("{{."), "every khook placeholder is converted: {prompt}");
}

#[test]
fn an_untranslatable_filter_is_an_error_naming_the_trigger_and_the_cue_text() {
    let text = "triggers:\n- source: {type: cronjob, properties: {schedule: '* * * * *'}}\n  \
                filter: 'strings.HasPrefix(context.data.name, \"a\")'\n  action: {type: log}\n";
    let (_dir, path) = write_config(text);
    let (code, stdout, stderr) = convert(&["-f", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    let expected = format!(
        "error: {}: document 1: trigger \"trigger-0\": triggers[0].filter: not translated (line 1, column 1: \
         `strings` is not `context` or a value; kube-trigger filters see only `context`); the CUE text is kept for \
         you to rewrite in CEL: \"strings.HasPrefix(context.data.name, \\\"a\\\")\"",
        path.display()
    );
    assert!(stderr.lines().any(|line| line == expected), "{expected}\n{stderr}");
    assert!(stdout.contains("filter: strings.HasPrefix(context.data.name, \"a\")"), "{stdout}");
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

/// A core/v1 Event about Pod `pod` of `namespace`.
pub fn pod_event(name: &str, namespace: &str, pod: &str, reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name},
        "type": "Warning", "count": 1, "source": {"component": "kubelet"},
        "firstTimestamp": "2026-11-22T10:00:00Z", "lastTimestamp": "2026-11-22T10:00:00Z",
        "reason": reason, "message": message,
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod, "namespace": namespace},
    })
}

/// The status of TriggerService `name` once its Ready condition is True.
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

/// khook with basic-pod-monitoring.yaml calls agent k8s-agent once per pod restart or OOM kill of
/// a Pod of the Hook's namespace, with the prompt's placeholders filled in, and ignores repeats of
/// the same event type and Pod for 10 minutes. The converted TriggerService does the same.
#[test]
fn converted_basic_pod_monitoring_calls_the_agent_as_khook_would() {
    let env = Env::new("convert-khook");
    let ns = env.namespace.clone();
    env.install_trigger_service_crd();
    let agent = agent();
    let running = env.start_controller(&["--egress-allow", "127.0.0.1/32"], &[]);
    let mut service = converted("khook/basic-pod-monitoring.yaml").remove(0);
    service["metadata"]["namespace"] = json!(ns);
    for trigger in service["spec"]["triggers"].as_array_mut().unwrap() {
        trigger["source"]["properties"]["namespace"] = json!(ns);
        trigger["destinations"][0]["properties"]["baseUrl"] = json!(format!("http://127.0.0.1:{}", agent.port));
    }
    env.apply(&ns, &serde_yaml::to_string(&service).unwrap());
    wait_ready(&env, "basic-pod-monitoring");

    let backoff =
        pod_event("web-0.1", &ns, "web-0", "BackOff", "Back-off restarting failed container app in pod web-0");
    env.apply(&ns, &serde_yaml::to_string(&backoff).unwrap());
    wait_for_lines(&agent.output, 2, WAIT);
    let mut repeat = backoff.clone();
    repeat["count"] = json!(5);
    repeat["lastTimestamp"] = json!("2026-11-22T10:04:00Z");
    env.apply(&ns, &serde_yaml::to_string(&repeat).unwrap());
    env.wait_trigger("basic-pod-monitoring", "pod-restart", "the repeat ignored", |t| {
        t["filtered"].as_u64() >= Some(1)
    });
    let oom = pod_event("worker-1.1", &ns, "worker-1", "OOMKilling", "Memory cgroup out of memory: Killed process 42");
    env.apply(&ns, &serde_yaml::to_string(&oom).unwrap());
    env.wait_trigger("basic-pod-monitoring", "oom-kill", "the OOM kill delivered", |t| t["fired"].as_u64() == Some(1));
    let start = Instant::now();
    while json_lines(&agent.output).iter().filter(|r| r["kind"] == "message").count() < 2 {
        assert!(start.elapsed() < WAIT, "the agent ran twice: {:#?}", json_lines(&agent.output));
        std::thread::sleep(Duration::from_millis(50));
    }

    let runs: Vec<String> = json_lines(&agent.output)
        .into_iter()
        .filter(|r| r["kind"] == "message")
        .map(|r| r["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert!(
        runs[0].starts_with(
            "AUTONOMOUS MODE: Pod web-0 restarted at 2026-11-22T10:00:00Z. Analyze and fix immediately.\n\nINSTRUCTIONS:"
        ),
        "{}",
        runs[0]
    );
    assert!(
        runs[1].starts_with("AUTONOMOUS MODE: OOM kill for worker-1 at 2026-11-22T10:00:00Z. Analyze memory"),
        "{}",
        runs[1]
    );
    assert_eq!(running.stop(), Some(0));
}

/// kube-trigger with triggerservice-bump-app.yaml and sample.yaml: editing ConfigMap
/// this-will-trigger-update-1 bumps the publishVersion of the Application named by its
/// `watch-this` label (this-will-be-updated-1) from 1 to 2. Because kube-trigger let every event
/// through the struct-shaped filter, it also bumped the Application named by the label of any
/// other ConfigMap updated in the namespace; the converted filter keeps only the ConfigMaps the
/// filter names, as reported.
#[test]
fn converted_bump_app_bumps_the_application_named_by_the_label() {
    let env = Env::new("convert-bump");
    let ns = env.namespace.clone();
    env.install_trigger_service_crd();
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
    let running = env.start_controller(&[], &[]);
    let mut service = converted("kube-trigger/triggerservice-bump-app.yaml").remove(0);
    service["metadata"]["namespace"] = json!(ns);
    service["spec"]["triggers"][0]["source"]["properties"]["namespace"] = json!(ns);
    service["spec"]["triggers"][0]["destinations"][0]["properties"]["namespace"] = json!(ns);
    env.apply(&ns, &serde_yaml::to_string(&service).unwrap());
    // sample.yaml's ConfigMaps and Applications, and one more ConfigMap outside the filter.
    let sample = std::fs::read_to_string(repo().join("tests/upstream/kube-trigger/sample.yaml")).unwrap();
    let documents: Vec<&str> =
        sample.split("\n---").filter(|d| d.contains("kind: ConfigMap") || d.contains("kind: Application")).collect();
    let documents = documents.join("\n---\n").replace("\"default\"", "default");
    env.apply(&ns, &documents.replace("namespace: default", &format!("namespace: {ns}")));
    env.apply(
        &ns,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: unrelated, labels: {watch-this: this-will-be-updated-2}}\n\
         data: {content: x}\n",
    );
    wait_ready(&env, "kubetrigger-sample-config");

    let edit = |name: &str| {
        let (ok, text) = env.kubectl(&[
            "patch",
            "configmap",
            name,
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"data":{"content":"edited"}}"#,
        ]);
        assert!(ok, "{text}");
    };
    edit("unrelated");
    edit("this-will-trigger-update-1");
    env.wait_trigger("kubetrigger-sample-config", "trigger-0", "one bump", |t| t["fired"].as_u64() == Some(1));
    let version = |app: &str| {
        let (ok, text) = env.kubectl(&["get", "applications.core.oam.dev", app, "-n", &ns, "-o", "json"]);
        assert!(ok, "{text}");
        serde_json::from_str::<Value>(&text).unwrap()["metadata"]["annotations"]["app.oam.dev/publishVersion"].clone()
    };
    let start = Instant::now();
    while version("this-will-be-updated-1") != "2" {
        assert!(start.elapsed() < WAIT, "Application 1 was not bumped");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = env.trigger_status("kubetrigger-sample-config", "trigger-0");
    assert_eq!(status["filtered"], 1, "the unrelated ConfigMap was filtered out: {status:#}");
    assert_eq!(version("this-will-be-updated-2"), "1", "the unrelated ConfigMap bumped nothing");
    assert_eq!(running.stop(), Some(0));
}

/// Registers KubeVela's Application kind (kept when the cluster already has it: other tests and
/// users may rely on it).
fn install_application_crd(env: &Env) {
    let crd = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n\
               metadata: {name: applications.core.oam.dev}\n\
               spec:\n  group: core.oam.dev\n  scope: Namespaced\n\
               \x20 names: {plural: applications, singular: application, kind: Application, shortNames: [app]}\n\
               \x20 versions:\n  - name: v1beta1\n    served: true\n    storage: true\n\
               \x20   schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}\n";
    let (_dir, path) = write_config(crd);
    let (ok, text) = env.kubectl(&["apply", "-f", path.to_str().unwrap()]);
    assert!(ok || text.contains("AlreadyExists"), "{text}");
    let (ok, text) =
        env.kubectl(&["wait", "--for", "condition=established", "crd/applications.core.oam.dev", "--timeout=30s"]);
    assert!(ok, "{text}");
}

/// kube-trigger with conf-create-event-listener.yaml and conf-record-event.yaml: creating a
/// WorkflowRun labelled `trigger.oam.dev/watch: "true"` creates an EventListener of the same name,
/// owned by it and with its labels; an update of a Deployment whose readyReplicas equal its
/// replicas appends `{resource, type: update, timestamp}` to the EventListener named by the
/// Deployment's `workflowrun.oam.dev/name` label. The converted triggers do the same.
#[test]
fn converted_event_listener_examples_create_listeners_and_record_events() {
    let env = Env::new("convert-listener");
    let ns = env.namespace.clone();
    env.install_trigger_service_crd();
    for crd in [
        WORKFLOW_RUN_CRD.to_string(),
        std::fs::read_to_string(repo().join("config/compat/standard.oam.dev_eventlisteners.yaml")).unwrap(),
    ] {
        let (_dir, path) = write_config(&crd);
        let (ok, text) = env.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", path.to_str().unwrap()]);
        assert!(ok, "{text}");
    }
    for crd in ["crd/workflowruns.core.oam.dev", "crd/eventlisteners.standard.oam.dev"] {
        let (ok, text) = env.kubectl(&["wait", "--for", "condition=established", crd, "--timeout=30s"]);
        assert!(ok, "{text}");
    }
    if env.external() {
        // What an operator grants for these actions: WorkflowRuns and EventListeners are outside `edit`.
        env.apply(
            &ns,
            &format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: listeners}}\nrules:\n\
                 - {{apiGroups: [core.oam.dev], resources: [workflowruns], verbs: [get, list, watch]}}\n\
                 - {{apiGroups: [standard.oam.dev], resources: [eventlisteners], verbs: [get, create, patch, update]}}\n\
                 ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: listeners}}\n\
                 roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: listeners}}\n\
                 subjects: [{{kind: ServiceAccount, name: {CONTROLLER_ACCOUNT}, namespace: {ns}}}]\n"
            ),
        );
    }
    let running = env.start_controller(&[], &[]);
    let mut create = converted("kube-trigger/conf-create-event-listener.yaml").remove(0);
    let record = converted("kube-trigger/conf-record-event.yaml").remove(0);
    create["metadata"] = json!({"name": "listeners", "namespace": ns});
    create["spec"]["triggers"][0]["name"] = json!("create-listener");
    let mut second = record["spec"]["triggers"][0].clone();
    second["name"] = json!("record");
    create["spec"]["triggers"].as_array_mut().unwrap().push(second);
    env.apply(&ns, &serde_yaml::to_string(&create).unwrap());
    wait_ready(&env, "listeners");

    let workflow_run = |name: &str, labels: Value| {
        let run = json!({"apiVersion": "core.oam.dev/v1alpha1", "kind": "WorkflowRun",
                         "metadata": {"name": name, "labels": labels}, "spec": {}});
        env.apply(&ns, &serde_yaml::to_string(&run).unwrap());
    };
    workflow_run("unwatched", json!({}));
    workflow_run("release-7", json!({"trigger.oam.dev/watch": "true"}));
    let listener = wait_listener(&env, "release-7", |l| !l.is_null());
    let run = object(&env, "workflowruns.core.oam.dev", "release-7");
    assert_eq!(
        listener["metadata"]["ownerReferences"],
        json!([{"apiVersion": "core.oam.dev/v1alpha1", "kind": "WorkflowRun", "name": "release-7",
                "uid": run["metadata"]["uid"], "controller": true}])
    );
    assert_eq!(listener["metadata"]["labels"], json!({"trigger.oam.dev/watch": "true"}));

    env.apply(
        &ns,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, labels: {workflowrun.oam.dev/name: release-7}}\n\
         spec:\n  replicas: 1\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n\
         \x20   spec: {containers: [{name: app, image: registry.invalid/web:1}]}\n",
    );
    let ready = r#"{"status":{"replicas":1,"readyReplicas":1,"updatedReplicas":1,"availableReplicas":1}}"#;
    let patch = ["patch", "deployment", "web", "-n", &ns, "--subresource=status", "--type=merge", "-p", ready];
    let (ok, text) = env.kubectl(&patch);
    assert!(ok, "{text}");
    let listener = wait_listener(&env, "release-7", |l| l["events"].as_array().is_some_and(|e| !e.is_empty()));
    let events = listener["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{listener:#}");
    assert_eq!(
        events[0]["resource"],
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "namespace": ns})
    );
    assert_eq!(events[0]["type"], "update");
    assert!(events[0]["timestamp"].is_string(), "{listener:#}");
    assert!(
        object(&env, "eventlisteners.standard.oam.dev", "unwatched").is_null(),
        "no listener for the unlabelled run"
    );
    assert_eq!(running.stop(), Some(0));
}

const WORKFLOW_RUN_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: workflowruns.core.oam.dev}
spec:
  group: core.oam.dev
  scope: Namespaced
  names: {plural: workflowruns, singular: workflowrun, kind: WorkflowRun}
  versions:
  - name: v1alpha1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
";

/// `kubectl get KIND NAME -o json` in the test namespace, or null.
fn object(env: &Env, kind: &str, name: &str) -> Value {
    let (ok, text) = env.kubectl(&["get", kind, name, "-n", &env.namespace, "-o", "json"]);
    if ok { serde_json::from_str(&text).unwrap() } else { Value::Null }
}

/// Waits until EventListener `name` passes `check`, and returns it.
fn wait_listener(env: &Env, name: &str, check: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let listener = object(env, "eventlisteners.standard.oam.dev", name);
        if check(&listener) {
            return listener;
        }
        assert!(start.elapsed() < WAIT, "EventListener {name}: {listener:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
