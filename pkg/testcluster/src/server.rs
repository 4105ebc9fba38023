//! HTTP routing: discovery, resource verbs, patches, tables and fault injection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::RequestRecord;
use crate::faults::DISCOVERY;
use crate::patch;
use crate::registry::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector};
use crate::shared::Shared;
use crate::status::ApiError;
use crate::store::{Filter, Preconditions, WriteMode, partial_metadata};
use crate::watch::{self, WatchRequest};

/// Largest request body accepted.
const MAX_BODY: usize = 16 * 1024 * 1024;

fn json_response(code: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).expect("JSON values serialize");
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &self.to_status())
    }
}

/// A request on a resource path.
#[derive(Debug)]
struct ResourcePath {
    group: String,
    version: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    subresource: Option<String>,
}

enum Route {
    Version,
    Health,
    CoreVersions,
    Groups,
    Group(String),
    Resources(String, String),
    Resource(ResourcePath),
    OpenApiRoot,
    OpenApi(String, String),
    Unknown,
}

fn route(path: &str) -> Route {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let resource = |group: &str, version: &str, rest: &[&str]| {
        let (namespace, rest) =
            if rest[0] == "namespaces" && rest.len() > 2 && !["status", "finalize"].contains(&rest[2]) {
                (Some(rest[1].to_string()), &rest[2..])
            } else {
                (None, rest)
            };
        if rest.len() > 3 {
            return Route::Unknown;
        }
        Route::Resource(ResourcePath {
            group: group.to_string(),
            version: version.to_string(),
            namespace,
            plural: rest[0].to_string(),
            name: rest.get(1).map(|s| s.to_string()),
            subresource: rest.get(2).map(|s| s.to_string()),
        })
    };
    match parts.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "livez" | "readyz"] => Route::Health,
        ["openapi", "v3"] => Route::OpenApiRoot,
        ["openapi", "v3", "api", version] => Route::OpenApi(String::new(), version.to_string()),
        ["openapi", "v3", "apis", group, version] => Route::OpenApi(group.to_string(), version.to_string()),
        ["api"] => Route::CoreVersions,
        ["api", version] => Route::Resources(String::new(), version.to_string()),
        ["api", version, rest @ ..] => resource("", version, rest),
        ["apis"] => Route::Groups,
        ["apis", group] => Route::Group(group.to_string()),
        ["apis", group, version] => Route::Resources(group.to_string(), version.to_string()),
        ["apis", group, version, rest @ ..] => resource(group, version, rest),
        _ => Route::Unknown,
    }
}

/// The single handler behind every path.
pub(crate) async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let header_text = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    shared.record(RequestRecord {
        method: parts.method.to_string(),
        uri: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_else(|| parts.uri.path().to_string()),
        impersonate_user: header_text("impersonate-user"),
        impersonate_groups: parts
            .headers
            .get_all("impersonate-group")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect(),
        user_agent: header_text("user-agent"),
    });
    let query: HashMap<String, String> =
        Query::<HashMap<String, String>>::try_from_uri(&parts.uri).map(|q| q.0).unwrap_or_default();
    let discovery = |value: Option<Value>| match value {
        Some(v) => json_response(StatusCode::OK, &v),
        None => ApiError::no_route().into_response(),
    };
    match route(parts.uri.path()) {
        Route::Version => json_response(
            StatusCode::OK,
            &json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "ktrigger-testcluster",
                "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24.0",
                "compiler": "gc", "platform": "linux/amd64",
            }),
        ),
        Route::Health => (StatusCode::OK, "ok").into_response(),
        Route::CoreVersions => json_response(
            StatusCode::OK,
            &json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.address}],
            }),
        ),
        Route::Groups => json_response(StatusCode::OK, &shared.store().registry.api_group_list()),
        Route::Group(group) => discovery(shared.store().registry.api_group(&group)),
        Route::Resources(group, version) => {
            if let Some(delay) = shared.faults.delay_for(DISCOVERY, None) {
                tokio::time::sleep(delay).await;
            }
            discovery(shared.store().registry.api_resource_list(&group, &version))
        }
        Route::Resource(path) if path.group == "authorization.k8s.io" && path.plural == "subjectaccessreviews" => {
            access_review(&shared, &parts.method, body).await
        }
        Route::Resource(path) => match resource(&shared, &parts.method, &parts.headers, &query, body, path).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        },
        Route::OpenApiRoot => json_response(StatusCode::OK, &shared.store().registry.openapi_v3_root()),
        Route::OpenApi(group, version) => discovery(shared.store().registry.openapi_v3_document(&group, &version)),
        Route::Unknown => ApiError::no_route().into_response(),
    }
}

