//! The `job` destination (kube-trigger's `task`): a batch/v1 Job per delivery.
//!
//! The Job's name is derived from the delivery id, so a retried delivery finds the Job of its
//! earlier attempt (409 AlreadyExists counts as success) instead of running the work twice. When
//! the source object is in the Job's namespace and has a uid, it owns the Job, so deleting the
//! object deletes its Jobs.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::batch::v1::Job;
use ktrigger_core::DestinationType;
use ktrigger_core::PropertyError;
use ktrigger_core::{BuildContext, DeliveryError, DeliveryRequest, Destination, Receipt};
use ktrigger_core::{Template, TemplateScope};
use kube::api::{Api, PostParams};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ActingCluster, FIELD_MANAGER, api_error, compile_optional, default_namespace, delivery_suffix, is_conflict,
    object_name, object_namespace, render_text,
};
use crate::Cluster;

/// Longest name prefix: the Job name (prefix, `-`, 10 hex digits) must stay a 63-character label.
const MAX_PREFIX: usize = 52;

/// Runs a Kubernetes Job per delivery (one Job even when the delivery is retried)
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobProperties {
    /// Template of the container image
    image: String,
    /// List of templates: the container's command
    #[serde(default)]
    command: Vec<String>,
    /// List of templates: the container's arguments
    #[serde(default)]
    args: Vec<String>,
    /// Environment: a map of NAME to template, or a list of {name, value}
    #[serde(default)]
    env: Option<EnvSpec>,
    /// Template of the Job's namespace; default the TriggerService's, else the source object's
    #[serde(default)]
    namespace: Option<String>,
    /// Start of the Job's name, followed by a hash of the delivery id; default the trigger's name
    #[serde(default)]
    name_prefix: Option<String>,
    /// Service account the Job's pod runs as; default the namespace's default
    #[serde(default)]
    service_account_name: Option<String>,
    /// Seconds a finished Job is kept before it is deleted; default 3600
    #[serde(default = "default_ttl")]
    ttl_seconds_after_finished: u32,
    /// Retries of a failed pod; default Kubernetes' 6
    #[serde(default)]
    backoff_limit: Option<u32>,
    /// Seconds after which the Job is stopped; default none
    #[serde(default)]
    active_deadline_seconds: Option<u32>,
    /// Whether the source object owns the Job (when it has a uid and the same namespace); default
    /// true
    #[serde(default = "default_true")]
    owned_by_source: bool,
}

fn default_ttl() -> u32 {
    3600
}

fn default_true() -> bool {
    true
}

/// `env` as a map or as Kubernetes' list of name/value pairs.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
enum EnvSpec {
    Map(BTreeMap<String, String>),
    List(Vec<EnvVar>),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct EnvVar {
    name: String,
    value: String,
}

/// Builds `job` destinations.
#[derive(Debug, Clone)]
pub struct JobFactory {
    cluster: Cluster,
}

impl JobFactory {
    /// Destinations that act on `cluster`.
    pub fn new(cluster: Cluster) -> Self {
        JobFactory { cluster }
    }
}

/// `name` turned into a DNS label prefix: lowercase letters, digits and `-`, at most [`MAX_PREFIX`].
fn label_prefix(name: &str) -> String {
    let mapped: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(MAX_PREFIX)
        .collect();
    let trimmed = mapped.trim_matches('-');
    if trimmed.is_empty() { "ktrigger".into() } else { trimmed.to_string() }
}

fn compile_list(name: &str, items: &[String]) -> Result<Vec<Template>, PropertyError> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| Template::compile(item).map_err(|e| PropertyError::new(format!("{name}[{i}]"), e)))
        .collect()
}

impl DestinationType for JobFactory {
    type Properties = JobProperties;
    const NAME: &'static str = "job";
    const ALIASES: &'static [&'static str] = &["task"];
    const EXAMPLE: &'static str = r#"type: job
properties:
  image: busybox:1.36
  command: [sh, -c]
  args: ['echo "$OBJECT changed" && sleep 5']
  env:
    OBJECT: "{{ object.metadata.name }}"
  ttlSecondsAfterFinished: 600
  backoffLimit: 2
