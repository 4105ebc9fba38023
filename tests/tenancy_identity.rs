//! One identity for everything a TriggerService touches: `ktrigger controller` lists and watches
//! as `spec.serviceAccountName`, else as `--default-service-account`, else as itself but only in
//! the TriggerService's own namespace.
//!
//! On the real kube-apiserver (`KTRIGGER_TEST_KUBECONFIG`) a ServiceAccount with a Role on
//! ConfigMaps of the test namespace shows what RBAC allows and refuses. The test cluster has no
//! RBAC: there the tests assert the `Impersonate-User` of each watch instead, and forbid Secrets
//! through its fault injection.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::cluster::{Env, NamespaceGuard, WAIT, uuid_suffix};
use support::{Running, write_config};

/// The ServiceAccount of the tests, allowed to read ConfigMaps of the test namespace only.
const READER: &str = "reader";

/// Creates the ServiceAccount `reader` with a Role on ConfigMaps of the test namespace (real
/// cluster); the test cluster has no RBAC, so there it forbids Secrets to everyone instead.
fn reader_account(env: &Env) {
    match &env.cluster {
        Some(cluster) => cluster.faults().forbid("list", "secrets"),
        None => env.apply(
            &env.namespace,
            &format!(
                r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {READER}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: read-configmaps}}
rules:
- {{apiGroups: [""], resources: [configmaps], verbs: [get, list, watch]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: reader-reads-configmaps}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: read-configmaps}}
subjects:
- {{kind: ServiceAccount, name: {READER}, namespace: {namespace}}}
"#,
                namespace = env.namespace
            ),
        ),
    }
}

/// A TriggerService `name` with one resource-watcher trigger per `(trigger, properties)`, each
/// logging what it receives.
fn trigger_service(name: &str, service_account: Option<&str>, triggers: &[(&str, &str)]) -> String {
    let mut yaml =
        format!("apiVersion: ktrigger.dev/v1alpha1\nkind: TriggerService\nmetadata: {{name: {name}}}\nspec:\n");
    if let Some(account) = service_account {
        yaml.push_str(&format!("  serviceAccountName: {account}\n"));
    }
    yaml.push_str("  triggers:\n");
    for (trigger, properties) in triggers {
        yaml.push_str(&format!(
            "  - name: {trigger}\n    source: {{type: resource-watcher, properties: {properties}}}\n    \
             destinations: [{{type: log}}]\n"
        ));
    }
    yaml
}

/// The log lines of trigger `trigger` of TriggerService `service`.
fn delivered(running: &Running, env: &Env, service: &str, trigger: &str) -> Vec<String> {
    let id = format!("\"{}/{service}/{trigger}\"", env.namespace);
    running.stdout.text().lines().filter(|line| line.contains(&id)).map(str::to_string).collect()
}