/// A SubjectAccessReview answered as a cluster without RBAC would: allowed, unless the faults
/// forbid the verb on the resource (as they make the request itself fail with 403).
async fn access_review(shared: &Shared, method: &Method, body: Body) -> Response {
    if method != Method::POST {
        return ApiError::no_route().into_response();
    }
    let Ok(bytes) = axum::body::to_bytes(body, 1024 * 1024).await else {
        return ApiError::bad_request("the request body could not be read").into_response();
    };
    let Ok(mut review) = serde_json::from_slice::<Value>(&bytes) else {
        return ApiError::bad_request("the body is not a SubjectAccessReview").into_response();
    };
    let attributes = &review["spec"]["resourceAttributes"];
    let verb = attributes["verb"].as_str().unwrap_or_default();
    let plural = attributes["resource"].as_str().unwrap_or_default();
    let subresource = attributes["subresource"].as_str().filter(|s| !s.is_empty());
    let allowed = !shared.faults.is_forbidden(verb, plural, subresource);
    let reason = if allowed { "the test cluster has no RBAC" } else { "forbidden by the test cluster's faults" };
    review["status"] = json!({"allowed": allowed, "reason": reason});
    json_response(StatusCode::CREATED, &review)
}

fn verb_of(method: &Method, path: &ResourcePath, query: &HashMap<String, String>) -> Result<&'static str, ApiError> {
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    Ok(match (method.as_str(), path.name.is_some()) {
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", false) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        (other, _) => return Err(ApiError::method_not_allowed(other)),
    })
}

fn parse_filter(namespace: Option<String>, query: &HashMap<String, String>) -> Result<Filter, ApiError> {
    Ok(Filter {
        namespace,
        labels: LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or_default())?,
        fields: FieldSelector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or_default())?,
    })
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("failed to decode the request body: {e}")))
}

fn is_dry_run(query: &HashMap<String, String>) -> bool {
    query.get("dryRun").is_some_and(|d| d == "All")
}

fn present(def: &ResourceDef, version: &str, mut object: Value) -> Value {
    object["apiVersion"] = json!(def.api_version(version));
    object
}

