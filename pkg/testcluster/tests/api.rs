//! The test cluster behaves like the API server for kube-rs: discovery, CRUD, selectors,
//! pagination, patches, conflicts, CRDs, the status subresource, finalizers, Leases and Events.

use std::collections::BTreeMap;

use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, ObjectReference, Secret};
use k8s_openapi::api::events::v1::Event as EventsV1;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use ktrigger_testcluster::TestCluster;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiResource, Discovery, Scope};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Error};
use serde_json::{Value, json};

fn configmap(name: &str, labels: &[(&str, &str)], data: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        },
        "data": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
    }))
    .unwrap()
}

fn api_code(error: Error) -> (u16, String) {
    match error {
        Error::Api(status) => (status.code, status.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn names(list: impl IntoIterator<Item = ConfigMap>) -> Vec<String> {
    list.into_iter().map(|c| c.metadata.name.unwrap()).collect()
}

fn widget_crd(status: bool) -> CustomResourceDefinition {
    let mut version = json!({
        "name": "v1", "served": true, "storage": true,
        "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
        "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
    });
    if status {
        version["subresources"] = json!({"status": {}});
    }
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.io"},
        "spec": {
            "group": "example.io",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wg"]},
            "versions": [version],
        }
    }))
    .unwrap()
}

async fn install_widgets(client: &Client, status: bool) -> ApiResource {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &widget_crd(status)).await.unwrap();
    let established = await_condition(crds, "widgets.example.io", conditions::is_crd_established());
    tokio::time::timeout(std::time::Duration::from_secs(5), established).await.unwrap().unwrap();
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let (resource, caps) = discovery.resolve_gvk(&GroupVersionKind::gvk("example.io", "v1", "Widget")).unwrap();
    assert_eq!(caps.scope, Scope::Namespaced);
    resource
}

#[tokio::test]
async fn discovery_reports_the_built_in_resources() {
    let cluster = TestCluster::start().await;
    let client = cluster.client().await;
    let version = client.apiserver_version().await.unwrap();
    assert_eq!((version.major.as_str(), version.minor.as_str()), ("1", "33"));

    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    for (group, version, kind, plural) in [
        ("", "v1", "ConfigMap", "configmaps"),
        ("", "v1", "Namespace", "namespaces"),
        ("", "v1", "Event", "events"),
        ("events.k8s.io", "v1", "Event", "events"),
        ("apps", "v1", "Deployment", "deployments"),
        ("batch", "v1", "Job", "jobs"),
        ("coordination.k8s.io", "v1", "Lease", "leases"),
        ("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions"),
    ] {
        let (resource, caps) = discovery
            .resolve_gvk(&GroupVersionKind::gvk(group, version, kind))
            .unwrap_or_else(|| panic!("{group}/{version} {kind} is discovered"));
        assert_eq!(resource.plural, plural);
        assert!(caps.supports_operation("watch"));
    }
    let namespaces: Api<Namespace> = Api::all(client);
    let listed: Vec<String> =
        namespaces.list(&ListParams::default()).await.unwrap().into_iter().map(|n| n.metadata.name.unwrap()).collect();
    assert!(listed.contains(&"default".to_string()) && listed.contains(&"kube-system".to_string()));
}

#[tokio::test]
async fn configmaps_are_created_read_and_deleted() {
    let cluster = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client().await, "default");

    let created = api.create(&PostParams::default(), &configmap("settings", &[], &[("a", "1")])).await.unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert!(meta.resource_version.as_deref().unwrap().parse::<u64>().unwrap() > 0);
    assert!(meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    assert_eq!(meta.namespace.as_deref(), Some("default"));

    let fetched = api.get("settings").await.unwrap();
    assert_eq!(fetched.data.unwrap()["a"], "1");
    assert_eq!(fetched.metadata.uid, created.metadata.uid);

    let again = api.create(&PostParams::default(), &configmap("settings", &[], &[])).await.unwrap_err();
    assert_eq!(api_code(again), (409, "AlreadyExists".to_string()));

    let mut generated = configmap("", &[], &[]);
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let generated = api.create(&PostParams::default(), &generated).await.unwrap();
    let name = generated.metadata.name.unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");

    api.delete("settings", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_code(api.get("settings").await.unwrap_err()), (404, "NotFound".to_string()));
    assert_eq!(api_code(api.delete("settings", &DeleteParams::default()).await.unwrap_err()).0, 404);
    assert!(api.get_opt("settings").await.unwrap().is_none());
}

