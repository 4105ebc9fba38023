//! The real `kubectl` works against the test cluster: apply, get, delete, for built-in resources
//! and for the resources of a CRD it applied itself.
//! `kubectl apply` runs with its default (strict) validation: the cluster's OpenAPI v3 documents
//! tell it the server validates.

use std::path::{Path, PathBuf};
use std::process::Output;

use ktrigger_testcluster::TestCluster;
use serde_json::Value;

/// A kubeconfig and a private cache directory for one test.
struct Kubectl {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn new(cluster: &TestCluster) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        cluster.write_kubeconfig(&kubeconfig).unwrap();
        Kubectl { dir, kubeconfig }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs kubectl without blocking the runtime that serves the cluster.
    async fn run(&self, args: &[&str]) -> Output {
        let cache = self.dir.path().join("cache");
        let output = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&cache)
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG")
            .output()
            .await;
        match output {
            Ok(output) => output,
            Err(e) => panic!(
                "kubectl is required by these tests and must be on PATH (it is installed at /usr/bin/kubectl \
                 on the project's machines): {e}"
            ),
        }
    }

    /// Runs kubectl and returns its standard output, failing the test when it fails.
    async fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "kubectl {args:?} failed: {stderr}\n{stdout}");
        stdout
    }

    async fn json(&self, args: &[&str]) -> Value {
        let stdout = self.ok(args).await;
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("kubectl {args:?} printed no JSON ({e}): {stdout}"))
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn kubectl_applies_and_gets_a_configmap() {
    let cluster = TestCluster::start().await;
    let kubectl = Kubectl::new(&cluster);
    let manifest = kubectl.write(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  labels:\n    app: ktrigger\ndata:\n  mode: fast\n",
    );
    let applied = kubectl.ok(&["apply", "-f", path(&manifest)]).await;
    assert!(applied.contains("configmap/settings created"), "{applied}");

    let cm = kubectl.json(&["get", "configmap", "settings", "-o", "json"]).await;
    assert_eq!(cm["data"]["mode"], "fast");
    assert_eq!(cm["metadata"]["namespace"], "default");
    assert!(cm["metadata"]["uid"].as_str().is_some());

    let changed = kubectl.write(
        "cm2.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  labels:\n    app: ktrigger\ndata:\n  mode: slow\n  extra: \"1\"\n",
    );
    let reapplied = kubectl.ok(&["apply", "-f", path(&changed)]).await;
    assert!(reapplied.contains("configmap/settings configured"), "{reapplied}");
    let cm = kubectl.json(&["get", "cm", "-l", "app=ktrigger", "-o", "json"]).await;
    assert_eq!(cm["kind"], "List");
    assert_eq!(cm["items"][0]["data"]["mode"], "slow");
    assert_eq!(cm["items"][0]["data"]["extra"], "1");

    let table = kubectl.ok(&["get", "configmaps"]).await;
    assert!(table.lines().next().unwrap().contains("NAME"), "{table}");
    assert!(table.contains("settings"), "{table}");

    kubectl.ok(&["delete", "configmap", "settings"]).await;
    let gone = kubectl.run(&["get", "configmap", "settings"]).await;
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("NotFound"), "{}", String::from_utf8_lossy(&gone.stderr));
}

