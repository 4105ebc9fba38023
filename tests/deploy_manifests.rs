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
    let render = Command::new(&binary).arg(repo().join("charts/ktrigger")).args(["ktrigger", namespace]).output();
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
