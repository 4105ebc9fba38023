//! The packaging forms — kustomize (config/), the Helm chart (charts/ktrigger), the KubeVela
//! addon (addons/ktrigger) and the Dockerfile — agree with each other and with what
//! `ktrigger controller` does: its image, flags, ports, probes, security context and RBAC.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::{Value, json};

/// The released image; every packaging form names it in exactly one place.
const IMAGE: &str = "ghcr.io/ktrigger/ktrigger:v0.1.0";
const NAMESPACE: &str = "ktrigger-system";
const SERVICE_ACCOUNT: &str = "ktrigger";
const CRD_FILE: &str = "config/crd/ktrigger.dev_triggerservices.yaml";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("api/ has a parent").to_path_buf()
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a multi-document YAML text, empty documents skipped.
fn documents(text: &str, origin: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|de| Value::deserialize(de).unwrap_or_else(|e| panic!("{origin}: invalid YAML: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(path);
        }
    }
}

/// Every document of every YAML file under config/, with the file it came from.
fn config_documents() -> Vec<(String, Value)> {
    let mut files = Vec::new();
    yaml_files(&root().join("config"), &mut files);
    assert!(!files.is_empty(), "no YAML under config/");
    let mut out = Vec::new();
    for file in files {
        let name = file.strip_prefix(root()).unwrap().display().to_string();
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in documents(&text, &name) {
            out.push((name.clone(), doc));
        }
    }
    out
}

/// The parts of config/ that `config/default` installs.
const INSTALLED: [&str; 3] = ["config/crd/", "config/rbac/", "config/manager/"];

/// The objects `config/default` installs (kustomization files left out).
fn config_objects() -> Vec<Value> {
    config_documents()
        .into_iter()
        .filter(|(file, doc)| INSTALLED.iter().any(|dir| file.starts_with(dir)) && doc["kind"] != "Kustomization")
        .map(|(_, doc)| doc)
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn strings(value: &Value) -> Vec<&str> {
    value.as_array().map(|items| items.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// Whether `rules` grant `verb` on `resource` of `group` (no wildcards are ever used).
fn allows(rules: &Value, group: &str, resource: &str, verb: &str) -> bool {
    rules.as_array().into_iter().flatten().any(|rule| {
        strings(&rule["apiGroups"]).contains(&group)
            && strings(&rule["resources"]).contains(&resource)
            && strings(&rule["verbs"]).contains(&verb)
            && rule.get("resourceNames").is_none()
    })
}

/// All rules of all Roles and ClusterRoles, as canonical JSON strings (order-insensitive).
fn rule_set(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
        .flat_map(|o| o["rules"].as_array().cloned().unwrap_or_default())
        .map(|rule| canonical_rule(&rule))
        .collect()
}

fn canonical_rule(rule: &Value) -> String {
    let sorted = |key: &str| {
        let mut items: Vec<String> = strings(&rule[key]).into_iter().map(str::to_string).collect();
        items.sort();
        items
    };
    json!({"apiGroups": sorted("apiGroups"), "resources": sorted("resources"), "verbs": sorted("verbs")}).to_string()
}

/// The value of `--flag=value` or `--flag value` in `args`; `Some("")` for a bare `--flag`.
fn flag<'a>(args: &[&'a str], name: &str) -> Option<&'a str> {
    let prefix = format!("{name}=");
    args.iter().enumerate().find_map(|(i, arg)| {
        if let Some(value) = arg.strip_prefix(&prefix) {
            Some(value)
        } else if *arg == name {
            Some(args.get(i + 1).filter(|next| !next.starts_with("--")).copied().unwrap_or(""))
        } else {
            None
        }
    })
}