#[tokio::test]
async fn lists_filter_by_label_and_field_selectors() {
    let cluster = TestCluster::start().await;
    let client = cluster.client().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let other: Api<ConfigMap> = Api::namespaced(client.clone(), "other");
    for (name, app, tier) in [("a", "web", "front"), ("b", "web", "back"), ("c", "db", "back")] {
        api.create(&PostParams::default(), &configmap(name, &[("app", app), ("tier", tier)], &[])).await.unwrap();
    }
    api.create(&PostParams::default(), &configmap("d", &[("app", "web")], &[])).await.unwrap();
    other.create(&PostParams::default(), &configmap("e", &[("app", "web")], &[])).await.unwrap();

    let select = |labels: &str| ListParams::default().labels(labels);
    assert_eq!(names(api.list(&select("app=web")).await.unwrap()), ["a", "b", "d"]);
    assert_eq!(names(api.list(&select("app!=web")).await.unwrap()), ["c"]);
    assert_eq!(names(api.list(&select("tier in (front,back),app=web")).await.unwrap()), ["a", "b"]);
    assert_eq!(names(api.list(&select("tier notin (front)")).await.unwrap()), ["b", "c", "d"]);
    assert_eq!(names(api.list(&select("!tier")).await.unwrap()), ["d"]);
    assert_eq!(names(api.list(&select("tier")).await.unwrap()), ["a", "b", "c"]);

    let fields = |f: &str| ListParams::default().fields(f);
    assert_eq!(names(api.list(&fields("metadata.name=b")).await.unwrap()), ["b"]);
    assert_eq!(names(api.list(&fields("metadata.name!=b")).await.unwrap()), ["a", "c", "d"]);

    let all: Api<ConfigMap> = Api::all(client);
    assert_eq!(names(all.list(&select("app=web")).await.unwrap()), ["a", "b", "d", "e"]);
    assert_eq!(names(all.list(&fields("metadata.namespace=other")).await.unwrap()), ["e"]);

    let bad = api.list(&select("app in web")).await.unwrap_err();
    assert_eq!(api_code(bad).0, 400);
}

#[tokio::test]
async fn lists_are_paginated_with_limit_and_continue() {
    let cluster = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client().await, "default");
    for i in 0..5 {
        api.create(&PostParams::default(), &configmap(&format!("cm-{i}"), &[], &[])).await.unwrap();
    }
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(first.items.clone()), ["cm-0", "cm-1"]);
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let token = first.metadata.continue_.clone().unwrap();
    let second = api.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    assert_eq!(names(second.items.clone()), ["cm-2", "cm-3"]);
    let token = second.metadata.continue_.clone().unwrap();
    let last = api.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    assert_eq!(names(last.items.clone()), ["cm-4"]);
    assert!(last.metadata.continue_.as_deref().unwrap_or_default().is_empty());
}