"#;

    fn build(&self, props: JobProperties, context: &BuildContext) -> Result<Arc<dyn Destination>, PropertyError> {
        if props.image.trim().is_empty() {
            return Err(PropertyError::new("image", "must not be empty"));
        }
        let prefix = match props.name_prefix {
            Some(prefix) => {
                let valid = !prefix.is_empty()
                    && prefix.len() <= MAX_PREFIX
                    && prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !prefix.starts_with('-');
                if !valid {
                    return Err(PropertyError::new(
                        "namePrefix",
                        format!(
                            "must be 1 to {MAX_PREFIX} lowercase letters, digits or '-', \
                         starting with a letter or digit, not {prefix:?}"
                        ),
                    ));
                }
                prefix.trim_end_matches('-').to_string()
            }
            None => label_prefix(&context.trigger.trigger),
        };
        let env = match props.env {
            None => Vec::new(),
            Some(EnvSpec::Map(map)) => map.into_iter().collect(),
            Some(EnvSpec::List(list)) => list.into_iter().map(|var| (var.name, var.value)).collect(),
        };
        let env = env
            .into_iter()
            .map(|(name, value)| {
                if name.is_empty() {
                    return Err(PropertyError::new("env", "a variable has an empty name"));
                }
                let template = Template::compile(&value).map_err(|e| PropertyError::new(format!("env.{name}"), e))?;
                Ok((name, template))
            })
            .collect::<Result<_, PropertyError>>()?;
        Ok(Arc::new(JobDestination {
            image: Template::compile(&props.image).map_err(|e| PropertyError::new("image", e))?,
            command: compile_list("command", &props.command)?,
            args: compile_list("args", &props.args)?,
            env,
            namespace: compile_optional("namespace", props.namespace.as_deref())?,
            prefix,
            service_account_name: props.service_account_name,
            ttl_seconds_after_finished: props.ttl_seconds_after_finished,
            backoff_limit: props.backoff_limit,
            active_deadline_seconds: props.active_deadline_seconds,
            owned_by_source: props.owned_by_source,
            trigger: context.trigger.to_string(),
            trigger_namespace: context.trigger.namespace.clone(),
            target: self.cluster.for_trigger(context)?,
        }))
    }
}

/// A built `job` destination.
struct JobDestination {
    image: Template,
    command: Vec<Template>,
    args: Vec<Template>,
    env: Vec<(String, Template)>,
    namespace: Option<Template>,
    prefix: String,
    service_account_name: Option<String>,
    ttl_seconds_after_finished: u32,
    backoff_limit: Option<u32>,
    active_deadline_seconds: Option<u32>,
    owned_by_source: bool,
    trigger: String,
    trigger_namespace: String,
    target: ActingCluster,
}

fn render_list(name: &str, templates: &[Template], scope: &TemplateScope) -> Result<Vec<String>, DeliveryError> {
    templates.iter().enumerate().map(|(i, t)| render_text(&format!("{name}[{i}]"), t, scope)).collect()
}

impl JobDestination {
    /// The Job this delivery creates.
    fn job(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        let scope = request.scope();
        let object = &request.event.object;
        let namespace = match &self.namespace {
            Some(template) => render_text("namespace", template, &scope)?.trim().to_string(),
            None => String::new(),
        };
        let namespace =
            if namespace.is_empty() { default_namespace(&self.trigger_namespace, object) } else { namespace };
        let image = render_text("image", &self.image, &scope)?.trim().to_string();
        if image.is_empty() {
            return Err(DeliveryError::permanent("properties.image: rendered empty"));
        }
        let mut container = json!({"name": "task", "image": image});
        if !self.command.is_empty() {
            container["command"] = json!(render_list("command", &self.command, &scope)?);
        }
        if !self.args.is_empty() {
            container["args"] = json!(render_list("args", &self.args, &scope)?);
        }
        if !self.env.is_empty() {
            let env = self
                .env
                .iter()
                .map(|(name, template)| {
                    Ok(json!({"name": name, "value": render_text(&format!("env.{name}"), template, &scope)?}))
                })
                .collect::<Result<Vec<_>, DeliveryError>>()?;
            container["env"] = json!(env);
        }
        let labels = json!({"app.kubernetes.io/managed-by": FIELD_MANAGER});
        let mut pod_spec = json!({"restartPolicy": "Never", "containers": [container]});
        if let Some(account) = &self.service_account_name {
            pod_spec["serviceAccountName"] = json!(account);
        }
        let mut spec = json!({
            "ttlSecondsAfterFinished": self.ttl_seconds_after_finished,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        });
        if let Some(limit) = self.backoff_limit {
            spec["backoffLimit"] = json!(limit);
        }
        if let Some(deadline) = self.active_deadline_seconds {
            spec["activeDeadlineSeconds"] = json!(deadline);
        }
        let mut metadata = json!({
            "name": format!("{}-{}", self.prefix, delivery_suffix(request.id, 10)),
            "namespace": namespace,
            "labels": labels,
            "annotations": {"ktrigger.dev/trigger": self.trigger, "ktrigger.dev/delivery-id": request.id},
        });
        if self.owned_by_source
            && let Some(owner) = owner_reference(object, &namespace)
        {
            metadata["ownerReferences"] = json!([owner]);
        }
        Ok(json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}))
    }
}