fn controller_container(objects: &[Value]) -> Value {
    let deployment = find(objects, "Deployment", "ktrigger-controller");
    let containers = deployment["spec"]["template"]["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    containers[0].clone()
}

/// The container port a probe or Service names, by name or number.
fn port_number(container: &Value, port: &Value) -> u64 {
    if let Some(number) = port.as_u64() {
        return number;
    }
    let name = port.as_str().expect("port is a number or a name");
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

#[test]
fn every_config_yaml_is_a_kubernetes_object() {
    for (file, doc) in config_documents() {
        let api_version = doc["apiVersion"].as_str().unwrap_or_else(|| panic!("{file}: no apiVersion"));
        let kind = doc["kind"].as_str().unwrap_or_else(|| panic!("{file}: no kind"));
        assert!(!api_version.is_empty() && !kind.is_empty(), "{file}: empty apiVersion or kind");
        if kind == "Kustomization" {
            assert_eq!(api_version, "kustomize.config.k8s.io/v1beta1", "{file}");
            let dir = root().join(&file).parent().unwrap().to_path_buf();
            for resource in strings(&doc["resources"]) {
                assert!(dir.join(resource).exists(), "{file}: resource {resource} does not exist");
            }
            continue;
        }
        let name = doc["metadata"]["name"].as_str().unwrap_or_else(|| panic!("{file}: {kind} without metadata.name"));
        assert!(!name.is_empty(), "{file}: {kind} with an empty name");
        let namespaced =
            !matches!(kind, "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition");
        if !INSTALLED.iter().any(|dir| file.starts_with(dir)) {
            continue;
        }
        if namespaced {
            assert_eq!(doc["metadata"]["namespace"], NAMESPACE, "{file}: {kind} {name} must be in {NAMESPACE}");
        } else {
            assert!(doc["metadata"].get("namespace").is_none(), "{file}: cluster-scoped {kind} {name} has a namespace");
        }
    }
}

#[test]
fn crd_kustomization_lists_the_generated_crd() {
    let kustomization = &documents(&read("config/crd/kustomization.yaml"), "config/crd/kustomization.yaml")[0];
    assert_eq!(strings(&kustomization["resources"]), ["ktrigger.dev_triggerservices.yaml"]);
    let default = &documents(&read("config/default/kustomization.yaml"), "config/default/kustomization.yaml")[0];
    let parts = strings(&default["resources"]);
    for part in ["../crd", "../rbac", "../manager"] {
        assert!(parts.contains(&part), "config/default must include {part}: {parts:?}");
    }
}

#[test]
fn controller_rbac_covers_what_the_controller_does() {
    let objects = config_objects();
    let role = &find(&objects, "ClusterRole", "ktrigger-controller")["rules"];
    let required: &[(&str, &str, &[&str])] = &[
        ("ktrigger.dev", "triggerservices", &["get", "list", "watch"]),
        ("ktrigger.dev", "triggerservices/status", &["patch", "update"]),
        // The Events it publishes about TriggerServices (kube-runtime's Recorder).
        ("events.k8s.io", "events", &["create", "patch"]),
        // Everything a TriggerService reads or does is made as its ServiceAccount.
        ("", "serviceaccounts", &["impersonate"]),
        // A watch serves another ServiceAccount only when a review says it may list and watch.
        ("authorization.k8s.io", "subjectaccessreviews", &["create"]),
    ];
    for (group, resource, verbs) in required {
        for verb in *verbs {
            assert!(
                allows(role, group, resource, verb),
                "ClusterRole ktrigger-controller lacks {verb} on {group}/{resource}"
            );
        }
    }
    // Nothing the tenants' identities do: no Secrets at all, no reading or changing of other kinds.
    for verb in ["get", "list", "watch", "create", "update", "patch", "delete"] {
        assert!(!allows(role, "", "secrets", verb), "the controller must not {verb} Secrets");
    }
    for (group, resource) in [("", "configmaps"), ("", "pods"), ("", "events"), ("apps", "deployments")] {
        for verb in ["get", "list", "watch", "patch"] {
            assert!(!allows(role, group, resource, verb), "the controller's own identity must not {verb} {resource}");
        }
    }
    for (group, resource) in [("", "users"), ("", "groups"), ("authentication.k8s.io", "userextras")] {
        assert!(!allows(role, group, resource, "impersonate"), "the controller may impersonate only ServiceAccounts");
    }
    let reads: Vec<&Value> = role
        .as_array()
        .unwrap()
        .iter()
        .filter(|rule| strings(&rule["verbs"]).iter().any(|v| matches!(*v, "list" | "watch")))
        .collect();
    for rule in reads {
        assert_eq!(
            strings(&rule["resources"]),
            ["triggerservices"],
            "the controller lists only TriggerServices: {rule}"
        );
    }

    let leases = find(&objects, "Role", "ktrigger-leader-election");
    assert_eq!(leases["metadata"]["namespace"], NAMESPACE);
    for verb in ["get", "create", "update"] {
        assert!(
            allows(&leases["rules"], "coordination.k8s.io", "leases", verb),
            "leader election lacks {verb} on leases"
        );
    }

    let subject = json!([{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]);
    let binding = find(&objects, "ClusterRoleBinding", "ktrigger-controller");
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ktrigger-controller"})
    );
    assert_eq!(binding["subjects"], subject);
    let binding = find(&objects, "RoleBinding", "ktrigger-leader-election");
    assert_eq!(binding["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ktrigger-leader-election"})
    );
    assert_eq!(binding["subjects"], subject);
    let account = find(&objects, "ServiceAccount", SERVICE_ACCOUNT);
    assert_eq!(account["metadata"]["namespace"], NAMESPACE);
}

#[test]
fn rbac_has_no_wildcards_and_no_cluster_admin() {
    for (_, object) in config_documents() {
        let name = format!("{} {}", object["kind"], object["metadata"]["name"]);
        for rule in object["rules"].as_array().into_iter().flatten() {
            for key in ["apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"] {
                assert!(!strings(&rule[key]).iter().any(|v| v.contains('*')), "{name}: wildcard in {key}: {rule}");
            }
        }
        if object["roleRef"].is_object() {
            let role = object["roleRef"]["name"].as_str().unwrap();
            assert!(!matches!(role, "cluster-admin" | "admin" | "edit"), "{name} binds the built-in {role}");
        }
    }
    // The chart and the addon write the same rules in template and CUE text.
    for file in ["charts/ktrigger/templates/rbac.yaml", "addons/ktrigger/resources/rbac.cue"] {
        let text = read(file);
        assert!(!text.contains("cluster-admin"), "{file} mentions cluster-admin");
        for wildcard in ["\"*\"", "'*'", "[*]", "- *"] {
            assert!(!text.contains(wildcard), "{file} contains the wildcard {wildcard}");
        }
    }
}

#[test]
fn aggregated_roles_extend_view_edit_and_admin() {
    let objects = config_objects();
    let view = find(&objects, "ClusterRole", "ktrigger-view");
    assert_eq!(view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"], "true");
    for verb in ["get", "list", "watch"] {
        assert!(allows(&view["rules"], "ktrigger.dev", "triggerservices", verb));
    }
    assert!(!allows(&view["rules"], "ktrigger.dev", "triggerservices", "create"), "view must be read-only");
    let edit = find(&objects, "ClusterRole", "ktrigger-edit");
    assert_eq!(edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"], "true");
    assert_eq!(edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"], "true");
    for verb in ["get", "list", "watch", "create", "update", "patch", "delete"] {
        assert!(allows(&edit["rules"], "ktrigger.dev", "triggerservices", verb), "ktrigger-edit lacks {verb}");
    }
    assert!(
        !allows(&edit["rules"], "ktrigger.dev", "triggerservices/status", "patch"),
        "status belongs to the controller"
    );
}

#[test]
fn deployment_runs_the_controller_as_specified() {
    let objects = config_objects();
    let deployment = find(&objects, "Deployment", "ktrigger-controller");
    assert_eq!(deployment["metadata"]["namespace"], NAMESPACE);
    assert_eq!(deployment["spec"]["replicas"], 1);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], SERVICE_ACCOUNT);
    let selector = deployment["spec"]["selector"]["matchLabels"].as_object().expect("matchLabels");
    for (key, value) in selector {
        assert_eq!(
            &deployment["spec"]["template"]["metadata"]["labels"][key], value,
            "pod labels must match the selector"
        );
    }

    let container = controller_container(&objects);
    assert_eq!(container["image"], IMAGE);
    let mut args: Vec<&str> = strings(&container["command"]);
    args.extend(strings(&container["args"]));
    if args.first() == Some(&"/ktrigger") || args.first() == Some(&"ktrigger") {
        args.remove(0);
    }
    assert_eq!(args.first(), Some(&"controller"), "runs `ktrigger controller`: {args:?}");
    assert_eq!(flag(&args, "--leader-elect"), Some(""), "{args:?}");
    assert_eq!(flag(&args, "--metrics-addr"), Some("0.0.0.0:8080"), "{args:?}");
    assert_eq!(flag(&args, "--health-addr"), Some("0.0.0.0:8081"), "{args:?}");
    assert_eq!(flag(&args, "--webhook-addr"), Some("0.0.0.0:8090"), "{args:?}");
    assert_eq!(flag(&args, "--log-format"), Some("json"), "{args:?}");

    let env = container["env"].as_array().expect("env");
    let pod_namespace = env.iter().find(|e| e["name"] == "POD_NAMESPACE").expect("POD_NAMESPACE env");
    assert_eq!(pod_namespace["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");

    let ports: BTreeSet<u64> =
        container["ports"].as_array().unwrap().iter().filter_map(|p| p["containerPort"].as_u64()).collect();
    assert_eq!(ports, BTreeSet::from([8080, 8081, 8090]));
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(port_number(&container, &get["port"]), 8081, "{probe} on the health port");
    }

    assert_eq!(
        container["resources"],
        json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}})
    );
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    let pod_security = &pod["securityContext"];
    for context in [security, pod_security] {
        if !context["runAsNonRoot"].is_null() {
            assert_eq!(context["runAsNonRoot"], true);
        }
        if !context["runAsUser"].is_null() {
            assert_eq!(context["runAsUser"], 65532);
        }
    }
    let effective = |key: &str| if security[key].is_null() { pod_security[key].clone() } else { security[key].clone() };
    assert_eq!(effective("runAsNonRoot"), true);
    assert_eq!(effective("runAsUser"), 65532);
    assert_eq!(effective("seccompProfile")["type"], "RuntimeDefault");

    let service = find(&objects, "Service", "ktrigger-controller");
    assert_eq!(service["metadata"]["namespace"], NAMESPACE);
    for (key, value) in service["spec"]["selector"].as_object().expect("Service selector") {
        assert_eq!(&deployment["spec"]["template"]["metadata"]["labels"][key], value, "Service selects the controller");
    }
    let mut served = BTreeSet::new();
    for port in service["spec"]["ports"].as_array().unwrap() {
        let target = port.get("targetPort").unwrap_or(&port["port"]);
        let container_port = port_number(&container, target);
        assert_eq!(port["port"].as_u64(), Some(container_port), "Service port {} keeps the number", port["name"]);
        served.insert(container_port);
    }
    assert_eq!(served, BTreeSet::from([8080, 8090]), "the Service exposes webhooks and metrics");
}