#[tokio::test]
async fn patches_merge_json_strategic_and_apply() {
    let cluster = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client().await, "default");
    api.create(&PostParams::default(), &configmap("p", &[("app", "x")], &[("a", "1"), ("b", "2")])).await.unwrap();

    let merged = api
        .patch("p", &PatchParams::default(), &Patch::Merge(json!({"data": {"a": "10", "b": null, "c": "3"}})))
        .await
        .unwrap();
    assert_eq!(merged.data.unwrap(), BTreeMap::from([("a".into(), "10".into()), ("c".into(), "3".into())]));

    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "add", "path": "/data/d", "value": "4"},
        {"op": "remove", "path": "/data/c"},
        {"op": "replace", "path": "/metadata/labels/app", "value": "y"},
    ]))
    .unwrap();
    let patched = api.patch("p", &PatchParams::default(), &Patch::<()>::Json(ops)).await.unwrap();
    assert_eq!(patched.data.unwrap(), BTreeMap::from([("a".into(), "10".into()), ("d".into(), "4".into())]));
    assert_eq!(patched.metadata.labels.unwrap()["app"], "y");

    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/data/a", "value": "nope"}])).unwrap();
    assert_eq!(
        api_code(api.patch("p", &PatchParams::default(), &Patch::<()>::Json(failing)).await.unwrap_err()).0,
        422
    );

    let strategic = api
        .patch("p", &PatchParams::default(), &Patch::Strategic(json!({"data": {"e": "5"}, "$retainKeys": ["data"]})))
        .await
        .unwrap();
    assert_eq!(strategic.data.unwrap()["e"], "5");

    let apply = PatchParams::apply("tests").force();
    let applied = api
        .patch(
            "p",
            &apply,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "p"}, "data": {"a": "11"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap()["a"], "11");

    let fresh = api
        .patch(
            "fresh",
            &apply,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fresh"}, "data": {"k": "v"}}),
            ),
        )
        .await
        .unwrap();
    assert!(fresh.metadata.uid.is_some());
    assert_eq!(api.get("fresh").await.unwrap().data.unwrap()["k"], "v");

    let missing = api.patch("missing", &PatchParams::default(), &Patch::Merge(json!({"data": {}}))).await.unwrap_err();
    assert_eq!(api_code(missing).0, 404);
}

#[tokio::test]
async fn replace_with_a_stale_resource_version_conflicts() {
    let cluster = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client().await, "default");
    let original = api.create(&PostParams::default(), &configmap("r", &[], &[("a", "1")])).await.unwrap();

    let mut first = original.clone();
    first.data = Some(BTreeMap::from([("a".into(), "2".into())]));
    let replaced = api.replace("r", &PostParams::default(), &first).await.unwrap();
    assert_ne!(replaced.metadata.resource_version, original.metadata.resource_version);

    let mut stale = original.clone();
    stale.data = Some(BTreeMap::from([("a".into(), "3".into())]));
    assert_eq!(api_code(api.replace("r", &PostParams::default(), &stale).await.unwrap_err()), (409, "Conflict".into()));
    assert_eq!(api.get("r").await.unwrap().data.unwrap()["a"], "2");

    let stale_patch =
        Patch::Merge(json!({"metadata": {"resourceVersion": original.metadata.resource_version}, "data": {"a": "4"}}));
    assert_eq!(api_code(api.patch("r", &PatchParams::default(), &stale_patch).await.unwrap_err()).0, 409);

    let mut unconditional = replaced.clone();
    unconditional.metadata.resource_version = None;
    unconditional.data = Some(BTreeMap::from([("a".into(), "5".into())]));
    assert_eq!(api.replace("r", &PostParams::default(), &unconditional).await.unwrap().data.unwrap()["a"], "5");

    let missing = api.replace("nope", &PostParams::default(), &configmap("nope", &[], &[])).await.unwrap_err();
    assert_eq!(api_code(missing).0, 404);
}

