//! CRD validation rules: the test cluster refuses custom resources that break their CRD's
//! `x-kubernetes-validations` on every write, the way the API server does.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use ktrigger_testcluster::TestCluster;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{GroupVersionKind, Status};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Error};
use serde_json::{Value, json};

fn gadget_schema(max_limit: Option<i64>) -> Value {
    let mut spec_rules = vec![json!({"rule": "self.min <= self.max", "message": "min must not exceed max"})];
    if let Some(limit) = max_limit {
        spec_rules
            .push(json!({"rule": format!("self.max < {limit}"), "message": format!("max must be below {limit}")}));
    }
    json!({
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "x-kubernetes-validations": spec_rules,
                "properties": {
                    "min": {"type": "integer"},
                    "max": {"type": "integer"},
                    "name": {"type": "string", "x-kubernetes-validations": [
                        {"rule": "self.startsWith('g')", "messageExpression": "'name ' + self + ' must start with g'"}
                    ]},
                    "parts": {"type": "array", "items": {
                        "type": "object",
                        "x-kubernetes-validations": [{"rule": "has(self.size)", "message": "each part needs a size",
                                                      "fieldPath": ".size", "reason": "FieldValueRequired"}],
                        "properties": {"size": {"type": "integer"}, "label": {"type": "string"}},
                    }},
                    "owner": {"type": "string", "x-kubernetes-validations": [
                        {"rule": "self == oldSelf", "message": "owner is immutable"}
                    ]},
                    "labels": {"type": "object", "additionalProperties": {
                        "type": "string", "x-kubernetes-validations": [{"rule": "self != ''"}]
                    }},
                    "note": {"type": "string"},
                    "comment": {"type": "string", "nullable": true},
                },
            },
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        },
    })
}

fn gadget_crd(schema: Value) -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.example.io"},
        "spec": {
            "group": "example.io",
            "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                          "schema": {"openAPIV3Schema": schema}, "subresources": {"status": {}}}],
        }
    }))
    .unwrap()
}

async fn gadgets(cluster: &TestCluster) -> (Client, Api<DynamicObject>) {
    let client = cluster.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &gadget_crd(gadget_schema(None))).await.unwrap();
    let established = await_condition(crds, "gadgets.example.io", conditions::is_crd_established());
    tokio::time::timeout(Duration::from_secs(5), established).await.unwrap().unwrap();
    let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.io", "v1", "Gadget"), "gadgets");
    let api = Api::namespaced_with(client.clone(), "default", &resource);
    (client, api)
}