#[test]
fn kustomize_builds_the_default_install() {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let output =
        Command::new(&kubectl).arg("kustomize").arg(root().join("config/default")).output().unwrap_or_else(|e| {
            panic!("`{kubectl} kustomize` could not run ({e}): install kubectl (it has kustomize built in)")
        });
    assert!(
        output.status.success(),
        "kubectl kustomize config/default failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let objects = documents(&String::from_utf8(output.stdout).unwrap(), "kubectl kustomize config/default");
    find(&objects, "CustomResourceDefinition", "triggerservices.ktrigger.dev");
    find(&objects, "Namespace", NAMESPACE);
    find(&objects, "ServiceAccount", SERVICE_ACCOUNT);
    for role in ["ktrigger-controller", "ktrigger-view", "ktrigger-edit"] {
        find(&objects, "ClusterRole", role);
    }
    find(&objects, "ClusterRoleBinding", "ktrigger-controller");
    find(&objects, "Role", "ktrigger-leader-election");
    find(&objects, "RoleBinding", "ktrigger-leader-election");
    find(&objects, "Service", "ktrigger-controller");
    assert_eq!(controller_container(&objects)["image"], IMAGE);
    // The build is exactly the files of config/crd, config/rbac and config/manager.
    let names = |objects: &[Value]| -> BTreeSet<String> {
        objects
            .iter()
            .map(|o| format!("{}/{}", o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap()))
            .collect()
    };
    assert_eq!(names(&objects), names(&config_objects()));
    assert_eq!(objects.len(), config_objects().len());
}

/// The chart's template text with every line holding a template action removed: what is left
/// of rbac.yaml is plain YAML with the same rules.
fn without_template_lines(text: &str) -> String {
    text.lines().filter(|line| !line.contains("{{")).collect::<Vec<_>>().join("\n")
}

/// Template actions open and close, and blocks end.
fn check_template_syntax(file: &str, text: &str) {
    assert_eq!(text.matches("{{").count(), text.matches("}}").count(), "{file}: unbalanced {{{{ }}}}");
    let mut opened = 0;
    let mut ended = 0;
    for action in text.split("{{").skip(1) {
        let action = action.trim_start_matches('-').trim_start();
        let word = action.split_whitespace().next().unwrap_or("");
        match word {
            "if" | "with" | "range" | "define" | "block" => opened += 1,
            "end" => ended += 1,
            _ => {}
        }
    }
    assert_eq!(opened, ended, "{file}: {opened} blocks opened, {ended} ended");
}

#[test]
fn chart_matches_the_manifests() {
    let chart = &documents(&read("charts/ktrigger/Chart.yaml"), "Chart.yaml")[0];
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "ktrigger");
    assert_eq!(chart["version"], "0.1.0");
    assert_eq!(chart["appVersion"], "v0.1.0");
    assert_eq!(
        read("charts/ktrigger/crds/ktrigger.dev_triggerservices.yaml"),
        read(CRD_FILE),
        "charts/ktrigger/crds is out of date: cp {CRD_FILE} charts/ktrigger/crds/"
    );

    let values = &documents(&read("charts/ktrigger/values.yaml"), "values.yaml")[0];
    let tag =
        values["image"]["tag"].as_str().filter(|t| !t.is_empty()).unwrap_or(chart["appVersion"].as_str().unwrap());
    assert_eq!(format!("{}:{tag}", values["image"]["repository"].as_str().unwrap()), IMAGE);
    assert_eq!(values["replicas"], 1);
    assert_eq!(values["leaderElect"], true);
    assert_eq!(values["watchNamespaces"], json!([]));
    assert_eq!(values["logFormat"], "json");
    assert_eq!(values["service"]["metricsPort"], 8080);
    assert_eq!(values["service"]["webhookPort"], 8090);
    assert_eq!(values["healthPort"], 8081);
    // Empty: the release's base name, `ktrigger` for a release of that name.
    assert_eq!(values["serviceAccount"]["name"], "");
    assert_eq!(values["rbac"]["create"], true);
    assert_eq!(values["extraRBAC"], json!([]));
    let pod_security = &values["podSecurityContext"];
    assert_eq!((pod_security["runAsNonRoot"].as_bool(), pod_security["runAsUser"].as_u64()), (Some(true), Some(65532)));
    let security = &values["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    for (name, value) in [
        ("serviceMonitor", &values["metrics"]["serviceMonitor"]),
        ("prometheusRule", &values["metrics"]["prometheusRule"]),
    ] {
        assert_eq!(value["enabled"], false, "metrics.{name} is off by default");
    }
    assert_eq!(values["defaultServiceAccount"], "");
    let objects = config_objects();
    assert_eq!(values["resources"], controller_container(&objects)["resources"]);

    let templates = root().join("charts/ktrigger/templates");
    for file in [
        "_helpers.tpl",
        "NOTES.txt",
        "deployment.yaml",
        "service.yaml",
        "serviceaccount.yaml",
        "rbac.yaml",
        "pdb.yaml",
        "servicemonitor.yaml",
        "prometheusrule.yaml",
    ] {
        let text = std::fs::read_to_string(templates.join(file)).unwrap_or_else(|e| panic!("templates/{file}: {e}"));
        check_template_syntax(file, &text);
    }

    let deployment = read("charts/ktrigger/templates/deployment.yaml");
    for needle in [
        "include \"ktrigger.image\"",
        "- controller",
        "- --leader-elect",
        "- --metrics-addr=0.0.0.0:{{ .Values.service.metricsPort }}",
        "- --health-addr=0.0.0.0:{{ .Values.healthPort }}",
        "- --webhook-addr=0.0.0.0:{{ .Values.service.webhookPort }}",
        "- --log-format={{ .Values.logFormat }}",
        "- --watch-namespaces=",
        "- --default-service-account={{ . }}",
        "name: POD_NAMESPACE",
        "fieldPath: metadata.namespace",
        "path: /readyz",
        "path: /healthz",
        "toYaml . | nindent 8",
        ".Values.podSecurityContext",
        ".Values.securityContext",
        ".Values.extraArgs",
        ".Values.env",
    ] {
        assert!(deployment.contains(needle), "charts/ktrigger/templates/deployment.yaml lacks {needle:?}");
    }
    let helpers = read("charts/ktrigger/templates/_helpers.tpl");
    assert!(helpers.contains(".Values.image.repository") && helpers.contains(".Values.image.tag"));

    // The chart's Roles and ClusterRoles carry the same rules as config/rbac.
    let rbac = read("charts/ktrigger/templates/rbac.yaml");
    assert!(rbac.contains(".Values.extraRBAC"), "the chart appends extraRBAC to the controller's rules");
    let chart_objects = documents(&without_template_lines(&rbac), "templates/rbac.yaml");
    assert_eq!(rule_set(&chart_objects), rule_set(&objects), "chart RBAC differs from config/rbac");
}

