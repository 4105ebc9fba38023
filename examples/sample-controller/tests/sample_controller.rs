//! The sample controller against the project's test cluster, or a real cluster when
//! `KTRIGGER_TEST_KUBECONFIG` names a kubeconfig (the test then works in a namespace of its own
//! and deletes it).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use ktrigger_handler::Metrics;
use ktrigger_sample_controller::{SEEN_GENERATION, event_loop};
use ktrigger_testcluster::TestTarget;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.9"}]}
            }
        }
    }))
    .unwrap()
}

async fn wait_for_label(deployments: &Api<Deployment>, name: &str, generation: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = deployments.get(name).await.unwrap();
        let seen = found.metadata.labels.as_ref().and_then(|a| a.get(SEEN_GENERATION)).cloned();
        if seen.as_deref() == Some(generation) {
            return;
        }
        assert!(Instant::now() < deadline, "{name}: label {seen:?}, expected generation {generation}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_existing_new_and_changed_deployments_with_the_generation_it_saw() {
    ktrigger_kube::ensure_crypto_provider();
    let target = TestTarget::start("kt-sample").await;
    let (client, namespace) = (target.client.clone(), target.namespace.clone());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    deployments.create(&PostParams::default(), &deployment("existing")).await.unwrap();
    let cancel = CancellationToken::new();
    let controller = event_loop(client.clone(), Some(&namespace), &Metrics::new()).unwrap();
    let running = tokio::spawn(controller.run(cancel.clone(), 2));

    wait_for_label(&deployments, "existing", "1").await;
    deployments.create(&PostParams::default(), &deployment("later")).await.unwrap();
    wait_for_label(&deployments, "later", "1").await;

    let scale = json!({"spec": {"replicas": 2}});
    deployments.patch("existing", &PatchParams::default(), &Patch::Merge(&scale)).await.unwrap();
    wait_for_label(&deployments, "existing", "2").await;
    // Its own change does not bump the generation: the label settles.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for name in ["existing", "later"] {
        let generation = deployments.get(name).await.unwrap().metadata.generation;
        assert_eq!(generation, Some(if name == "existing" { 2 } else { 1 }), "{name}");
    }

    cancel.cancel();
    tokio::time::timeout(WAIT, running).await.unwrap().unwrap().unwrap();
    target.finish().await;
}