#[tokio::test]
async fn leases_are_acquired_and_renewed_with_generation_tracking_the_spec() {
    let cluster = TestCluster::start().await;
    let leases: Api<Lease> = Api::namespaced(cluster.client().await, "kube-system");
    let now = || MicroTime(Timestamp::now());
    let lease = Lease {
        metadata: kube::api::ObjectMeta { name: Some("ktrigger-leader".into()), ..Default::default() },
        spec: Some(LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(now()),
            renew_time: Some(now()),
            ..Default::default()
        }),
    };
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));

    let mut renewed = created.clone();
    renewed.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let renewed = leases.replace("ktrigger-leader", &PostParams::default(), &renewed).await.unwrap();
    assert_eq!(renewed.spec.as_ref().unwrap().holder_identity.as_deref(), Some("b"));
    assert_eq!(renewed.metadata.generation, Some(2));

    let labelled = leases
        .patch("ktrigger-leader", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})))
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(2), "metadata changes leave the generation alone");

    let lost_race = leases.replace("ktrigger-leader", &PostParams::default(), &created).await.unwrap_err();
    assert_eq!(api_code(lost_race).0, 409);
}

#[tokio::test]
async fn events_are_created_and_listed_in_both_event_groups() {
    let cluster = TestCluster::start().await;
    let client = cluster.client().await;
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    for (name, target) in [("e1", "cm-a"), ("e2", "cm-b")] {
        let event = Event {
            metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
            involved_object: ObjectReference {
                kind: Some("ConfigMap".into()),
                name: Some(target.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            reason: Some("Fired".into()),
            message: Some("trigger fired".into()),
            type_: Some("Normal".into()),
            ..Default::default()
        };
        events.create(&PostParams::default(), &event).await.unwrap();
    }
    let for_a = events.list(&ListParams::default().fields("involvedObject.name=cm-a")).await.unwrap();
    assert_eq!(for_a.items.len(), 1);
    assert_eq!(for_a.items[0].reason.as_deref(), Some("Fired"));

    let new_events: Api<EventsV1> = Api::namespaced(client, "default");
    let event = EventsV1 {
        metadata: kube::api::ObjectMeta { generate_name: Some("ktrigger-".into()), ..Default::default() },
        event_time: Some(MicroTime(Timestamp::now())),
        reason: Some("Delivered".into()),
        action: Some("Deliver".into()),
        reporting_controller: Some("ktrigger".into()),
        reporting_instance: Some("ktrigger-0".into()),
        type_: Some("Normal".into()),
        ..Default::default()
    };
    new_events.create(&PostParams::default(), &event).await.unwrap();
    let listed = new_events.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].reason.as_deref(), Some("Delivered"));
}

#[tokio::test]
async fn a_crd_registers_a_resource_that_dynamic_apis_can_use() {
    let cluster = TestCluster::start().await;
    let client = cluster.client().await;
    let widgets_resource = install_widgets(&client, false).await;
    assert_eq!(widgets_resource.plural, "widgets");

    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &widgets_resource);
    let widget: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.io/v1", "kind": "Widget",
        "metadata": {"name": "w1", "labels": {"size": "big"}}, "spec": {"size": 3}
    }))
    .unwrap();
    widgets.create(&PostParams::default(), &widget).await.unwrap();
    let fetched = widgets.get("w1").await.unwrap();
    assert_eq!(fetched.data["spec"]["size"], 3);
    assert_eq!(fetched.types.unwrap().kind, "Widget");
    assert_eq!(widgets.list(&ListParams::default().labels("size=big")).await.unwrap().items.len(), 1);

    let from_gvk = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.io", "v1", "Widget"), "widgets");
    let by_hand: Api<DynamicObject> = Api::all_with(client.clone(), &from_gvk);
    assert_eq!(by_hand.list(&ListParams::default()).await.unwrap().items.len(), 1);

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete("widgets.example.io", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_code(by_hand.list(&ListParams::default()).await.unwrap_err()).0, 404);
    let discovery = Discovery::new(client).run().await.unwrap();
    assert!(discovery.resolve_gvk(&GroupVersionKind::gvk("example.io", "v1", "Widget")).is_none());
}