/// The rules written in CUE as flow mappings `{apiGroups: [...], resources: [...], verbs: [...]}`.
fn cue_rules(text: &str) -> Vec<Value> {
    text.match_indices("{apiGroups:")
        .map(|(start, _)| {
            let end = start + text[start..].find('}').expect("rule closes");
            serde_yaml::from_str::<Value>(&text[start..=end])
                .unwrap_or_else(|e| panic!("rule {}: {e}", &text[start..=end]))
        })
        .collect()
}

/// Braces, brackets and parentheses of a CUE file balance (outside strings and comments).
fn check_cue_balance(file: &str, text: &str) {
    let mut stack = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let mut in_string = false;
        let mut escaped = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if in_string {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => in_string = false,
                    _ => escaped = false,
                }
                continue;
            }
            match c {
                '/' if chars.peek() == Some(&'/') => break,
                '"' => in_string = true,
                '{' | '[' | '(' => stack.push(c),
                '}' | ']' | ')' => {
                    let open = stack.pop().unwrap_or_else(|| panic!("{file}:{}: unexpected {c}", number + 1));
                    let expected = match open {
                        '{' => '}',
                        '[' => ']',
                        _ => ')',
                    };
                    assert_eq!(c, expected, "{file}:{}: {open} closed by {c}", number + 1);
                }
                _ => {}
            }
        }
    }
    assert!(stack.is_empty(), "{file}: unclosed {stack:?}");
}

