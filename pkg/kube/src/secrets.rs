//! Reading `secretKeyRef` values from the cluster, as the TriggerService's identity (its
//! `serviceAccountName`, the operator's default ServiceAccount, or the engine's own identity),
//! always in the TriggerService's namespace.

use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use ktrigger_core::{Secret, SecretKeyRef, SecretReader, no_cluster};
use kube::Api;

use crate::Cluster;

/// How long reading one Secret may take before the trigger is reported as not loadable.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Reads Secrets through the cluster's client, as the identity its sources and destinations
/// act as (see [`Cluster::acting_as`]).
#[derive(Debug, Clone)]
pub struct KubeSecretReader {
    cluster: Cluster,
}

impl KubeSecretReader {
    /// A reader acting on `cluster`.
    pub fn new(cluster: Cluster) -> Self {
        KubeSecretReader { cluster }
    }
}

#[async_trait]
impl SecretReader for KubeSecretReader {
    async fn read(
        &self,
        namespace: &str,
        service_account: Option<&str>,
        reference: &SecretKeyRef,
    ) -> Result<Secret, String> {
        let SecretKeyRef { name, key } = reference;
        let target = self.cluster.acting_as(namespace, service_account)?;
        let client = target.client().map_err(|_| no_cluster(reference))?;
        let namespace = if namespace.is_empty() { client.default_namespace() } else { namespace };
        let identity = target.identity();
        let api: Api<KubeSecret> = Api::namespaced(client.clone(), namespace);
        let found = match tokio::time::timeout(READ_TIMEOUT, api.get_opt(name)).await {
            Err(_) => return Err(format!("reading Secret {namespace}/{name} timed out after {READ_TIMEOUT:?}")),
            Ok(Err(kube::Error::Api(status))) if status.code == 403 => {
                return Err(format!("reading Secret {namespace}/{name} as {identity} was refused: {}", status.message));
            }
            Ok(Err(error)) => return Err(format!("reading Secret {namespace}/{name} failed: {error}")),
            Ok(Ok(None)) => return Err(format!("Secret {namespace}/{name} not found")),
            Ok(Ok(Some(secret))) => secret,
        };
        let bytes = found
            .data
            .and_then(|mut data| data.remove(key))
            .ok_or_else(|| format!("Secret {namespace}/{name} has no key {key:?}"))?;
        String::from_utf8(bytes.0)
            .map(Secret::new)
            .map_err(|_| format!("Secret {namespace}/{name}: the value of key {key:?} is not UTF-8 text"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_cluster_the_reader_says_what_to_use_instead() {
        let reader = KubeSecretReader::new(Cluster::offline());
        let reference = SecretKeyRef { name: "slack".into(), key: "url".into() };
        let error = reader.read("apps", None, &reference).await.unwrap_err();
        assert_eq!(error, no_cluster(&reference));
        let error = reader.read("", Some("robot"), &reference).await.unwrap_err();
        assert!(error.contains("serviceAccountName \"robot\" needs a namespaced TriggerService"), "{error}");
    }
}