#[tokio::test]
async fn the_status_subresource_is_separate_from_the_main_resource() {
    let cluster = TestCluster::start().await;
    let client = cluster.client().await;
    let resource = install_widgets(&client, true).await;
    let widgets: Api<DynamicObject> = Api::namespaced_with(client, "default", &resource);
    let widget: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.io/v1", "kind": "Widget",
        "metadata": {"name": "w"}, "spec": {"size": 1}, "status": {"phase": "ignored on create"}
    }))
    .unwrap();
    let created = widgets.create(&PostParams::default(), &widget).await.unwrap();
    assert!(created.data.get("status").is_none());

    let patched = widgets
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ready"}, "spec": {"size": 99}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data["status"]["phase"], "Ready");
    assert_eq!(patched.data["spec"]["size"], 1, "a status write leaves the spec alone");
    assert_eq!(patched.metadata.generation, Some(1));

    let main = widgets
        .patch("w", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Hacked"}, "spec": {"size": 2}})))
        .await
        .unwrap();
    assert_eq!(main.data["status"]["phase"], "Ready", "a main-resource write leaves the status alone");
    assert_eq!(main.data["spec"]["size"], 2);
    assert_eq!(main.metadata.generation, Some(2));

    let applied = widgets
        .patch_status(
            "w",
            &PatchParams::apply("tests").force(),
            &Patch::Apply(json!({"apiVersion": "example.io/v1", "kind": "Widget", "status": {"phase": "Applied"}})),
        )
        .await
        .unwrap();
    assert_eq!(applied.data["status"]["phase"], "Applied");

    let mut replacement = widgets.get_status("w").await.unwrap();
    replacement.data["status"] = json!({"phase": "Replaced"});
    let replaced = widgets.replace_status("w", &PostParams::default(), &replacement).await.unwrap();
    assert_eq!(replaced.data["status"]["phase"], "Replaced");
}

#[tokio::test]
async fn objects_with_finalizers_are_only_marked_for_deletion() {
    let cluster = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client().await, "default");
    let mut cm = configmap("f", &[], &[]);
    cm.metadata.finalizers = Some(vec!["ktrigger.io/cleanup".into()]);
    api.create(&PostParams::default(), &cm).await.unwrap();

    api.delete("f", &DeleteParams::default()).await.unwrap();
    let terminating = api.get("f").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());

    api.patch("f", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    assert!(api.get_opt("f").await.unwrap().is_none());
}

#[tokio::test]
async fn deleting_a_namespace_deletes_its_objects() {
    let cluster = TestCluster::start().await;
    let client = cluster.client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "scratch"}})).unwrap();
    let created = namespaces.create(&PostParams::default(), &ns).await.unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Active"));
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "scratch");
    api.create(&PostParams::default(), &configmap("inside", &[], &[])).await.unwrap();
    namespaces.delete("scratch", &DeleteParams::default()).await.unwrap();
    assert!(api.list(&ListParams::default()).await.unwrap().items.is_empty());
}

#[tokio::test]
async fn dry_runs_change_nothing_and_secrets_get_base64_data() {
    let cluster = TestCluster::start().await;
    let client = cluster.client().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let dry = PostParams { dry_run: true, ..Default::default() };
    api.create(&dry, &configmap("dry", &[], &[])).await.unwrap();
    assert!(api.get_opt("dry").await.unwrap().is_none());

    let secrets: Api<Secret> = Api::namespaced(client, "default");
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "s"}, "stringData": {"token": "abc"}})).unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let stored = secrets.get("s").await.unwrap();
    assert_eq!(stored.data.unwrap()["token"].0, b"abc");
}