/// `a:   "b"` and `a: "b"` read the same.
fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn addon_matches_the_manifests() {
    let addon = "addons/ktrigger";
    for file in [
        "metadata.yaml",
        "template.cue",
        "parameter.cue",
        "README.md",
        "resources/crd.yaml",
        "resources/rbac.cue",
        "resources/controller.cue",
        "resources/namespace.cue",
        "definitions/trigger-service.cue",
        "schemas/component-uischema-trigger-service.yaml",
    ] {
        assert!(root().join(addon).join(file).is_file(), "{addon}/{file} is missing");
    }
    let metadata = &documents(&read("addons/ktrigger/metadata.yaml"), "metadata.yaml")[0];
    assert_eq!(metadata["name"], "ktrigger");
    assert_eq!(metadata["version"], "0.1.0");
    assert!(metadata["description"].as_str().is_some_and(|d| !d.is_empty()));
    assert!(!strings(&metadata["tags"]).is_empty());
    assert_eq!(metadata["system"], json!({"vela": ">=1.8.0", "kubernetes": ">=1.24"}));

    for file in [
        "template.cue",
        "parameter.cue",
        "resources/rbac.cue",
        "resources/controller.cue",
        "resources/namespace.cue",
        "definitions/trigger-service.cue",
    ] {
        check_cue_balance(file, &read(&format!("{addon}/{file}")));
    }

    let parameter = read("addons/ktrigger/parameter.cue");
    assert!(parameter.contains(&format!("image: *\"{IMAGE}\" | string")), "parameter.cue defaults image to {IMAGE}");
    for name in ["replicas:", "leaderElect:", "watchNamespaces:", "defaultServiceAccount:"] {
        assert!(parameter.contains(name), "parameter.cue lacks {name}");
    }

    let template = squeeze(&read("addons/ktrigger/template.cue"));
    assert!(template.starts_with("package main"), "template.cue is in package main");
    assert!(
        template.contains("kind: \"Application\"") && template.contains("components: [ namespace, rbac, controller, ]"),
        "{template}"
    );
    for policy in ["type: \"take-over\"", "type: \"shared-resource\"", "type: \"garbage-collect\""] {
        assert!(template.contains(policy), "template.cue lacks the policy {policy}");
    }
    for file in ["resources/rbac.cue", "resources/controller.cue"] {
        let text = squeeze(&read(&format!("{addon}/{file}")));
        assert!(text.contains("dependsOn: [\"ktrigger-namespace\"]"), "{file} waits for the namespace");
    }
    let namespace = squeeze(&read("addons/ktrigger/resources/namespace.cue"));
    assert!(namespace.contains("kind: \"Namespace\"") && namespace.contains("name: \"ktrigger-namespace\""));
    let form = &documents(&read("addons/ktrigger/schemas/component-uischema-trigger-service.yaml"), "uischema")[0];
    assert_eq!(form[0]["jsonKey"], "triggers");
    assert_eq!(form[0]["uiType"], "Structs");

    let controller = squeeze(&read("addons/ktrigger/resources/controller.cue"));
    for needle in [
        "package main",
        "type: \"k8s-objects\"",
        "kind: \"Deployment\"",
        "image: parameter.image",
        "replicas: parameter.replicas",
        "\"controller\",",
        "if parameter.leaderElect {\"--leader-elect\"}",
        "\"--metrics-addr=0.0.0.0:8080\"",
        "\"--health-addr=0.0.0.0:8081\"",
        "\"--webhook-addr=0.0.0.0:8090\"",
        "\"--log-format=json\"",
        "\"--watch-namespaces=\" + strings.Join(parameter.watchNamespaces, \",\")",
        "\"--default-service-account=\" + parameter.defaultServiceAccount",
        "name: \"POD_NAMESPACE\"",
        "path: \"/readyz\", port: \"health\"",
        "path: \"/healthz\", port: \"health\"",
        "name: \"health\", containerPort: 8081",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "drop: [\"ALL\"]",
        "runAsUser: 65532",
    ] {
        assert!(controller.contains(needle), "resources/controller.cue lacks {needle:?}");
    }

    let rbac = read("addons/ktrigger/resources/rbac.cue");
    let addon_rules: BTreeSet<String> = cue_rules(&rbac).iter().map(canonical_rule).collect();
    assert_eq!(addon_rules, rule_set(&config_objects()), "the addon's RBAC differs from config/rbac");

    // The same CRD, hence the same group and version, as config/crd.
    assert_eq!(
        read("addons/ktrigger/resources/crd.yaml"),
        read(CRD_FILE),
        "cp {CRD_FILE} addons/ktrigger/resources/crd.yaml"
    );
    let crd = &documents(&read(CRD_FILE), CRD_FILE)[0];
    let api_version =
        format!("{}/{}", crd["spec"]["group"].as_str().unwrap(), crd["spec"]["versions"][0]["name"].as_str().unwrap());
    assert_eq!(api_version, "ktrigger.dev/v1alpha1");

    let definition = squeeze(&read("addons/ktrigger/definitions/trigger-service.cue"));
    for needle in [
        "\"trigger-service\": {".to_string(),
        "type: \"component\"".to_string(),
        format!("apiVersion: \"{api_version}\" kind: \"TriggerService\""),
        "output: { apiVersion: \"ktrigger.dev/v1alpha1\" kind: \"TriggerService\"".to_string(),
        "triggers: parameter.triggers".to_string(),
        "serviceAccountName: parameter.serviceAccountName".to_string(),
        "serviceAccountName?: string".to_string(),
        "triggers: [...#Trigger]".to_string(),
        "source: { // +usage=Source type".to_string(),
        "destinations?: [...#Destination]".to_string(),
    ] {
        assert!(definition.contains(&needle), "definitions/trigger-service.cue lacks {needle:?}");
    }
}

