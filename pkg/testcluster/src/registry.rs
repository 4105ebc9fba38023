//! The resources the test cluster serves: the built-in ones and those registered by CRDs.

use std::cmp::Ordering;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::status::ApiError;
use crate::validation::Schema;

/// The group of CustomResourceDefinitions.
pub(crate) const CRD_GROUP: &str = "apiextensions.k8s.io";
/// The plural of CustomResourceDefinitions.
pub(crate) const CRD_PLURAL: &str = "customresourcedefinitions";

/// Verbs every resource supports.
const VERBS: [&str; 8] = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// An additional printer column of a CRD version, shown by `kubectl get`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub json_path: String,
    pub description: String,
    pub priority: i64,
}

/// One served version of a resource.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct VersionDef {
    pub name: String,
    pub status: bool,
    pub columns: Vec<PrinterColumn>,
    /// What a CRD's schema makes the cluster enforce on this version's objects.
    pub schema: Option<Arc<Schema>>,
}

/// A resource type: where it is served and how it is named.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ResourceDef {
    pub group: String,
    pub versions: Vec<VersionDef>,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Set for resources registered by a CustomResourceDefinition.
    pub crd: Option<String>,
}

impl ResourceDef {
    fn builtin(
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        short: &[&str],
        status: bool,
    ) -> Self {
        ResourceDef {
            group: group.to_string(),
            versions: vec![VersionDef { name: version.to_string(), status, columns: Vec::new(), schema: None }],
            plural: plural.to_string(),
            singular: kind.to_lowercase(),
            kind: kind.to_string(),
            list_kind: format!("{kind}List"),
            namespaced,
            short_names: short.iter().map(|s| s.to_string()).collect(),
            categories: Vec::new(),
            crd: None,
        }
    }

    /// The served version called `version`.
    pub fn version(&self, version: &str) -> Option<&VersionDef> {
        self.versions.iter().find(|v| v.name == version)
    }

    /// Whether `version` of this resource has a status subresource.
    pub fn has_status(&self, version: &str) -> bool {
        self.version(version).is_some_and(|v| v.status)
    }

    /// The `apiVersion` of objects served at `version`.
    pub fn api_version(&self, version: &str) -> String {
        group_version(&self.group, version)
    }
}

/// `group/version`, or just `version` for the core group.
pub(crate) fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() { version.to_string() } else { format!("{group}/{version}") }
}

/// All resources the cluster serves, in registration order.
#[derive(Debug)]
pub(crate) struct Registry {
    resources: Vec<ResourceDef>,
}

impl Registry {
    /// The built-in resources.
    pub fn builtin() -> Self {
        let b = ResourceDef::builtin;
        let mut resources = vec![
            b("", "v1", "namespaces", "Namespace", false, &["ns"], true),
            b("", "v1", "configmaps", "ConfigMap", true, &["cm"], false),
            b("", "v1", "secrets", "Secret", true, &[], false),
            b("", "v1", "pods", "Pod", true, &["po"], true),
            b("", "v1", "services", "Service", true, &["svc"], true),
            b("", "v1", "serviceaccounts", "ServiceAccount", true, &["sa"], false),
            b("", "v1", "events", "Event", true, &["ev"], false),
            b("", "v1", "nodes", "Node", false, &["no"], true),
            b("", "v1", "endpoints", "Endpoints", true, &["ep"], false),
            b("", "v1", "limitranges", "LimitRange", true, &["limits"], false),
            b("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", true, &["pvc"], true),
            b("apps", "v1", "deployments", "Deployment", true, &["deploy"], true),
            b("apps", "v1", "replicasets", "ReplicaSet", true, &["rs"], true),
            b("apps", "v1", "statefulsets", "StatefulSet", true, &["sts"], true),
            b("apps", "v1", "daemonsets", "DaemonSet", true, &["ds"], true),
            b("batch", "v1", "jobs", "Job", true, &[], true),
            b("batch", "v1", "cronjobs", "CronJob", true, &["cj"], true),
            b("events.k8s.io", "v1", "events", "Event", true, &["ev"], false),
            b("coordination.k8s.io", "v1", "leases", "Lease", true, &[], false),
            b(CRD_GROUP, "v1", CRD_PLURAL, "CustomResourceDefinition", false, &["crd", "crds"], true),
        ];
        // What `kubectl get all` lists.
        let all = ["pods", "services", "deployments", "replicasets", "statefulsets", "daemonsets", "jobs", "cronjobs"];
        for r in resources.iter_mut().filter(|r| all.contains(&r.plural.as_str())) {
            r.categories.push("all".to_string());
        }
        Registry { resources }
    }