#[tokio::test]
async fn the_request_log_records_paths_and_impersonation() {
    let cluster = TestCluster::start().await;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&cluster.kubeconfig_yaml()).unwrap();
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await.unwrap();
    config.auth_info.impersonate = Some("system:serviceaccount:ktrigger:runner".into());
    config.auth_info.impersonate_groups = Some(vec!["ktrigger".into()]);
    let api: Api<ConfigMap> = Api::namespaced(Client::try_from(config).unwrap(), "default");
    api.list(&ListParams::default().labels("app=x")).await.unwrap();

    let log = cluster.request_log();
    assert!(log.iter().any(|(method, uri)| method == "GET"
        && uri.starts_with("/api/v1/namespaces/default/configmaps?")
        && uri.contains("labelSelector=app%3Dx")));
    let record = cluster.requests().into_iter().find(|r| r.uri.contains("configmaps")).unwrap();
    assert_eq!(record.impersonate_user.as_deref(), Some("system:serviceaccount:ktrigger:runner"));
    assert_eq!(record.impersonate_groups, ["ktrigger"]);
}

#[tokio::test]
async fn unknown_resources_and_paths_are_not_found() {
    let cluster = TestCluster::start().await;
    let client = cluster.client().await;
    let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("nope.io", "v1", "Nope"), "nopes");
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    assert_eq!(api_code(api.list(&ListParams::default()).await.unwrap_err()).0, 404);
    let request = axum::http::Request::get("/openapi/v2").body(Vec::new()).unwrap();
    let error = client.request::<Value>(request).await.unwrap_err();
    assert_eq!(api_code(error).0, 404);
}

#[tokio::test]
async fn metadata_only_requests_get_partial_object_metadata() {
    let cluster = TestCluster::start().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client().await, "default");
    api.create(&PostParams::default(), &configmap("m", &[("app", "x")], &[("big", "payload")])).await.unwrap();
    let meta = api.get_metadata("m").await.unwrap();
    assert_eq!(meta.metadata.labels.unwrap()["app"], "x");
    assert_eq!(meta.types.unwrap().kind, "PartialObjectMetadata");
    let listed = api.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].metadata.name.as_deref(), Some("m"));
}

#[tokio::test]
async fn the_kube_event_recorder_publishes_and_aggregates_events() {
    use kube::runtime::events::{Event as RecordedEvent, EventType, Recorder, Reporter};
    let cluster = TestCluster::start().await;
    let client = cluster.client().await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let target = configmaps.create(&PostParams::default(), &configmap("target", &[], &[])).await.unwrap();
    let recorder =
        Recorder::new(client.clone(), Reporter { controller: "ktrigger".into(), instance: Some("ktrigger-0".into()) });
    let event = RecordedEvent {
        type_: EventType::Normal,
        reason: "Fired".into(),
        note: Some("trigger fired".into()),
        action: "Fire".into(),
        secondary: None,
    };
    let reference = kube::Resource::object_ref(&target, &());
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();

    let events: Api<EventsV1> = Api::namespaced(client, "default");
    let listed = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1, "a repeated event becomes a series");
    let recorded = &listed.items[0];
    assert_eq!(recorded.reason.as_deref(), Some("Fired"));
    assert_eq!(recorded.regarding.as_ref().unwrap().name.as_deref(), Some("target"));
    assert_eq!(recorded.series.as_ref().map(|s| s.count), Some(2));
}

#[tokio::test]
async fn subject_access_reviews_are_allowed_unless_a_fault_forbids_the_verb() {
    let cluster = TestCluster::start().await;
    let reviews: Api<SubjectAccessReview> = Api::all(cluster.client().await);
    let review = serde_json::from_value::<SubjectAccessReview>(json!({
        "spec": {"user": "system:serviceaccount:a:reader",
                 "resourceAttributes": {"namespace": "a", "verb": "list", "resource": "secrets"}}
    }))
    .unwrap();

    let allowed = reviews.create(&PostParams::default(), &review).await.unwrap();
    cluster.faults().forbid("list", "secrets");
    let denied = reviews.create(&PostParams::default(), &review).await.unwrap();

    assert!(allowed.status.unwrap().allowed, "no RBAC: everything is allowed");
    assert!(!denied.status.unwrap().allowed, "a forbidden verb is denied, as the request itself would be");
}