#[tokio::test]
async fn kubectl_applies_a_crd_and_then_its_resources() {
    let cluster = TestCluster::start().await;
    let kubectl = Kubectl::new(&cluster);
    let crd = kubectl.write(
        "crd.yaml",
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.example.io
spec:
  group: example.io
  scope: Namespaced
  names:
    plural: gadgets
    singular: gadget
    kind: Gadget
    shortNames: [gd]
  versions:
    - name: v1
      served: true
      storage: true
      subresources:
        status: {}
      additionalPrinterColumns:
        - name: Color
          type: string
          jsonPath: .spec.color
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
"#,
    );
    let out = kubectl.ok(&["apply", "-f", path(&crd)]).await;
    assert!(out.contains("customresourcedefinition.apiextensions.k8s.io/gadgets.example.io created"), "{out}");
    kubectl.ok(&["wait", "--for=condition=Established", "crd/gadgets.example.io", "--timeout=10s"]).await;

    let gadget = kubectl
        .write("gadget.yaml", "apiVersion: example.io/v1\nkind: Gadget\nmetadata:\n  name: g1\nspec:\n  color: red\n");
    let out = kubectl.ok(&["apply", "-f", path(&gadget)]).await;
    assert!(out.contains("gadget.example.io/g1 created"), "{out}");

    let table = kubectl.ok(&["get", "gadgets"]).await;
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(header.contains("NAME") && header.contains("COLOR"), "{table}");
    assert!(lines.any(|l| l.contains("g1") && l.contains("red")), "{table}");

    let listed = kubectl.json(&["get", "gd", "-o", "json"]).await;
    assert_eq!(listed["items"][0]["spec"]["color"], "red");

    let recolored = kubectl.write(
        "gadget2.yaml",
        "apiVersion: example.io/v1\nkind: Gadget\nmetadata:\n  name: g1\nspec:\n  color: blue\n",
    );
    let out = kubectl.ok(&["apply", "--server-side", "-f", path(&recolored)]).await;
    assert!(out.contains("serverside-applied"), "{out}");
    let g1 = kubectl.json(&["get", "gadget", "g1", "-o", "json"]).await;
    assert_eq!(g1["spec"]["color"], "blue");
    assert_eq!(g1["metadata"]["generation"], 2);
}

#[tokio::test]
async fn kubectl_shows_the_message_of_a_broken_validation_rule() {
    let cluster = TestCluster::start().await;
    let kubectl = Kubectl::new(&cluster);
    let crd = kubectl.write(
        "crd.yaml",
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: ranges.example.io
spec:
  group: example.io
  scope: Namespaced
  names: {plural: ranges, singular: range, kind: Range}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              x-kubernetes-validations:
                - {rule: "self.min <= self.max", message: "min must not exceed max"}
              properties:
                min: {type: integer}
                max: {type: integer}
"#,
    );
    kubectl.ok(&["apply", "-f", path(&crd)]).await;
    kubectl.ok(&["wait", "--for=condition=Established", "crd/ranges.example.io", "--timeout=10s"]).await;
    let range = |min: i64| {
        format!("apiVersion: example.io/v1\nkind: Range\nmetadata:\n  name: r\nspec: {{min: {min}, max: 3}}\n")
    };
    let bad = kubectl.write("bad.yaml", &range(5));
    let output = kubectl.run(&["apply", "-f", path(&bad)]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(r#"The Range "r" is invalid: spec: Invalid value: "object": min must not exceed max"#),
        "{stderr}"
    );
    let good = kubectl.write("good.yaml", &range(1));
    let out = kubectl.ok(&["apply", "-f", path(&good)]).await;
    assert!(out.contains("range.example.io/r created"), "{out}");
}

#[tokio::test]
async fn kubectl_reapplies_a_deployment_with_a_strategic_merge_patch() {
    let cluster = TestCluster::start().await;
    let kubectl = Kubectl::new(&cluster);
    let deployment = |image: &str, replicas: u32| {
        format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
        - name: web
          image: {image}
          ports:
            - containerPort: 8080
          env:
            - name: MODE
              value: fast
        - name: sidecar
          image: sidecar:1
"#
        )
    };
    let first = kubectl.write("d1.yaml", &deployment("web:1", 1));
    kubectl.ok(&["apply", "-f", path(&first)]).await;
    let second = kubectl.write("d2.yaml", &deployment("web:2", 3));
    let out = kubectl.ok(&["apply", "-f", path(&second)]).await;
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert!(
        cluster
            .request_log()
            .iter()
            .any(|(m, uri)| m == "PATCH" && uri.starts_with("/apis/apps/v1/namespaces/default/deployments/web?")),
        "the second apply patches the deployment"
    );

    let applied = kubectl.json(&["get", "deployment", "web", "-o", "json"]).await;
    assert_eq!(applied["spec"]["replicas"], 3);
    let containers = applied["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[0]["image"], "web:2");
    assert_eq!(containers[0]["ports"][0]["containerPort"], 8080, "untouched fields of a merged element stay");
    assert_eq!(containers[0]["env"][0]["value"], "fast");
    assert_eq!(containers[1]["name"], "sidecar");
    assert_eq!(applied["metadata"]["generation"], 2);

    let all = kubectl.ok(&["get", "all"]).await;
    assert!(all.contains("deployment.apps/web"), "{all}");
}
