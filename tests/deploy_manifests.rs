//! The install manifests are accepted by a real API server: `kubectl apply --dry-run=server` of
//! the kustomize install (config/default) and of the Helm chart as `helm template` renders it.
//! Needs a real server (`KTRIGGER_TEST_KUBECONFIG`): the test cluster does not implement
//! server-side dry runs, so there these tests say so and stop.
//!
//! The helm binary cannot be installed from the package registries this project uses, so the
//! chart is rendered by hack/helm-template, a small renderer on Go's text/template and the sprig
//! functions, built here with Debian's Go packages (golang-go or golang-1.21-go, and
//! golang-github-masterminds-sprig-dev, golang-k8s-sigs-yaml-dev; `.ci/run` installs them).

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::cluster::Env;
use support::{repo, write_config};

/// `kubectl apply --dry-run=server` of a YAML stream; fails the test with kubectl's answer.
fn dry_run_apply(env: &Env, yaml: &str, what: &str) -> String {
    let (_dir, path) = write_config(yaml);
    let (ok, text) = env.kubectl(&["apply", "--dry-run=server", "-f", path.to_str().unwrap()]);
    assert!(ok, "the API server refused the {what}:\n{text}");
    text
}

/// The install's namespace replaced by the test's own, so that namespaced objects can be
/// dry-run (the server refuses objects in a namespace that does not exist).
fn in_test_namespace(env: &Env, yaml: &str) -> String {
    yaml.replace("ktrigger-system", &env.namespace)
}

fn real_server(env: &Env) -> bool {
    if !env.external() {
        eprintln!("skipped: server-side dry run needs a real API server (set KTRIGGER_TEST_KUBECONFIG)");
    }
    env.external()
}

/// A Go toolchain: `go` on PATH, or Debian's golang-1.21-go.
fn go() -> PathBuf {
    let on_path = Command::new("go").arg("version").output().is_ok_and(|o| o.status.success());
    if on_path { PathBuf::from("go") } else { PathBuf::from("/usr/lib/go-1.21/bin/go") }
}

/// Renders charts/ktrigger as release `ktrigger` in `namespace` with hack/helm-template.
fn helm_template(namespace: &str) -> String {
    helm_template_with("ktrigger", namespace, None)
}

/// Renders charts/ktrigger as `release` in `namespace`, with a values file of `values` when given.
fn helm_template_with(release: &str, namespace: &str, values: Option<&str>) -> String {
    let out = tempfile::tempdir().unwrap();
    let binary = out.path().join("helm-template");
    let build = Command::new(go())
        .args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(repo().join("hack/helm-template"))
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", out.path().join("cache"))
        .output()
        .expect("a Go toolchain (golang-go) to build hack/helm-template");
    assert!(
        build.status.success(),
        "building hack/helm-template (needs golang-github-masterminds-sprig-dev and golang-k8s-sigs-yaml-dev): {}",
        String::from_utf8_lossy(&build.stderr)
    );
    let values_file = out.path().join("values.yaml");
    let mut render = Command::new(&binary);
    render.arg(repo().join("charts/ktrigger")).args([release, namespace]);
    if let Some(values) = values {
        std::fs::write(&values_file, values).unwrap();
        render.arg(&values_file);
    }
    let render = render.output();
    let render = render.expect("hack/helm-template runs");
    assert!(render.status.success(), "rendering the chart: {}", String::from_utf8_lossy(&render.stderr));
    String::from_utf8(render.stdout).unwrap()
}

#[test]
fn the_kustomize_install_is_accepted_by_the_api_server() {
    let env = Env::new("kustomize");
    if !real_server(&env) {
        return;
    }
    let (ok, yaml) = env.kubectl(&["kustomize", repo().join("config/default").to_str().unwrap()]);
    assert!(ok, "kubectl kustomize config/default: {yaml}");
    let text = dry_run_apply(&env, &in_test_namespace(&env, &yaml), "kustomize install (config/default)");
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/triggerservices.ktrigger.dev",
        "clusterrole.rbac.authorization.k8s.io/ktrigger-controller",
        "deployment.apps/ktrigger-controller",
        "serviceaccount/ktrigger",
    ] {
        assert!(text.contains(object), "{object} is part of the install:\n{text}");
    }
}