/// A reference to `object` as the Job's owner, when it can own an object in `namespace`.
fn owner_reference(object: &Value, namespace: &str) -> Option<Value> {
    let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str).filter(|t| !t.is_empty());
    let (api_version, kind, uid, name) =
        (text("/apiVersion")?, text("/kind")?, text("/metadata/uid")?, object_name(object)?);
    // Owners of namespaced objects must be in the same namespace (or cluster-scoped, which the
    // event does not tell apart from a missing namespace, so those are left out).
    (object_namespace(object)? == namespace)
        .then(|| json!({"apiVersion": api_version, "kind": kind, "name": name, "uid": uid}))
}

#[async_trait]
impl Destination for JobDestination {
    fn render(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        let job = self.job(request)?;
        let namespace = job["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        Ok(json!({"method": "POST", "path": format!("/apis/batch/v1/namespaces/{namespace}/jobs"), "body": job}))
    }

    async fn deliver(&self, request: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
        let client = self.target.client()?;
        let job: Job = serde_json::from_value(self.job(request)?)
            .map_err(|e| DeliveryError::permanent(format!("cannot build the Job: {e}")))?;
        let namespace = job.metadata.namespace.clone().unwrap_or_default();
        let name = job.metadata.name.clone().unwrap_or_default();
        self.target.check_namespace(Some(&namespace), "create Job")?;
        let api: Api<Job> = Api::namespaced(client.clone(), &namespace);
        let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
        match api.create(&params, &job).await {
            Ok(_) => Ok(Receipt { detail: Some(format!("created Job {namespace}/{name}")) }),
            // The name comes from the delivery id: an earlier attempt of this delivery created it.
            Err(error) if is_conflict(&error) => {
                Ok(Receipt { detail: Some(format!("Job {namespace}/{name} already created by an earlier attempt")) })
            }
            Err(error) => Err(api_error(error, &format!("create Job {namespace}/{name}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrigger_core::{DestinationFactory, Event, TriggerId, TypedDestination};

    fn trigger() -> TriggerId {
        TriggerId { namespace: "apps".into(), service: "s".into(), trigger: "Nightly_Report".into() }
    }

    fn build(properties: Value) -> Result<Arc<dyn Destination>, String> {
        TypedDestination::new(JobFactory::new(Cluster::offline()))
            .build(&properties, &BuildContext::new(trigger()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn properties_are_checked_at_load() {
        let err = build(json!({})).err().unwrap();
        assert!(err.contains("missing field `image`"), "{err}");
        let err = build(json!({"image": "x", "namePrefix": "Bad_Name"})).err().unwrap();
        assert!(err.starts_with("properties.namePrefix: must be 1 to 52"), "{err}");
        let err = build(json!({"image": "x", "args": ["{{ nope }}"]})).err().unwrap();
        assert!(err.starts_with("properties.args[0]: unknown variable(s) nope"), "{err}");
        let err = build(json!({"image": "x", "env": [{"name": "A", "value": "{{ nope }}"}]})).err().unwrap();
        assert!(err.starts_with("properties.env.A: unknown variable(s) nope"), "{err}");
        let err = build(json!({"image": "x", "ttlSecondsAfterFinished": -1})).err().unwrap();
        assert!(err.starts_with("properties.ttlSecondsAfterFinished:"), "{err}");
    }

    #[test]
    fn dry_run_shows_the_job_owned_by_the_source_object() {
        let destination = build(json!({
            "image": "busybox", "command": ["sh", "-c"], "args": ["echo {{ object.metadata.name }}"],
            "env": {"WHO": "{{ event.type }}"}, "backoffLimit": 1, "serviceAccountName": "runner",
        }))
        .unwrap();
        let trigger = trigger();
        let event = Event::new(
            "resource-watcher",
            "create",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "apps", "uid": "u-1"}}),
        );
        let request = DeliveryRequest { id: "d-1", trigger: &trigger, event: &event, attempt: 1 };
        let rendered = destination.render(&request).unwrap();
        assert_eq!(rendered["path"], "/apis/batch/v1/namespaces/apps/jobs");
        let job = &rendered["body"];
        assert_eq!(job["metadata"]["name"], format!("nightly-report-{}", delivery_suffix("d-1", 10)));
        assert_eq!(
            job["metadata"]["ownerReferences"],
            json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "cm", "uid": "u-1"}])
        );
        assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 3600);
        assert_eq!(job["spec"]["backoffLimit"], 1);
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["serviceAccountName"], "runner");
        assert_eq!(pod["containers"][0]["args"], json!(["echo cm"]));
        assert_eq!(pod["containers"][0]["env"], json!([{"name": "WHO", "value": "create"}]));
        serde_json::from_value::<Job>(job.clone()).unwrap();
    }

    #[test]
    fn objects_elsewhere_do_not_own_the_job() {
        let object =
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "b", "uid": "u"}});
        assert!(owner_reference(&object, "a").is_none());
        assert!(owner_reference(&object, "b").is_some());
        assert!(owner_reference(&json!({"metadata": {"name": "p", "namespace": "b"}}), "b").is_none());
    }
}