fn gadget(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "example.io/v1", "kind": "Gadget", "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

fn refusal(result: Result<DynamicObject, Error>) -> Box<Status> {
    match result {
        Err(Error::Api(status)) => status,
        other => panic!("expected the API server to refuse the object, got {other:?}"),
    }
}

/// `(reason, field, message)` of every cause of an Invalid status.
fn causes(status: &Status) -> Vec<(String, String, String)> {
    let details = status.details.as_ref().expect("an Invalid status has details");
    assert_eq!((details.group.as_str(), details.kind.as_str()), ("example.io", "Gadget"));
    details.causes.iter().map(|c| (c.reason.clone(), c.field.clone(), c.message.clone())).collect()
}

fn cause(reason: &str, field: &str, message: &str) -> (String, String, String) {
    (reason.to_string(), field.to_string(), message.to_string())
}

#[tokio::test]
async fn an_object_that_breaks_a_rule_is_refused_like_the_api_server_refuses_it() {
    let cluster = TestCluster::start().await;
    let (_client, api) = gadgets(&cluster).await;
    let bad = gadget("g1", json!({"min": 5, "max": 1}));
    for params in [PostParams::default(), PostParams { dry_run: true, ..PostParams::default() }] {
        let status = refusal(api.create(&params, &bad).await);
        assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
        assert_eq!(
            status.message,
            "Gadget.example.io \"g1\" is invalid: spec: Invalid value: \"object\": min must not exceed max"
        );
        assert_eq!(
            causes(&status),
            [cause("FieldValueInvalid", "spec", "Invalid value: \"object\": min must not exceed max")]
        );
    }
    assert!(api.get_opt("g1").await.unwrap().is_none(), "nothing was stored");
    api.create(&PostParams::default(), &gadget("g1", json!({"min": 1, "max": 5}))).await.unwrap();
}

#[tokio::test]
async fn every_broken_rule_is_listed_with_its_message_field_path_and_reason() {
    let cluster = TestCluster::start().await;
    let (_client, api) = gadgets(&cluster).await;
    let spec = json!({
        "min": 5, "max": 1, "name": "x", "labels": {"a": "", "b": "ok"},
        "parts": [{"size": 1}, {"label": "no size"}],
    });
    let status = refusal(api.create(&PostParams::default(), &gadget("g2", spec)).await);
    assert_eq!(
        causes(&status),
        [
            cause("FieldValueInvalid", "spec", "Invalid value: \"object\": min must not exceed max"),
            cause("FieldValueInvalid", "spec.labels[a]", "Invalid value: \"string\": failed rule: self != ''"),
            cause("FieldValueInvalid", "spec.name", "Invalid value: \"string\": name x must start with g"),
            cause("FieldValueRequired", "spec.parts[1].size", "Required value: each part needs a size"),
        ]
    );
    assert_eq!(
        status.message,
        "Gadget.example.io \"g2\" is invalid: [spec: Invalid value: \"object\": min must not exceed max, \
         spec.labels[a]: Invalid value: \"string\": failed rule: self != '', \
         spec.name: Invalid value: \"string\": name x must start with g, \
         spec.parts[1].size: Required value: each part needs a size]"
    );
}

#[tokio::test]
async fn replacing_and_every_kind_of_patch_are_checked() {
    let cluster = TestCluster::start().await;
    let (_client, api) = gadgets(&cluster).await;
    let created = api.create(&PostParams::default(), &gadget("g3", json!({"min": 1, "max": 5}))).await.unwrap();
    let mut replaced = created.clone();
    replaced.data["spec"]["min"] = json!(9);
    let broken = "Invalid value: \"object\": min must not exceed max";
    assert_eq!(causes(&refusal(api.replace("g3", &PostParams::default(), &replaced).await))[0].2, broken);
    let patches = [
        (PatchParams::default(), Patch::Merge(json!({"spec": {"min": 9}}))),
        (
            PatchParams::default(),
            Patch::Json(serde_json::from_value(json!([{"op": "replace", "path": "/spec/min", "value": 9}])).unwrap()),
        ),
        (
            PatchParams::apply("test").force(),
            Patch::Apply(json!({"apiVersion": "example.io/v1", "kind": "Gadget", "spec": {"min": 9, "max": 5}})),
        ),
    ];
    for (params, patch) in &patches {
        assert_eq!(causes(&refusal(api.patch("g3", params, patch).await))[0].2, broken, "{patch:?}");
    }
    assert_eq!(api.get("g3").await.unwrap().data["spec"], json!({"min": 1, "max": 5}));
    let params = PatchParams::default();
    let patched = api.patch("g3", &params, &Patch::Merge(json!({"spec": {"min": 5}}))).await.unwrap();
    assert_eq!(patched.data["spec"]["min"], 5);
}

#[tokio::test]
async fn transition_rules_compare_an_update_with_the_stored_object() {
    let cluster = TestCluster::start().await;
    let (_client, api) = gadgets(&cluster).await;
    let spec = json!({"min": 1, "max": 5, "owner": "team-a"});
    api.create(&PostParams::default(), &gadget("g4", spec)).await.unwrap();
    let params = PatchParams::default();
    let status = refusal(api.patch("g4", &params, &Patch::Merge(json!({"spec": {"owner": "team-b"}}))).await);
    assert_eq!(
        causes(&status),
        [cause("FieldValueInvalid", "spec.owner", "Invalid value: \"string\": owner is immutable")]
    );
    let patched = api.patch("g4", &params, &Patch::Merge(json!({"spec": {"max": 6}}))).await.unwrap();
    assert_eq!(patched.data["spec"]["owner"], "team-a");
}

#[tokio::test]
async fn values_an_update_leaves_alone_are_not_checked_again() {
    let cluster = TestCluster::start().await;
    let (client, api) = gadgets(&cluster).await;
    api.create(&PostParams::default(), &gadget("g5", json!({"min": 1, "max": 50}))).await.unwrap();
    // A stricter rule arrives after the object was stored.
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let stricter = Patch::Merge(json!({"spec": {"versions": [{
        "name": "v1", "served": true, "storage": true,
        "schema": {"openAPIV3Schema": gadget_schema(Some(10))}, "subresources": {"status": {}},
    }]}}));
    crds.patch("gadgets.example.io", &PatchParams::default(), &stricter).await.unwrap();

    let params = PatchParams::default();
    api.patch_status("g5", &params, &Patch::Merge(json!({"status": {"ready": true}}))).await.unwrap();
    api.patch("g5", &params, &Patch::Merge(json!({"metadata": {"labels": {"tier": "gold"}}}))).await.unwrap();
    let status = refusal(api.patch("g5", &params, &Patch::Merge(json!({"spec": {"note": "changed"}}))).await);
    assert_eq!(
        causes(&status),
        [cause("FieldValueInvalid", "spec", "Invalid value: \"object\": max must be below 10")]
    );
    let status = refusal(api.create(&PostParams::default(), &gadget("g6", json!({"min": 1, "max": 50}))).await);
    assert_eq!(causes(&status).len(), 1);
}

#[tokio::test]
async fn nulls_are_dropped_unless_the_field_is_nullable() {
    let cluster = TestCluster::start().await;
    let (_client, api) = gadgets(&cluster).await;
    let spec = json!({"min": 1, "max": 2, "note": null, "comment": null, "name": null});
    let created = api.create(&PostParams::default(), &gadget("g7", spec)).await.unwrap();
    assert_eq!(created.data["spec"], json!({"min": 1, "max": 2, "comment": null}));
}

#[tokio::test]
async fn a_crd_whose_rules_do_not_compile_is_refused() {
    let cluster = TestCluster::start().await;
    let client = cluster.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let rules = [
        ("self.min <=", "compilation failed: line 1, column"),
        ("size(spec.parts) > 0", "compilation failed: line 1, column 6: undeclared variable 'spec'"),
    ];
    for (rule, expected) in rules {
        let schema = json!({"type": "object", "properties": {"spec": {
            "type": "object", "x-kubernetes-validations": [{"rule": rule}],
        }}});
        let status = match crds.create(&PostParams::default(), &gadget_crd(schema)).await {
            Err(Error::Api(status)) => status,
            other => panic!("the CRD with rule {rule:?} was accepted: {other:?}"),
        };
        assert_eq!(status.code, 422);
        let details = status.details.as_ref().unwrap();
        assert_eq!(details.kind, "CustomResourceDefinition");
        let field = "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule";
        assert_eq!(details.causes[0].field, field);
        assert!(details.causes[0].message.contains(expected), "{}", details.causes[0].message);
    }
    assert!(crds.get_opt("gadgets.example.io").await.unwrap().is_none());
}