/// Waits until trigger `trigger` of `service` has delivered a line mentioning `name`.
fn wait_delivered(running: &Running, env: &Env, service: &str, trigger: &str, name: &str) {
    let start = Instant::now();
    while !delivered(running, env, service, trigger).iter().any(|line| line.contains(name)) {
        assert!(start.elapsed() < WAIT, "{trigger} never delivered {name}:\n{}", running.stderr.text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `lastError` of a trigger that is not running, once it has one.
fn refusal(env: &Env, service: &str, trigger: &str) -> String {
    let status = env.wait_trigger(service, trigger, "a refusal in status", |s| {
        s["ready"] == false && s["lastError"].as_str().is_some_and(|e| !e.is_empty())
    });
    status["lastError"].as_str().unwrap_or_default().to_string()
}

/// The notes of the Kubernetes Events about TriggerService `service` with reason `reason`.
fn event_notes(env: &Env, service: &str, reason: &str) -> Vec<String> {
    let (ok, text) = env.kubectl(&["get", "events.events.k8s.io", "-n", &env.namespace, "-o", "json"]);
    assert!(ok, "{text}");
    let list: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["regarding"]["name"] == service && e["reason"] == reason)
        .filter_map(|e| e["note"].as_str().map(str::to_string))
        .collect()
}

/// The `Impersonate-User` headers of the test cluster's watch requests on `path` (e.g.
/// `/api/v1/namespaces/x/configmaps`); `None` on a real cluster.
fn watch_identities(env: &Env, path: &str) -> Option<Vec<Option<String>>> {
    let cluster = env.cluster.as_ref()?;
    let prefix = format!("{path}?");
    let mut users: Vec<Option<String>> = cluster
        .requests()
        .into_iter()
        .filter(|r| r.uri.starts_with(&prefix) && r.uri.contains("watch=true"))
        .map(|r| r.impersonate_user)
        .collect();
    users.sort();
    users.dedup();
    Some(users)
}

fn create_secret(env: &Env, name: &str) {
    let (_dir, path) = write_config(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData: {{token: do-not-ship}}\n"
    ));
    let (ok, text) = env.kubectl(&["apply", "-n", &env.namespace, "-f", path.to_str().unwrap()]);
    assert!(ok, "{text}");
}

#[test]
fn a_service_account_watches_what_its_role_allows_and_is_refused_the_rest() {
    let env = Env::new("identity-sa");
    env.install_trigger_service_crd();
    reader_account(&env);
    let theirs = format!("ktrigger-e2e-other-{}", &uuid_suffix()[..8]);
    let _other = NamespaceGuard::create(&env, &theirs);
    create_secret(&env, "api-token");
    let running = env.start_controller(&[], &[]);

    let ns = env.namespace.clone();
    let service = trigger_service(
        "tenant",
        Some(READER),
        &[
            ("own", &format!("{{apiVersion: v1, kind: ConfigMap, namespace: {ns}, events: [create]}}")),
            ("theirs", &format!("{{apiVersion: v1, kind: ConfigMap, namespace: {theirs}, replayExisting: true}}")),
            ("secrets", &format!("{{apiVersion: v1, kind: Secret, namespace: {ns}, replayExisting: true}}")),
        ],
    );
    env.apply(&ns, &service);

    let secrets = refusal(&env, "tenant", "secrets");
    let identity = format!("as ServiceAccount {ns}/{READER}");
    assert!(secrets.contains(&format!("cannot list v1/secrets in namespace {ns} {identity}: 403")), "{secrets}");
    assert!(secrets.contains(&format!("(RBAC: ServiceAccount {ns}/{READER} needs list and watch on secrets")));
    match watch_identities(&env, &format!("/api/v1/namespaces/{theirs}/configmaps")) {
        None => {
            let theirs_error = refusal(&env, "tenant", "theirs");
            let expected = format!("cannot list v1/configmaps in namespace {theirs} {identity}: 403");
            assert!(theirs_error.contains(&expected), "{theirs_error}");
        }
        Some(users) => {
            println!("the test cluster has no RBAC: the other namespace's watch is only checked for its identity");
            let user = format!("system:serviceaccount:{ns}:{READER}");
            assert_eq!(users, vec![Some(user.clone())], "watched only as the ServiceAccount");
            let own = watch_identities(&env, &format!("/api/v1/namespaces/{ns}/configmaps")).unwrap_or_default();
            assert_eq!(own, vec![Some(user)]);
        }
    }

    env.create_configmap("settings", serde_json::json!({}));
    wait_delivered(&running, &env, "tenant", "own", "settings");
    let start = Instant::now();
    while event_notes(&env, "tenant", "TriggerRestarted").iter().all(|note| !note.contains(&identity)) {
        assert!(
            start.elapsed() < WAIT,
            "no Event names the refused identity: {:?}",
            event_notes(&env, "tenant", "TriggerRestarted")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let secret_lines = delivered(&running, &env, "tenant", "secrets");
    assert!(secret_lines.is_empty(), "nothing of a refused watch is delivered: {secret_lines:?}");
    assert!(!running.stdout.text().contains("do-not-ship") && !running.stdout.text().contains("api-token"));
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn without_any_identity_a_trigger_service_reads_only_its_own_namespace() {
    let env = Env::new("identity-none");
    env.install_trigger_service_crd();
    let theirs = format!("ktrigger-e2e-other-{}", &uuid_suffix()[..8]);
    let _other = NamespaceGuard::create(&env, &theirs);
    let running = env.start_controller(&[], &[]);
    running.stderr.wait_for("act as the controller, only in their own namespace", WAIT);

    let ns = env.namespace.clone();
    let service = trigger_service(
        "plain",
        None,
        &[
            ("everywhere", "{apiVersion: v1, kind: ConfigMap}"),
            ("theirs", &format!("{{apiVersion: v1, kind: ConfigMap, namespace: {theirs}}}")),
        ],
    );
    env.apply(&ns, &service);

    let start = Instant::now();
    let message = loop {
        let (_, text) = env.kubectl(&["get", "triggerservice", "plain", "-n", &ns, "-o", "json"]);
        let object: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if let Some(message) = object["status"]["conditions"][0]["message"].as_str().filter(|m| m.contains("theirs")) {
            break message.to_string();
        }
        assert!(start.elapsed() < WAIT, "no status names the refused trigger: {object:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let expected = format!(
        "trigger theirs: triggers[1].source.properties.namespace: namespace {theirs:?} is outside the \
         TriggerService's namespace {ns:?}"
    );
    assert!(message.starts_with(&expected), "{message}");

    let outside = kube::Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(env.client.clone(), &theirs);
    let body = serde_json::from_value(serde_json::json!({"metadata": {"name": "outside"}})).unwrap();
    env.runtime.block_on(outside.create(&Default::default(), &body)).unwrap();
    env.create_configmap("inside", serde_json::json!({}));
    wait_delivered(&running, &env, "plain", "everywhere", "inside");
    std::thread::sleep(Duration::from_millis(500));
    let lines = delivered(&running, &env, "plain", "everywhere");
    assert!(lines.iter().all(|line| !line.contains("\"outside\"")), "another namespace was read: {lines:?}");
    if let Some(users) = watch_identities(&env, &format!("/api/v1/namespaces/{ns}/configmaps")) {
        assert_eq!(users, vec![None], "watched with the controller's own identity");
        let cluster = env.cluster.as_ref().unwrap();
        let wide = cluster.requests().iter().any(|r| r.uri.starts_with("/api/v1/configmaps?"));
        assert!(!wide, "no ConfigMap watch across all namespaces");
    }
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn the_default_service_account_acts_for_trigger_services_without_one() {
    let env = Env::new("identity-default");
    env.install_trigger_service_crd();
    reader_account(&env);
    create_secret(&env, "api-token");
    let running = env.start_controller(&["--default-service-account", READER], &[]);
    running.stderr.wait_for(&format!("act as the ServiceAccount {READER} of their namespace"), WAIT);

    let ns = env.namespace.clone();
    let service = trigger_service(
        "defaulted",
        None,
        &[
            ("configs", &format!("{{apiVersion: v1, kind: ConfigMap, namespace: {ns}, events: [create]}}")),
            ("secrets", &format!("{{apiVersion: v1, kind: Secret, namespace: {ns}, replayExisting: true}}")),
        ],
    );
    env.apply(&ns, &service);

    let identity = format!("as ServiceAccount {ns}/{READER}");
    running.stderr.wait_for(&format!("v1/configmaps in namespace {ns} {identity}"), WAIT);
    let secrets = refusal(&env, "defaulted", "secrets");
    assert!(secrets.contains(&format!("cannot list v1/secrets in namespace {ns} {identity}: 403")), "{secrets}");
    env.create_configmap("settings", serde_json::json!({}));
    wait_delivered(&running, &env, "defaulted", "configs", "settings");
    if let Some(users) = watch_identities(&env, &format!("/api/v1/namespaces/{ns}/configmaps")) {
        assert_eq!(users, vec![Some(format!("system:serviceaccount:{ns}:{READER}"))]);
    }
    assert!(delivered(&running, &env, "defaulted", "secrets").is_empty(), "nothing of the refused watch is delivered");
    assert_eq!(running.stop(), Some(0));
}

/// Cluster-scoped objects of one test (`kind/name`), deleted when dropped.
struct ClusterScoped<'a> {
    env: &'a Env,
    objects: Vec<String>,
}

impl Drop for ClusterScoped<'_> {
    fn drop(&mut self) {
        for object in &self.objects {
            let _ = self.env.kubectl(&["delete", object, "--ignore-not-found"]);
        }
    }
}

/// A kubeconfig for the real cluster that authenticates with `token`.
fn token_kubeconfig(env: &Env, token: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let (ok, text) = env.kubectl(&["config", "view", "--raw", "--minify", "--flatten", "-o", "json"]);
    assert!(ok, "{text}");
    let admin: Value = serde_json::from_str(&text).unwrap();
    let cluster = &admin["clusters"][0]["cluster"];
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "controller",
        "clusters": [{"name": "real", "cluster": cluster}],
        "users": [{"name": "controller", "user": {"token": token}}],
        "contexts": [{"name": "controller", "context": {"cluster": "real", "user": "controller"}}],
    });
    write_config(&serde_json::to_string(&kubeconfig).unwrap())
}

#[test]
fn the_controller_works_with_only_its_shipped_cluster_role_and_reads_nothing_itself() {
    let env = Env::new("identity-rbac");
    if !env.external() {
        println!("skipped: the test cluster has no RBAC; set KTRIGGER_TEST_KUBECONFIG to a real cluster");
        return;
    }
    env.install_trigger_service_crd();
    reader_account(&env);
    let ns = env.namespace.clone();
    // The rules of config/rbac/role.yaml, under a name of this test's own, bound to a
    // ServiceAccount the controller runs as.
    let shipped = std::fs::read_to_string(support::repo().join("config/rbac/role.yaml")).unwrap();
    let role_name = format!("{ns}-controller");
    let role = shipped.replace("name: ktrigger-controller", &format!("name: {role_name}"));
    let _cleanup = ClusterScoped {
        env: &env,
        objects: vec![format!("clusterrole/{role_name}"), format!("clusterrolebinding/{role_name}")],
    };
    env.apply(&ns, &role);
    env.apply(
        &ns,
        &format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: controller}}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {role_name}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {role_name}}}\n\
             subjects: [{{kind: ServiceAccount, name: controller, namespace: {ns}}}]\n"
        ),
    );
    let (ok, token) = env.kubectl(&["create", "token", "controller", "-n", &ns, "--duration", "1h"]);
    assert!(ok, "{token}");
    let (_dir, kubeconfig) = token_kubeconfig(&env, token.trim());
    let args = ["--kubeconfig", kubeconfig.to_str().unwrap(), "--watch-namespaces", &ns, "--status-interval", "300ms"];
    let running = Running::start_controller(&args);

    let configs = format!("{{apiVersion: v1, kind: ConfigMap, namespace: {ns}, events: [create]}}");
    env.apply(&ns, &trigger_service("as-reader", Some(READER), &[("configs", &configs)]));
    env.apply(&ns, &trigger_service("as-controller", None, &[("configs", &configs)]));

    let own = refusal(&env, "as-controller", "configs");
    let expected = format!("cannot list v1/configmaps in namespace {ns} as ktrigger's own identity: 403");
    assert!(own.contains(&expected), "{own}");
    assert!(own.contains("or the TriggerService a spec.serviceAccountName that has them"), "{own}");
    env.create_configmap("settings", serde_json::json!({}));
    wait_delivered(&running, &env, "as-reader", "configs", "settings");
    assert!(delivered(&running, &env, "as-controller", "configs").is_empty());
    let start = Instant::now();
    while event_notes(&env, "as-controller", "TriggerRestarted").iter().all(|note| !note.contains(&expected)) {
        assert!(start.elapsed() < WAIT, "the controller published no Event about the refusal");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn a_watch_serves_another_service_account_only_while_a_review_allows_it() {
    let env = Env::new("identity-share");
    if !env.external() {
        println!("skipped: the test cluster serves no SubjectAccessReviews; set KTRIGGER_TEST_KUBECONFIG");
        return;
    }
    env.install_trigger_service_crd();
    reader_account(&env);
    let ns = env.namespace.clone();
    env.apply(
        &ns,
        &format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: second}}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: second-reads-configmaps}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: read-configmaps}}\n\
             subjects: [{{kind: ServiceAccount, name: second, namespace: {ns}}}]\n"
        ),
    );
    let running = env.start_controller(&["--access-review-ttl", "1s"], &[]);
    let configs = format!("{{apiVersion: v1, kind: ConfigMap, namespace: {ns}, events: [create]}}");
    env.apply(&ns, &trigger_service("first", Some(READER), &[("configs", &configs)]));
    running.stderr.wait_for("watch synced", WAIT);
    env.apply(&ns, &trigger_service("second", Some("second"), &[("configs", &configs)]));
    running.stderr.wait_for("sharing the watch", WAIT);
    // The second trigger sees creates from the moment its subscription has caught up with the
    // shared watch, a little after the line above: probe until it does.
    let start = Instant::now();
    for n in 0.. {
        let probe = format!("probe-{n}");
        env.create_configmap(&probe, serde_json::json!({}));
        std::thread::sleep(Duration::from_millis(300));
        if delivered(&running, &env, "second", "configs").iter().any(|line| line.contains("probe-")) {
            break;
        }
        assert!(start.elapsed() < WAIT, "the second trigger never delivered a probe:\n{}", running.stderr.text());
    }

    env.create_configmap("both", serde_json::json!({}));
    wait_delivered(&running, &env, "first", "configs", "both");
    wait_delivered(&running, &env, "second", "configs", "both");
    let opened =
        running.stderr.text().lines().filter(|l| l.contains("opening watch") && l.contains("configmaps")).count();
    assert_eq!(opened, 1, "one watch serves both ServiceAccounts:\n{}", running.stderr.text());

    let (ok, text) = env.kubectl(&["delete", "rolebinding", "second-reads-configmaps", "-n", &ns]);
    assert!(ok, "{text}");
    let revoked = refusal(&env, "second", "configs");
    let identity = format!("ServiceAccount {ns}/second");
    assert!(revoked.contains(&identity), "{revoked}");
    assert!(!revoked.contains(&format!("{ns}/{READER}")), "the other identity is not revealed: {revoked}");
    env.create_configmap("first-only", serde_json::json!({}));
    wait_delivered(&running, &env, "first", "configs", "first-only");
    std::thread::sleep(Duration::from_millis(500));
    let second = delivered(&running, &env, "second", "configs");
    assert!(second.iter().all(|line| !line.contains("first-only")), "revoked access still delivers: {second:?}");
    assert_eq!(running.stop(), Some(0));
}