#[test]
fn addon_readme_example_is_a_valid_trigger_service() {
    let readme = read("addons/ktrigger/README.md");
    let block = readme
        .split("```yaml")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the addon README has a YAML example");
    let app = &documents(block, "addons/ktrigger/README.md")[0];
    assert_eq!(app["kind"], "Application");
    let component = app["spec"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "trigger-service")
        .expect("the example uses the trigger-service component");
    // What the ComponentDefinition renders from the component's properties.
    let mut spec = json!({"triggers": component["properties"]["triggers"]});
    if let Some(account) = component["properties"].get("serviceAccountName") {
        spec["serviceAccountName"] = account.clone();
    }
    let rendered = json!({
        "apiVersion": "ktrigger.dev/v1alpha1",
        "kind": "TriggerService",
        "metadata": {"name": component["name"], "namespace": app["metadata"]["namespace"]},
        "spec": spec,
    });
    let yaml = serde_yaml::to_string(&rendered).unwrap();
    let parsed = ktrigger_api::parse_documents(&yaml, "example");
    assert_eq!(parsed.len(), 1);
    let document = parsed.into_iter().next().unwrap().unwrap_or_else(|e| panic!("{e}"));
    let problems = ktrigger_api::validate_spec(&document.spec);
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn dockerfile_builds_a_static_non_root_image() {
    let dockerfile = read("Dockerfile");
    let instructions: Vec<String> = dockerfile
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(squeeze)
        .collect();
    let stages: Vec<&String> = instructions.iter().filter(|i| i.starts_with("FROM ")).collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    assert_eq!(stages[0].as_str(), "FROM rust:1-bookworm AS builder");
    let last = stages.last().unwrap();
    assert!(
        last.starts_with("FROM gcr.io/distroless/static-debian12:nonroot") || last.starts_with("FROM scratch"),
        "final stage: {last}"
    );
    let run = instructions.iter().filter(|i| i.starts_with("RUN ")).cloned().collect::<Vec<_>>().join(" ");
    for needle in
        ["musl-tools", "rustup target add x86_64-unknown-linux-musl", "cargo build --release --locked -p ktrigger"]
    {
        assert!(run.contains(needle), "the builder lacks {needle:?}: {run}");
    }
    assert!(run.contains("--target x86_64-unknown-linux-musl"), "static musl build");

    let final_stage: Vec<&String> = instructions.iter().skip_while(|i| *i != *last).collect();
    assert!(final_stage.iter().any(|i| i.starts_with("COPY --from=builder ") && i.ends_with(" /ktrigger")));
    if last.starts_with("FROM scratch") {
        assert!(final_stage.iter().any(|i| i.contains("ca-certificates")), "scratch needs the CA certificates");
    }
    let user = final_stage.iter().rfind(|i| i.starts_with("USER ")).expect("the final stage sets USER");
    assert_eq!(user.as_str(), "USER 65532:65532");
    assert!(final_stage.iter().any(|i| i.as_str() == "ENTRYPOINT [\"/ktrigger\"]"));
    assert!(final_stage.iter().any(|i| i.as_str() == "CMD [\"controller\"]"));

    let ignored: Vec<String> =
        read(".dockerignore").lines().map(|l| l.trim().trim_end_matches('/').to_string()).collect();
    for entry in ["target", ".git"] {
        assert!(ignored.iter().any(|l| l == entry), ".dockerignore lacks {entry}");
    }
}

#[test]
fn readme_shows_the_three_ways_to_install() {
    let readme = read("README.md");
    for command in [
        "kubectl apply -k config/default",
        "helm install ktrigger charts/ktrigger",
        "vela addon enable ./addons/ktrigger",
    ] {
        assert!(readme.contains(command), "README.md lacks `{command}`");
    }
}