async fn resource(
    shared: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: Body,
    path: ResourcePath,
) -> Result<Response, ApiError> {
    let def = shared.store().registry.find(&path.group, &path.version, &path.plural).cloned();
    let def = def.ok_or_else(ApiError::no_route)?;
    let version = path.version.clone();
    if !def.namespaced && path.namespace.is_some() {
        return Err(ApiError::no_route());
    }
    let verb = verb_of(method, &path, query)?;
    if def.namespaced && path.namespace.is_none() && !matches!(verb, "list" | "watch") {
        return Err(ApiError::no_route());
    }
    let sub = path.subresource.as_deref();
    if let Some(sub) = sub
        && (sub != "status" || !def.has_status(&version) || !matches!(verb, "get" | "update" | "patch"))
    {
        return Err(ApiError::no_route());
    }
    let faults = &shared.faults;
    if faults.is_forbidden(verb, &def.plural, sub) {
        return Err(ApiError::forbidden(verb, &def.group, &def.plural, path.namespace.as_deref()));
    }
    if let Some(delay) = faults.delay_for(&def.plural, sub) {
        tokio::time::sleep(delay).await;
    }
    if faults.take_failure(&def.plural, sub) {
        return Err(ApiError::internal("injected failure"));
    }
    let namespace = path.namespace.as_deref();
    let name = path.name.clone().unwrap_or_default();
    let dry_run = is_dry_run(query);
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| ApiError::bad_request(format!("failed to read the request body: {e}")))?;
    let ok = |code: StatusCode, object: Value| Ok(json_response(code, &present(&def, &version, object)));
    let preferred = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()).and_then(|a| a.split(',').next());
    let wants_table = preferred.is_some_and(|first| first.contains("as=Table"));
    let metadata_only = preferred.is_some_and(|first| first.contains("as=PartialObjectMetadata"));
    match verb {
        "watch" => {
            *shared.watch_counts().entry(def.plural.clone()).or_default() += 1;
            let body = if faults.take_gone(&def.plural) {
                let rv = shared.store().resource_version();
                watch::error_body(&ApiError::gone(
                    query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0),
                    rv,
                ))
            } else {
                let request = WatchRequest {
                    def: def.clone(),
                    version: version.clone(),
                    filter: parse_filter(path.namespace.clone(), query)?,
                    resource_version: query.get("resourceVersion").cloned(),
                    bookmarks: query.get("allowWatchBookmarks").is_some_and(|b| b == "true"),
                    send_initial_events: query.get("sendInitialEvents").is_some_and(|b| b == "true"),
                    timeout: query.get("timeoutSeconds").and_then(|t| t.parse().ok()).map(Duration::from_secs),
                    metadata_only,
                };
                match watch::start(shared, request) {
                    Ok(body) => body,
                    Err(error) if error.code == 410 => watch::error_body(&error),
                    Err(error) => return Err(error),
                }
            };
            Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        "list" => {
            let filter = parse_filter(path.namespace.clone(), query)?;
            let limit = query.get("limit").and_then(|l| l.parse().ok());
            let page = shared.store().list(&def, &filter, limit, query.get("continue").map(String::as_str))?;
            let mut metadata = json!({"resourceVersion": page.resource_version.to_string()});
            if let Some(token) = &page.continue_token {
                metadata["continue"] = json!(token);
            }
            if let Some(remaining) = page.remaining {
                metadata["remainingItemCount"] = json!(remaining);
            }
            let items: Vec<Value> = page.items.into_iter().map(|o| present(&def, &version, o)).collect();
            if wants_table {
                return Ok(json_response(StatusCode::OK, &table(&def, &version, &items, metadata, query)));
            }
            if metadata_only {
                let items: Vec<Value> = items.iter().map(partial_metadata).collect();
                return Ok(json_response(
                    StatusCode::OK,
                    &json!({
                        "kind": "PartialObjectMetadataList",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": metadata,
                        "items": items,
                    }),
                ));
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "kind": def.list_kind,
                    "apiVersion": def.api_version(&version),
                    "metadata": metadata,
                    "items": items,
                }),
            ))
        }
        "get" => {
            let object = present(&def, &version, shared.store().get(&def, namespace, &name)?);
            if wants_table {
                let rv = object.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""));
                return Ok(json_response(
                    StatusCode::OK,
                    &table(&def, &version, &[object], json!({"resourceVersion": rv}), query),
                ));
            }
            if metadata_only {
                return Ok(json_response(StatusCode::OK, &partial_metadata(&object)));
            }
            Ok(json_response(StatusCode::OK, &object))
        }
        "create" => {
            let object = parse_json(&body)?;
            let created = shared.store().create(&def, &version, namespace, object, dry_run)?;
            ok(StatusCode::CREATED, created)
        }
        "update" => {
            if faults.take_conflict(&def.plural, sub) {
                return Err(ApiError::conflict(&def.group, &def.plural, &name));
            }
            let object = parse_json(&body)?;
            let updated = shared.store().update(
                &def,
                &version,
                namespace,
                &name,
                object,
                WriteMode { status_only: sub.is_some(), dry_run },
            )?;
            ok(StatusCode::OK, updated)
        }
        "patch" => {
            if faults.take_conflict(&def.plural, sub) {
                return Err(ApiError::conflict(&def.group, &def.plural, &name));
            }
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|c| c.to_str().ok())
                .and_then(|c| c.split(';').next())
                .unwrap_or_default()
                .trim()
                .to_string();
            let mut store = shared.store();
            let current = store.get(&def, namespace, &name);
            let mut patched = match content_type.as_str() {
                "application/apply-patch+yaml" => {
                    let applied: Value = serde_yaml::from_slice(&body)
                        .map_err(|e| ApiError::bad_request(format!("failed to decode the apply patch: {e}")))?;
                    if !applied.is_object() {
                        return Err(ApiError::bad_request("an apply patch must be an object"));
                    }
                    match current {
                        Ok(mut current) => {
                            json_patch::merge(&mut current, &applied);
                            current
                        }
                        Err(_) if sub.is_none() => {
                            let mut applied = applied;
                            if applied.pointer("/metadata/name").and_then(Value::as_str).is_some_and(|n| n != name) {
                                return Err(ApiError::bad_request(
                                    "the name of the object does not match the name on the URL",
                                ));
                            }
                            applied["metadata"]["name"] = json!(name);
                            let created = store.create(&def, &version, namespace, applied, dry_run)?;
                            return ok(StatusCode::CREATED, created);
                        }
                        Err(missing) => return Err(missing),
                    }
                }
                "application/merge-patch+json" => {
                    let mut current = current?;
                    json_patch::merge(&mut current, &parse_json(&body)?);
                    current
                }
                "application/strategic-merge-patch+json" => {
                    let mut current = current?;
                    patch::apply(&mut current, &parse_json(&body)?);
                    current
                }
                "application/json-patch+json" => {
                    let mut current = current?;
                    let patch: json_patch::Patch = serde_json::from_slice(&body)
                        .map_err(|e| ApiError::bad_request(format!("failed to decode the JSON patch: {e}")))?;
                    json_patch::patch(&mut current, &patch).map_err(|e| {
                        ApiError::invalid(&def.group, &def.kind, &name, &format!("the patch failed: {e}"))
                    })?;
                    current
                }
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            if !patched.is_object() {
                return Err(ApiError::bad_request("the patched object is not a JSON object"));
            }
            patched["metadata"]["name"] = json!(name);
            let updated = store.update(
                &def,
                &version,
                namespace,
                &name,
                patched,
                WriteMode { status_only: sub.is_some(), dry_run },
            )?;
            ok(StatusCode::OK, updated)
        }
        "delete" => {
            let options: Value = if body.is_empty() { json!({}) } else { parse_json(&body)? };
            let preconditions = Preconditions {
                uid: options.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_string),
                resource_version: options
                    .pointer("/preconditions/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            };
            let dry_run = dry_run
                || options
                    .get("dryRun")
                    .and_then(Value::as_array)
                    .is_some_and(|d| d.iter().any(|v| v.as_str() == Some("All")));
            let deleted = shared.store().delete(&def, namespace, &name, &preconditions, dry_run)?;
            ok(StatusCode::OK, deleted)
        }
        "deletecollection" => {
            let filter = parse_filter(path.namespace.clone(), query)?;
            let mut store = shared.store();
            let names: Vec<(Option<String>, String)> = store
                .matching(&def, &filter)
                .map(|o| {
                    let meta =
                        |f: &str| o.pointer(&format!("/metadata/{f}")).and_then(Value::as_str).map(str::to_string);
                    (meta("namespace"), meta("name").unwrap_or_default())
                })
                .collect();
            let mut items = Vec::new();
            for (ns, name) in names {
                let deleted = store.delete(&def, ns.as_deref(), &name, &Preconditions::default(), dry_run)?;
                items.push(present(&def, &version, deleted));
            }
            let rv = store.resource_version().to_string();
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": def.list_kind, "apiVersion": def.api_version(&version),
                        "metadata": {"resourceVersion": rv}, "items": items}),
            ))
        }
        _ => Err(ApiError::method_not_allowed(verb)),
    }
}