#[test]
fn the_helm_chart_renders_and_is_accepted_by_the_api_server() {
    let env = Env::new("helm");
    if !real_server(&env) {
        return;
    }
    let yaml = helm_template(&env.namespace);
    let text = dry_run_apply(&env, &yaml, "Helm chart (charts/ktrigger)");
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/triggerservices.ktrigger.dev",
        "deployment.apps/ktrigger-controller",
        "serviceaccount/ktrigger",
        "service/ktrigger-controller",
    ] {
        assert!(text.contains(object), "{object} is part of the chart:\n{text}");
    }
}

/// The documents of a YAML stream, as JSON values.
fn documents(yaml: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|de| serde::Deserialize::deserialize(de).unwrap())
        .filter(|doc: &serde_json::Value| !doc.is_null())
        .collect()
}

const OPTIONS: &str = r#"
rbac: {create: false}
serviceAccount: {create: false, name: ops-controller}
podDisruptionBudget: {enabled: true}
extraArgs: [--status-interval=1m]
env: [{name: KTRIGGER_LOG, value: "info,ktrigger_core=debug"}]
podSecurityContext: {runAsUser: null, runAsGroup: null}
securityContext: {runAsUser: null}
metrics:
  serviceMonitor: {enabled: true}
  prometheusRule: {enabled: true}
"#;

#[test]
fn the_chart_names_objects_per_release_and_renders_its_options() {
    let yaml = helm_template_with("ops", "monitoring", Some(OPTIONS));
    let docs = documents(&yaml);
    let kinds: Vec<String> = docs
        .iter()
        .map(|d| format!("{}/{}", d["kind"].as_str().unwrap(), d["metadata"]["name"].as_str().unwrap()))
        .collect();
    for expected in [
        "Deployment/ops-ktrigger-controller",
        "Service/ops-ktrigger-controller",
        "PodDisruptionBudget/ops-ktrigger-controller",
        "ServiceMonitor/ops-ktrigger-controller",
        "PrometheusRule/ops-ktrigger-controller",
    ] {
        assert!(kinds.iter().any(|k| k == expected), "{expected} missing from {kinds:?}");
    }
    assert!(!kinds.iter().any(|k| k.starts_with("ClusterRole") || k.starts_with("ServiceAccount/")), "{kinds:?}");
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"], "ops");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "ops-controller");
    assert!(pod["securityContext"]["runAsUser"].is_null(), "a platform may assign the user: {pod}");
    assert!(container_user_is_unset(pod), "{pod}");
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().filter_map(|a| a.as_str()).collect();
    assert!(
        args.contains(&"--status-interval=1m") && args.contains(&"--lease-name=ops-ktrigger-controller"),
        "{args:?}"
    );
    assert!(container["env"].as_array().unwrap().iter().any(|e| e["name"] == "KTRIGGER_LOG"), "{container}");
    assert!(container["image"].as_str().unwrap().ends_with(":v0.1.0"), "the tag defaults to appVersion: {container}");

    // The chart's alerts are those of config/prometheus.
    let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule").unwrap();
    let shipped = documents(&std::fs::read_to_string(repo().join("config/prometheus/prometheusrule.yaml")).unwrap());
    assert_eq!(rule["spec"], shipped[0]["spec"], "config/prometheus/prometheusrule.yaml and the chart differ");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("config/prometheus/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 8), "{dashboard}");
}

fn container_user_is_unset(pod: &serde_json::Value) -> bool {
    let context = &pod["containers"][0]["securityContext"];
    context["runAsUser"].is_null() && context["runAsNonRoot"] == true
}

#[test]
fn the_chart_with_its_options_is_accepted_by_the_api_server() {
    let env = Env::new("helm-options");
    if !real_server(&env) {
        return;
    }
    let yaml = helm_template_with("ops", &env.namespace, Some(OPTIONS));
    // The test server has no Prometheus Operator: its objects are checked by rendering above.
    let kept: Vec<String> = yaml
        .split("\n---")
        .filter(|doc| !doc.contains("kind: ServiceMonitor") && !doc.contains("kind: PrometheusRule"))
        .map(str::to_string)
        .collect();
    let text = dry_run_apply(&env, &kept.join("\n---"), "Helm chart with its options");
    assert!(text.contains("poddisruptionbudget.policy/ops-ktrigger-controller"), "{text}");
    assert!(text.contains("deployment.apps/ops-ktrigger-controller"), "{text}");
}