    /// The resource `plural` of `group` served at `version`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceDef> {
        self.resources.iter().find(|r| r.group == group && r.plural == plural && r.version(version).is_some())
    }

    /// The resource `plural` of `group`, at any version.
    pub fn find_any(&self, group: &str, plural: &str) -> Option<&ResourceDef> {
        self.resources.iter().find(|r| r.group == group && r.plural == plural)
    }

    /// Registers (or re-registers) the resource described by a CRD object.
    pub fn register_crd(&mut self, def: ResourceDef) {
        self.resources.retain(|r| r.crd != def.crd);
        self.resources.push(def);
    }

    /// Removes the resource registered by the CRD called `crd_name`.
    pub fn unregister_crd(&mut self, crd_name: &str) -> Option<ResourceDef> {
        let index = self.resources.iter().position(|r| r.crd.as_deref() == Some(crd_name))?;
        Some(self.resources.remove(index))
    }

    /// The versions of `group` ordered by preference (most preferred first).
    fn group_versions(&self, group: &str) -> Vec<String> {
        let mut versions: Vec<String> = Vec::new();
        for r in self.resources.iter().filter(|r| r.group == group) {
            for v in &r.versions {
                if !versions.contains(&v.name) {
                    versions.push(v.name.clone());
                }
            }
        }
        versions.sort_by(|a, b| version_priority(a, b));
        versions
    }

    /// The named groups in the order they were first registered.
    fn groups(&self) -> Vec<String> {
        let mut groups: Vec<String> = Vec::new();
        for r in &self.resources {
            if !r.group.is_empty() && !groups.contains(&r.group) {
                groups.push(r.group.clone());
            }
        }
        groups
    }

    /// The `APIGroup` object of `group`, if it serves anything.
    pub fn api_group(&self, group: &str) -> Option<Value> {
        let versions = self.group_versions(group);
        let preferred = versions.first()?;
        let entry = |v: &String| json!({"groupVersion": group_version(group, v), "version": v});
        Some(json!({
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": versions.iter().map(entry).collect::<Vec<_>>(),
            "preferredVersion": entry(preferred),
        }))
    }

    /// The `APIGroupList` served at `/apis`.
    pub fn api_group_list(&self) -> Value {
        let groups: Vec<Value> = self
            .groups()
            .iter()
            .filter_map(|g| self.api_group(g))
            .map(|mut g| {
                let object = g.as_object_mut().expect("object");
                object.remove("kind");
                object.remove("apiVersion");
                g
            })
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// The `APIResourceList` of `group`/`version`, if that version is served.
    pub fn api_resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let mut resources = Vec::new();
        for r in self.resources.iter().filter(|r| r.group == group) {
            let Some(v) = r.version(version) else { continue };
            resources.push(json!({
                "name": r.plural,
                "singularName": r.singular,
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": VERBS,
                "shortNames": r.short_names,
                "categories": r.categories,
            }));
            if v.status {
                resources.push(json!({
                    "name": format!("{}/status", r.plural),
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": ["get", "patch", "update"],
                }));
            }
        }
        if resources.is_empty() {
            return None;
        }
        Some(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version(group, version),
            "resources": resources,
        }))
    }
}