/// A duration in the short form `kubectl` prints ages in.
fn age(timestamp: &str) -> String {
    let Ok(then) = chrono::DateTime::parse_from_rfc3339(timestamp) else { return "<unknown>".to_string() };
    let seconds = (chrono::Utc::now() - then.with_timezone(&chrono::Utc)).num_seconds().max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// The first value a printer column's JSONPath selects, as the API server takes it: Kubernetes'
/// `.status.conditions[?(@.type=="Ready")].status` form, filters included.
fn json_path<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    use jsonpath_rust::JsonPath;
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let path = if path.starts_with('$') { path.to_string() } else { format!("${path}") };
    object.query(&path).ok()?.into_iter().next()
}

/// A `meta.k8s.io/v1` `Table` of the objects, as `kubectl get` asks for.
fn table(
    def: &ResourceDef,
    version: &str,
    objects: &[Value],
    metadata: Value,
    query: &HashMap<String, String>,
) -> Value {
    let mut columns = vec![json!({"name": "Name", "type": "string", "format": "name", "priority": 0,
                                  "description": "Name must be unique within a namespace."})];
    let custom = def.version(version).map(|v| v.columns.clone()).unwrap_or_default();
    for c in &custom {
        columns.push(json!({
            "name": c.name, "type": c.type_, "format": "",
            "priority": c.priority, "description": c.description,
        }));
    }
    if custom.is_empty() {
        columns.push(json!({
            "name": "Age", "type": "date", "format": "", "priority": 0,
            "description": "CreationTimestamp is the server time when this object was created.",
        }));
    }
    let include = query.get("includeObject").map(String::as_str).unwrap_or("Metadata");
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let mut cells = vec![object.pointer("/metadata/name").cloned().unwrap_or(json!(""))];
            for c in &custom {
                let value = json_path(object, &c.json_path).cloned().unwrap_or(Value::Null);
                cells.push(match (c.type_.as_str(), &value) {
                    ("date", Value::String(ts)) => json!(age(ts)),
                    _ => value,
                });
            }
            if custom.is_empty() {
                cells.push(json!(age(object
                    .pointer("/metadata/creationTimestamp")
                    .and_then(Value::as_str)
                    .unwrap_or(""))));
            }
            let mut row = json!({"cells": cells});
            match include {
                "None" => {}
                "Object" => row["object"] = object.clone(),
                _ => row["object"] = partial_metadata(object),
            }
            row
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata,
        "columnDefinitions": columns, "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_routed_like_the_api_server_routes_them() {
        let Route::Resource(p) = route("/api/v1/namespaces/ns/configmaps/a") else { panic!() };
        assert_eq!(
            (p.group.as_str(), p.namespace.as_deref(), p.plural.as_str(), p.name.as_deref()),
            ("", Some("ns"), "configmaps", Some("a"))
        );
        let Route::Resource(p) = route("/api/v1/namespaces/ns/status") else { panic!() };
        assert_eq!(
            (p.namespace, p.plural.as_str(), p.name.as_deref(), p.subresource.as_deref()),
            (None, "namespaces", Some("ns"), Some("status"))
        );
        let Route::Resource(p) = route("/apis/example.io/v1/widgets") else { panic!() };
        assert_eq!((p.group.as_str(), p.namespace, p.name), ("example.io", None, None));
        assert!(matches!(route("/apis/apps"), Route::Group(g) if g == "apps"));
        assert!(matches!(route("/api/v1"), Route::Resources(g, v) if g.is_empty() && v == "v1"));
        assert!(matches!(route("/openapi/v2"), Route::Unknown));
    }

    #[test]
    fn json_paths_of_printer_columns_are_followed() {
        let object = json!({"spec": {"replicas": 3}, "status": {"conditions": [{"type": "Ready"}]}});
        assert_eq!(json_path(&object, ".spec.replicas"), Some(&json!(3)));
        assert_eq!(json_path(&object, ".status.conditions[0].type"), Some(&json!("Ready")));
        assert_eq!(json_path(&object, ".spec.missing"), None);
        let conditions = json!({"status": {"conditions": [
            {"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        let ready = r#".status.conditions[?(@.type=="Ready")].status"#;
        assert_eq!(json_path(&conditions, ready), Some(&json!("True")));
        assert_eq!(json_path(&conditions, r#".status.conditions[?(@.type=="Gone")].status"#), None);
    }

    #[test]
    fn ages_are_short() {
        let ts = (chrono::Utc::now() - chrono::Duration::seconds(3700)).to_rfc3339();
        assert_eq!(age(&ts), "61m");
        assert_eq!(age("garbage"), "<unknown>");
    }
}
