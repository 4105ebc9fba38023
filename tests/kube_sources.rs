//! Kubernetes sources end to end: the real `ktrigger` binary watching a cluster and delivering
//! through the `log` destination.
//!
//! The cluster is the project's test cluster, started in this process. When
//! `KTRIGGER_TEST_KUBECONFIG` names a kubeconfig, the same tests run against that cluster
//! instead, each in a namespace of its own that it creates and deletes; tests that need fault
//! injection or the test cluster's request counters then check what they can and say what they
//! skipped.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Event as KubeEvent;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::cluster::{Env, WAIT, uuid_suffix};
use support::{Running, write_config};

/// The delivered log lines of `trigger` (the part after `service/`).
fn lines_of(running: &Running, trigger: &str) -> Vec<Value> {
    let needle = format!("/{trigger}\"");
    running
        .stdout
        .text()
        .lines()
        .filter(|line| line.contains(&needle))
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["trigger"].as_str().is_some_and(|t| t.ends_with(&format!("/{trigger}"))))
        .collect()
}

/// `(event type, object name)` of each delivery of `trigger`.
fn deliveries(running: &Running, trigger: &str) -> Vec<(String, String)> {
    lines_of(running, trigger)
        .iter()
        .map(|l| {
            (
                l["event"]["type"].as_str().unwrap_or_default().to_string(),
                l["object"]["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Waits until `trigger` has at least `count` deliveries, lets a moment pass for extra ones, and
/// returns them all.
fn wait_deliveries(running: &Running, trigger: &str, count: usize) -> Vec<(String, String)> {
    running
        .stdout
        .wait_until(&format!("{count} deliveries of {trigger}"), WAIT, |_| deliveries(running, trigger).len() >= count);
    std::thread::sleep(Duration::from_millis(500));
    deliveries(running, trigger)
}

/// The event types delivered for each object, in delivery order.
fn per_object(deliveries: &[(String, String)]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut objects = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (kind, name) in deliveries {
        objects.entry(name.clone()).or_default().push(kind.clone());
    }
    objects
}

fn pair(kind: &str, name: &str) -> (String, String) {
    (kind.to_string(), name.to_string())
}

fn service(triggers: &str) -> String {
    format!(
        "apiVersion: ktrigger.dev/v1alpha1\nkind: TriggerService\nmetadata: {{name: e2e}}\nspec:\n  triggers:\n{triggers}"
    )
}

fn cm_trigger(name: &str, namespace: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    source:\n      type: resource-watcher\n      properties:\n        apiVersion: v1\n        \
         kind: ConfigMap\n        namespace: {namespace}\n{extra}    destinations: [{{type: log}}]\n"
    )
}

#[test]
fn configmap_changes_reach_each_trigger_with_the_event_types_and_labels_it_asked_for() {
    let env = Env::new("cm");
    env.create_configmap("existing", json!({"app": "e2e"}));
    let ns = &env.namespace;
    let config = service(&format!(
        "{}{}{}",
        cm_trigger("everything", ns, ""),
        cm_trigger("creates", ns, "        events: [create]\n"),
        cm_trigger("updates-deletes-of-e2e", ns, "        events: [update, delete]\n        labelSelector: app=e2e\n"),
    ));
    let (running, _dir) = env.run(&config, &[], 1);

    env.create_configmap("plain", json!({}));
    env.create_configmap("labelled", json!({"app": "e2e"}));
    env.set_data("plain", "2");
    env.set_data("labelled", "2");
    env.set_data("existing", "2");
    env.delete_configmap("plain");
    env.delete_configmap("labelled");

    // Deliveries go out concurrently, in order per object (`ordering: perObject`): compared
    // object by object.
    let everything = wait_deliveries(&running, "everything", 7);
    assert_eq!(everything.len(), 7, "{everything:?}");
    assert_eq!(
        per_object(&everything),
        per_object(&[
            pair("create", "plain"),
            pair("create", "labelled"),
            pair("update", "plain"),
            pair("update", "labelled"),
            pair("update", "existing"),
            pair("delete", "plain"),
            pair("delete", "labelled"),
        ])
    );
    assert_eq!(
        per_object(&deliveries(&running, "creates")),
        per_object(&[pair("create", "plain"), pair("create", "labelled")])
    );
    assert_eq!(
        per_object(&deliveries(&running, "updates-deletes-of-e2e")),
        per_object(&[pair("update", "labelled"), pair("update", "existing"), pair("delete", "labelled")])
    );
    let stderr = running.stderr.text();
    assert_eq!(stderr.matches("opening watch").count(), 1, "one watch whatever the selectors:\n{stderr}");
    if let Some(cluster) = &env.cluster {
        assert_eq!(cluster.watch_requests_for("configmaps"), 1);
    }
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn a_shared_watch_gives_triggers_with_different_selectors_exactly_what_each_selects() {
    let env = Env::new("selectors");
    let ns = &env.namespace;
    let config = service(&format!(
        "{}{}",
        cm_trigger("shop", ns, "        labelSelector: team=shop\n"),
        cm_trigger(
            "teams-but-shop",
            ns,
            "        labelSelector: team notin (shop),team\n        events: [create, delete]\n"
        ),
    ));
    let (running, _dir) = env.run(&config, &[], 1);
    env.create_configmap("cart", json!({"team": "shop"}));
    env.create_configmap("pager", json!({"team": "ops"}));
    env.create_configmap("plain", json!({}));
    env.set_data("cart", "2");
    // cart moves from shop to ops: it leaves one selector and enters the other.
    let patch = Patch::Merge(json!({"metadata": {"labels": {"team": "ops"}}}));
    env.runtime.block_on(env.configmaps().patch("cart", &PatchParams::default(), &patch)).unwrap();
    env.set_data("cart", "3");
    env.delete_configmap("cart");

    let shop = wait_deliveries(&running, "shop", 3);
    assert_eq!(shop, [pair("create", "cart"), pair("update", "cart"), pair("delete", "cart")]);
    let left = &lines_of(&running, "shop")[2];
    assert_eq!(left["object"]["metadata"]["labels"]["team"], "ops", "it left as the object it became");
    // Deliveries are ordered per object only.
    assert_eq!(
        per_object(&wait_deliveries(&running, "teams-but-shop", 3)),
        per_object(&[pair("create", "pager"), pair("create", "cart"), pair("delete", "cart")])
    );
    let stderr = running.stderr.text();
    assert_eq!(stderr.matches("opening watch").count(), 1, "{stderr}");
    if let Some(cluster) = &env.cluster {
        assert_eq!(cluster.watch_requests_for("configmaps"), 1);
    }
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn custom_resources_are_watched_once_their_crd_exists() {
    let mut env = Env::new("crd");
    let ns = env.namespace.clone();
    let group = format!("e2e-{}.ktrigger.dev", &uuid_suffix()[..6]);
    let config = service(&format!(
        "  - name: gadgets\n    source:\n      type: resource-watcher\n      properties: {{apiVersion: {group}/v1, \
         kind: Gadget, namespace: {ns}}}\n    destinations: [{{type: log}}]\n\
         \x20 - name: heartbeat\n    source: {{type: cron, properties: {{schedule: \"* * * * * *\"}}}}\n    \
         destinations: [{{type: log}}]\n"
    ));
    let (running, _dir) = env.run(&config, &[], 0);
    let stderr = running.stderr.wait_for("not served by the cluster", WAIT);
    assert!(stderr.contains("trigger=e2e/gadgets"), "{stderr}");
    running.stdout.wait_for("\"trigger\":\"e2e/heartbeat\"", WAIT);

    let resource = env.install_crd(&group, "Gadget", "gadgets");
    running.stderr.wait_until("the gadget watch", Duration::from_secs(90), |t| t.contains("watch synced"));
    let gadgets = env.custom_objects(&resource);
    let gadget = DynamicObject::new("g1", &resource).data(json!({"spec": {"size": 1}}));
    env.runtime.block_on(gadgets.create(&PostParams::default(), &gadget)).unwrap();
    let patch = Patch::Merge(json!({"spec": {"size": 2}}));
    env.runtime.block_on(gadgets.patch("g1", &PatchParams::default(), &patch)).unwrap();
    env.runtime.block_on(gadgets.delete("g1", &DeleteParams::default())).unwrap();

    let seen = wait_deliveries(&running, "gadgets", 3);
    assert_eq!(seen, [pair("create", "g1"), pair("update", "g1"), pair("delete", "g1")]);
    let update = &lines_of(&running, "gadgets")[1];
    assert_eq!(
        (update["object"]["kind"].as_str(), update["object"]["spec"]["size"].as_i64()),
        (Some("Gadget"), Some(2))
    );
    assert_eq!(running.stop(), Some(0));
}

fn backoff_event(name: &str, count: u32, namespace: &str) -> KubeEvent {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace},
        "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": namespace, "apiVersion": "v1"},
        "type": "Warning", "reason": "BackOff", "message": "Back-off restarting failed container app in pod web-1",
        "count": count, "source": {"component": "kubelet"},
        "firstTimestamp": "2026-01-01T10:00:00Z", "lastTimestamp": format!("2026-01-01T10:0{count}:00Z"),
    }))
    .unwrap()
}

#[test]
fn a_pod_restart_event_and_its_repeat_reach_the_preset_trigger() {
    let env = Env::new("events");
    let ns = &env.namespace;
    let dir = tempfile::tempdir().unwrap();
    let mappings = dir.path().join("mappings.yaml");
    std::fs::write(
        &mappings,
        "mappings:\n- name: crash-storm\n  condition: object.reason == 'BackOff' && object.count >= 2\n",
    )
    .unwrap();
    let config = service(&format!(
        "  - name: restarts\n    source: {{type: k8s-events, properties: {{namespace: {ns}, presets: [pod-restart, oom-kill]}}}}\n    \
         destinations:\n    - type: log\n      properties: {{message: \"{{{{ event.preset }}}}: {{{{ object.regarding.name }}}} x{{{{ object.count }}}}\"}}\n\
         \x20 - name: storms\n    source: {{type: k8s-events, properties: {{namespace: {ns}, presets: [crash-storm]}}}}\n    \
         destinations: [{{type: log}}]\n\
         \x20 - name: scheduling\n    source: {{type: k8s-events, properties: {{namespace: {ns}, presets: [pod-pending]}}}}\n    \
         destinations: [{{type: log}}]\n"
    ));
    let (running, _dir) = env.run(&config, &["--event-mappings", mappings.to_str().unwrap()], 1);

    env.runtime.block_on(env.events().create(&PostParams::default(), &backoff_event("web-1.crash", 1, ns))).unwrap();
    wait_deliveries(&running, "restarts", 1);
    let patch = Patch::Merge(json!({"count": 2, "lastTimestamp": "2026-01-01T10:02:00Z"}));
    env.runtime.block_on(env.events().patch("web-1.crash", &PatchParams::default(), &patch)).unwrap();

    let restarts = wait_deliveries(&running, "restarts", 2);
    assert_eq!(restarts, [pair("create", "web-1.crash"), pair("update", "web-1.crash")]);
    let lines = lines_of(&running, "restarts");
    assert_eq!(lines[0]["message"], "pod-restart: web-1 x1");
    assert_eq!(lines[1]["message"], "pod-restart: web-1 x2");
    assert_eq!(lines[1]["event"]["preset"], "pod-restart");
    assert_eq!(lines[1]["event"]["time"], "2026-01-01T10:02:00Z", "legacy Events are timed by lastTimestamp");
    assert_eq!(deliveries(&running, "storms"), [pair("update", "web-1.crash")]);
    assert!(deliveries(&running, "scheduling").is_empty());
    assert_eq!(running.stderr.text().matches("opening watch").count(), 1, "the three triggers share one watch");
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn the_watch_survives_a_410_and_a_dropped_stream_without_loss_or_duplicates() {
    let env = Env::new("faults");
    let Some(cluster) = &env.cluster else {
        eprintln!("skipped: fault injection needs the test cluster (KTRIGGER_TEST_KUBECONFIG is set)");
        return;
    };
    for name in ["a", "b", "c"] {
        env.create_configmap(name, json!({}));
    }
    let config = service(&cm_trigger("all", &env.namespace, ""));
    let (running, _dir) = env.run(&config, &[], 1);

    // "watch synced" is logged when the list is done; the watch itself opens right after.
    let open = |n| assert!(env.runtime.block_on(cluster.wait_for_watches("configmaps", n, WAIT)), "the watch is open");
    open(1);
    cluster.faults().drop_watches("configmaps");
    env.set_data("a", "2");
    env.create_configmap("d", json!({}));
    wait_deliveries(&running, "all", 2);

    open(1);
    cluster.faults().gone_on_next_watch("configmaps");
    cluster.faults().drop_watches("configmaps");
    env.set_data("b", "2");
    env.delete_configmap("c");
    env.create_configmap("e", json!({}));
    running.stderr.wait_for("re-listing", WAIT);

    let mut seen = wait_deliveries(&running, "all", 5);
    // Deliveries are ordered per object only: each round's changes are compared as a set.
    seen[..2].sort();
    seen[2..].sort();
    assert_eq!(
        seen,
        [pair("create", "d"), pair("update", "a"), pair("create", "e"), pair("delete", "c"), pair("update", "b")]
    );
    env.set_data("d", "2");
    assert_eq!(wait_deliveries(&running, "all", 6)[5], pair("update", "d"));
    let watches: Vec<String> =
        cluster.request_log().into_iter().filter(|(_, uri)| uri.contains("watch=true")).map(|(_, uri)| uri).collect();
    assert!(watches.len() >= 4, "resumed twice and re-opened after the 410: {watches:#?}");
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn fifty_triggers_on_configmaps_in_one_namespace_open_one_watch() {
    let env = Env::new("fifty");
    let triggers: String = (0..50)
        .map(|i| {
            let events = ["create", "update", "delete"][i % 3];
            cm_trigger(&format!("t{i:02}"), &env.namespace, &format!("        events: [{events}]\n"))
        })
        .collect();
    let (_config, path) = write_config(&service(&triggers));
    let args = ["-f", path.to_str().unwrap(), "--kubeconfig", env.kubeconfig()];
    let running = Running::start_with_env(&args, &[("KTRIGGER_LOG", "info,ktrigger_kube::hub=debug")]);
    // The shared watch syncs as soon as its first trigger subscribes; the others join it over
    // the next milliseconds, and only events after a trigger joined reach it.
    running.stderr.wait_until("50 triggers subscribed", WAIT, |t| t.matches("trigger subscribed").count() >= 50);
    env.create_configmap("one", json!({}));
    env.set_data("one", "2");
    running.stdout.wait_until("34 deliveries", WAIT, |t| t.lines().count() >= 34);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(running.stdout.text().lines().count(), 34, "17 create and 17 update triggers, one delivery each");
    assert_eq!(deliveries(&running, "t00"), [pair("create", "one")]);
    assert_eq!(deliveries(&running, "t01"), [pair("update", "one")]);
    assert!(deliveries(&running, "t02").is_empty());
    let stderr = running.stderr.text();
    assert_eq!(stderr.matches("opening watch").count(), 1, "{stderr}");
    assert!(stderr.contains("watches_opened=1"), "{stderr}");
    if let Some(cluster) = &env.cluster {
        assert_eq!(cluster.watch_requests_for("configmaps"), 1);
    }
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn dry_run_prints_the_decision_for_each_event() {
    let env = Env::new("dry");
    let config = service(&format!(
        "  - name: second-versions\n    source:\n      type: resource-watcher\n      properties: {{apiVersion: v1, \
         kind: ConfigMap, namespace: {}, events: [update]}}\n    filter: 'object.data.v == \"2\"'\n    \
         destinations: [{{type: webhook, properties: {{url: \"http://127.0.0.1:9/never\"}}}}]\n",
        env.namespace
    ));
    let (running, _dir) = env.run(&config, &["--dry-run"], 1);
    env.create_configmap("cfg", json!({}));
    env.set_data("cfg", "3");
    env.set_data("cfg", "2");
    let stdout = running.stdout.wait_until("two decisions", WAIT, |t| t.lines().count() >= 2);
    let lines: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        (lines[0]["matched"].as_bool(), lines[0]["reason"].as_str()),
        (Some(false), Some("filter returned false"))
    );
    assert_eq!(lines[0]["eventType"], "update");
    assert_eq!(lines[1]["matched"], true);
    assert_eq!(lines[1]["wouldSend"]["body"]["data"]["object"]["data"]["v"], "2", "{}", lines[1]);
    assert_eq!(lines.len(), 2, "the create is not a type this trigger asked for");
    assert_eq!(running.stop(), Some(0));
}

/// A cron trigger that must keep running whatever happens to the Kubernetes ones.
const HEARTBEAT: &str = "  - name: heartbeat\n    source: {type: cron, properties: {schedule: \"* * * * * *\"}}\n    \
                         destinations: [{type: log}]\n";

#[test]
fn missing_kubeconfig_or_context_skips_only_the_kubernetes_triggers() {
    let config = service(&format!("{}{HEARTBEAT}", cm_trigger("cms", "default", "")));
    let (_dir, path) = write_config(&config);
    let file = path.to_str().unwrap();

    let running = Running::start(&["-f", file, "--kubeconfig", "/nonexistent/kubeconfig"]);
    let stderr = running.stderr.text();
    assert!(
        stderr.contains("skipped trigger e2e/cms")
            && stderr.contains("kubeconfig /nonexistent/kubeconfig does not exist"),
        "{stderr}"
    );
    running.stdout.wait_for("\"trigger\":\"e2e/heartbeat\"", WAIT);
    assert_eq!(running.stop(), Some(0));

    let env = Env::new("ctx");
    let running = Running::start(&["-f", file, "--kubeconfig", env.kubeconfig(), "--context", "no-such-context"]);
    let stderr = running.stderr.text();
    assert!(
        stderr.contains("skipped trigger e2e/cms") && stderr.contains("has no context \"no-such-context\""),
        "{stderr}"
    );
    running.stdout.wait_for("\"trigger\":\"e2e/heartbeat\"", WAIT);
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn an_unreachable_api_server_is_reported_on_the_trigger() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: gone, cluster: {server: \"http://127.0.0.1:9\"}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: gone, context: {cluster: gone, user: u}}]\n\
         current-context: gone\n",
    )
    .unwrap();
    let config = service(&format!("{}{HEARTBEAT}", cm_trigger("cms", "default", "")));
    let (_cfg, path) = write_config(&config);
    let running = Running::start(&["-f", path.to_str().unwrap(), "--kubeconfig", kubeconfig.to_str().unwrap()]);
    let stderr = running.stderr.wait_for("source stopped; restarting", WAIT);
    let line = stderr.lines().find(|l| l.contains("source stopped")).unwrap();
    assert!(line.contains("trigger=e2e/cms") && line.contains("127.0.0.1:9"), "{line}");
    running.stdout.wait_for("\"trigger\":\"e2e/heartbeat\"", WAIT);
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn bad_selectors_and_forbidden_lists_are_reported_on_their_triggers() {
    let env = Env::new("bad");
    let ns = &env.namespace;
    let secrets = format!(
        "  - name: secrets\n    source: {{type: resource-watcher, properties: {{apiVersion: v1, kind: Secret, \
         namespace: {ns}}}}}\n    destinations: [{{type: log, properties: {{includeObject: false}}}}]\n"
    );
    let config = service(&format!(
        "{}{secrets}{}{HEARTBEAT}",
        cm_trigger("bad-selector", ns, "        labelSelector: 'app in web'\n"),
        cm_trigger("fine", ns, ""),
    ));
    // The identity may watch ConfigMaps but not Secrets: on a real cluster the `tenant` user with
    // a Role saying so, refused by the real authorizer; the test cluster has no RBAC and is told
    // to refuse.
    let tenant = env.tenant_kubeconfig();
    match (&env.cluster, &tenant) {
        (Some(cluster), _) => cluster.faults().forbid("list", "secrets"),
        (None, Some(_)) => env.grant_tenant(
            "configmaps-only",
            json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}]),
        ),
        (None, None) => {}
    }
    let kubeconfig = tenant.as_ref().map_or(env.kubeconfig(), |path| path.to_str().unwrap());
    let (running, _dir) = env.run_as(kubeconfig, &config, &[], 1);
    let stderr = running.stderr.text();
    assert!(
        stderr.contains("skipped trigger e2e/bad-selector") && stderr.contains("properties.labelSelector"),
        "{stderr}"
    );
    if env.external() && tenant.is_none() {
        eprintln!("skipped the RBAC part: no `tenant` context in KTRIGGER_TEST_KUBECONFIG to be refused as");
    } else {
        // The watch's own warning also names the 403, and may come first.
        let stopped = |l: &str| l.contains("source stopped") && l.contains("403");
        let stderr = running.stderr.wait_until("the source stopping on a 403", WAIT, |text| text.lines().any(stopped));
        let line = stderr.lines().find(|l| stopped(l)).unwrap();
        assert!(line.contains("trigger=e2e/secrets") && line.contains("RBAC"), "{line}");
        if tenant.is_some() {
            assert!(line.contains("tenant") && line.contains("secrets"), "the real authorizer refused: {line}");
        }
    }
    env.create_configmap("still-works", json!({}));
    assert_eq!(wait_deliveries(&running, "fine", 1), [pair("create", "still-works")]);
    running.stdout.wait_for("\"trigger\":\"e2e/heartbeat\"", WAIT);
    assert_eq!(running.stop(), Some(0));
}