impl Registry {
    /// Every served group version as `api/v1` or `apis/{group}/{version}`.
    fn openapi_group_versions(&self) -> Vec<String> {
        let mut paths = vec!["api/v1".to_string()];
        for group in self.groups() {
            for version in self.group_versions(&group) {
                paths.push(format!("apis/{group}/{version}"));
            }
        }
        paths
    }

    /// The OpenAPI v3 discovery document served at `/openapi/v3`.
    pub fn openapi_v3_root(&self) -> Value {
        let paths: serde_json::Map<String, Value> = self
            .openapi_group_versions()
            .into_iter()
            .map(|gv| {
                let url = format!("/openapi/v3/{gv}?hash={}", self.resources.len());
                (gv, json!({"serverRelativeURL": url}))
            })
            .collect();
        json!({"paths": paths})
    }

    /// A minimal OpenAPI v3 document of one group version: no schemas, only the PATCH operations
    /// with their `fieldValidation` parameter, which tells `kubectl` to leave validation to the
    /// server (which accepts everything).
    pub fn openapi_v3_document(&self, group: &str, version: &str) -> Option<Value> {
        let prefix = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
        let mut paths = serde_json::Map::new();
        for r in self.resources.iter().filter(|r| r.group == group && r.version(version).is_some()) {
            let path = if r.namespaced {
                format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
            } else {
                format!("{prefix}/{}/{{name}}", r.plural)
            };
            let patch = json!({
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": r.kind},
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK"}},
            });
            paths.insert(path, json!({"patch": patch}));
        }
        if paths.is_empty() {
            return None;
        }
        Some(json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": "v1.33.0"},
            "paths": paths,
            "components": {"schemas": {}},
        }))
    }
}

