//! A sample controller built on `ktrigger-handler`, to copy as a starting point: it marks every
//! Deployment it sees with the generation it saw, in the label `ktrigger.dev/seen-generation`.
//!
//! A label, not an annotation: the API server bumps a Deployment's `metadata.generation` when
//! its annotations change (they are copied to its ReplicaSets), so a controller that annotates
//! the generation it saw would change the generation it records, forever.
//!
//! [`SeenGeneration`] is the handler: it implements `add` and `update` and leaves `delete` to the
//! default (nothing to do). [`event_loop`] registers it for the Deployments of one namespace or
//! all of them; `main.rs` runs that loop until Ctrl-C or SIGTERM.

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use ktrigger_handler::{Context, Error, EventHandler, EventLoop, HandlerError, Metrics, Watch};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

/// The label this controller writes: the `metadata.generation` it last saw.
pub const SEEN_GENERATION: &str = "ktrigger.dev/seen-generation";

/// Labels each Deployment with its generation when that differs from what the label says.
#[derive(Debug, Default)]
pub struct SeenGeneration;

impl SeenGeneration {
    async fn mark(
        &self,
        ctx: &Context,
        namespace: Option<&str>,
        name: &str,
        deployment: &Deployment,
    ) -> Result<(), Error> {
        let (Some(namespace), Some(generation)) = (namespace, deployment.metadata.generation) else {
            return Ok(());
        };
        let generation = generation.to_string();
        let seen = deployment.metadata.labels.as_ref().and_then(|a| a.get(SEEN_GENERATION));
        if seen == Some(&generation) {
            // Our own patch comes back as an update: nothing left to do.
            return Ok(());
        }
        let deployments: Api<Deployment> = Api::namespaced(ctx.client().clone(), namespace);
        let patch = json!({"metadata": {"labels": {SEEN_GENERATION: generation}}});
        match deployments.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                tracing::info!(%namespace, %name, %generation, "marked");
                Ok(())
            }
            // Deleted meanwhile: its delete follows, nothing to mark.
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            // Any other error is retried by the loop with a backoff.
            Err(e) => Err(e.into()),
        }
    }
}

#[async_trait]
impl EventHandler<Deployment> for SeenGeneration {
    fn name(&self) -> &str {
        "seen-generation"
    }

    async fn add(&self, ctx: &Context, namespace: Option<&str>, name: &str, object: &Deployment) -> Result<(), Error> {
        self.mark(ctx, namespace, name, object).await
    }

    async fn update(
        &self,
        ctx: &Context,
        namespace: Option<&str>,
        name: &str,
        _old: Option<&Deployment>,
        new: &Deployment,
    ) -> Result<(), Error> {
        self.mark(ctx, namespace, name, new).await
    }
}

/// The controller's loop: [`SeenGeneration`] on the Deployments of `namespace` (all namespaces
/// when `None`), recording into `metrics`.
pub fn event_loop(client: kube::Client, namespace: Option<&str>, metrics: &Metrics) -> Result<EventLoop, HandlerError> {
    let mut event_loop = EventLoop::new("sample-controller", client).metrics(metrics);
    let mut deployments = Watch::<Deployment>::new();
    if let Some(namespace) = namespace {
        deployments = deployments.namespace(namespace);
    }
    event_loop.register(SeenGeneration, deployments)?;
    Ok(event_loop)
}