/// Orders Kubernetes versions the way the API server does: GA before beta before alpha,
/// higher numbers first, anything else last in alphabetical order.
pub(crate) fn version_priority(a: &str, b: &str) -> Ordering {
    fn parse(v: &str) -> Option<(u64, u8, u64)> {
        let rest = v.strip_prefix('v')?;
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let major: u64 = rest[..digits].parse().ok()?;
        let tail = &rest[digits..];
        if tail.is_empty() {
            return Some((major, 2, 0));
        }
        let (level, minor) = if let Some(m) = tail.strip_prefix("beta") {
            (1, m)
        } else if let Some(m) = tail.strip_prefix("alpha") {
            (0, m)
        } else {
            return None;
        };
        Some((major, level, minor.parse().ok()?))
    }
    match (parse(a), parse(b)) {
        (Some((ma, la, na)), Some((mb, lb, nb))) => lb.cmp(&la).then(mb.cmp(&ma)).then(nb.cmp(&na)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

fn strings_at(value: &Value, pointer: &str) -> Vec<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Reads the resource a CRD object describes, checking the fields the API server requires.
pub(crate) fn crd_resource(crd: &Value) -> Result<ResourceDef, ApiError> {
    let name = str_at(crd, "/metadata/name").unwrap_or_default();
    let invalid = |field: &str, detail: &str| {
        ApiError::invalid(CRD_GROUP, "CustomResourceDefinition", name, &format!("{field}: {detail}"))
    };
    let group =
        str_at(crd, "/spec/group").filter(|g| !g.is_empty()).ok_or_else(|| invalid("spec.group", "Required value"))?;
    let plural = str_at(crd, "/spec/names/plural")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| invalid("spec.names.plural", "Required value"))?;
    let kind = str_at(crd, "/spec/names/kind")
        .filter(|k| !k.is_empty())
        .ok_or_else(|| invalid("spec.names.kind", "Required value"))?;
    if name != format!("{plural}.{group}") {
        return Err(invalid(
            "metadata.name",
            &format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    let namespaced = match str_at(crd, "/spec/scope") {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => return Err(invalid("spec.scope", "Unsupported value: must be Namespaced or Cluster")),
    };
    let top_status = crd.pointer("/spec/subresources/status").is_some();
    let mut versions = Vec::new();
    let mut schema_errors = Vec::new();
    for (index, v) in crd.pointer("/spec/versions").and_then(Value::as_array).into_iter().flatten().enumerate() {
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let Some(version) = v.get("name").and_then(Value::as_str) else {
            return Err(invalid("spec.versions[].name", "Required value"));
        };
        let columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| PrinterColumn {
                name: str_at(c, "/name").unwrap_or_default().to_string(),
                type_: str_at(c, "/type").unwrap_or("string").to_string(),
                json_path: str_at(c, "/jsonPath").unwrap_or_default().to_string(),
                description: str_at(c, "/description").unwrap_or_default().to_string(),
                priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
            })
            .collect();
        let schema = match v.pointer("/schema/openAPIV3Schema") {
            Some(schema) => match Schema::compile(schema, &format!("spec.versions[{index}].schema.openAPIV3Schema")) {
                Ok(schema) => Some(Arc::new(schema)),
                Err(errors) => {
                    schema_errors.extend(errors);
                    None
                }
            },
            None => None,
        };
        versions.push(VersionDef {
            name: version.to_string(),
            status: top_status || v.pointer("/subresources/status").is_some(),
            columns,
            schema,
        });
    }
    if !schema_errors.is_empty() {
        return Err(ApiError::invalid_fields(CRD_GROUP, "CustomResourceDefinition", name, &schema_errors));
    }
    if let Some(v) = str_at(crd, "/spec/version")
        && versions.is_empty()
    {
        versions.push(VersionDef { name: v.to_string(), status: top_status, columns: Vec::new(), schema: None });
    }
    if versions.is_empty() {
        return Err(invalid("spec.versions", "Required value: must have at least one served version"));
    }
    Ok(ResourceDef {
        group: group.to_string(),
        versions,
        plural: plural.to_string(),
        singular: str_at(crd, "/spec/names/singular")
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_lowercase()),
        kind: kind.to_string(),
        list_kind: str_at(crd, "/spec/names/listKind")
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| format!("{kind}List")),
        namespaced,
        short_names: strings_at(crd, "/spec/names/shortNames"),
        categories: strings_at(crd, "/spec/names/categories"),
        crd: Some(name.to_string()),
    })
}

/// The status the API server reports for an accepted CRD.
pub(crate) fn crd_status(crd: &Value, def: &ResourceDef, now: &str) -> Value {
    let storage = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .and_then(|v| v.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| def.versions[0].name.clone());
    let condition = |type_: &str, reason: &str, message: &str| {
        json!({
            "type": type_, "status": "True", "lastTransitionTime": now,
            "reason": reason, "message": message,
        })
    };
    json!({
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "acceptedNames": {
            "plural": def.plural,
            "singular": def.singular,
            "kind": def.kind,
            "listKind": def.list_kind,
            "shortNames": def.short_names,
            "categories": def.categories,
        },
        "storedVersions": [storage],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_ordered_like_the_api_server_orders_them() {
        let mut v = vec!["v1alpha1", "foo", "v1beta1", "v2", "v1", "v1beta2", "v10alpha1"];
        v.sort_by(|a, b| version_priority(a, b));
        assert_eq!(v, ["v2", "v1", "v1beta2", "v1beta1", "v10alpha1", "v1alpha1", "foo"]);
    }

    #[test]
    fn a_crd_name_must_be_plural_dot_group() {
        let crd = json!({
            "metadata": {"name": "widgets.wrong.io"},
            "spec": {"group": "example.io", "scope": "Namespaced",
                     "names": {"plural": "widgets", "kind": "Widget"},
                     "versions": [{"name": "v1", "served": true, "storage": true}]}
        });
        let err = crd_resource(&crd).unwrap_err();
        assert_eq!(err.code, 422);
    }
}
