//! SubjectAccessReviews: whether a ServiceAccount may list and watch what a running watch
//! watches, asked of the API server (authorization.k8s.io/v1) and remembered per identity and
//! scope for a while. A yes lets a watch opened as one identity serve another one too; every
//! answer is asked again once it is older than the TTL, so revoked access ends the sharing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use ktrigger_core::sync::lock;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::time::Instant;

use crate::hub::WatchKey;
use crate::identity::Identity;

/// Longest wait for one review; no answer counts as a no.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// Most answers remembered; when full, the expired ones are dropped, then all of them.
const MAX_ANSWERS: usize = 10_000;

/// What a review is about: identity, group, resource and namespace (RBAC does not look at
/// selectors, so watches that differ only by selectors share an answer).
type Question = (Identity, String, String, Option<String>);

/// Asks and remembers SubjectAccessReviews.
pub struct AccessReviews {
    client: Client,
    ttl: Duration,
    answers: Mutex<HashMap<Question, (bool, Instant)>>,
}

impl std::fmt::Debug for AccessReviews {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessReviews").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl AccessReviews {
    /// Reviews asked through `client`, each answer trusted for `ttl`.
    pub fn new(client: Client, ttl: Duration) -> Self {
        AccessReviews { client, ttl, answers: Mutex::new(HashMap::new()) }
    }

    /// Whether `identity` may list and watch what `key` watches. Only ServiceAccounts are
    /// reviewed (the own identity is never a guest); a failed review (no permission to ask, no
    /// such API, a timeout) is a no, so a watch is shared only on a clear yes.
    pub async fn may_watch(&self, identity: &Identity, key: &WatchKey) -> bool {
        let Identity::ServiceAccount { namespace: account_namespace, .. } = identity else { return false };
        let question: Question =
            (identity.clone(), key.resource.group.clone(), key.resource.plural.clone(), key.namespace.clone());
        let now = Instant::now();
        if let Some((allowed, at)) = lock(&self.answers).get(&question)
            && now.duration_since(*at) < self.ttl
        {
            return *allowed;
        }
        let mut allowed = true;
        for verb in ["list", "watch"] {
            allowed &= self.ask(identity, account_namespace, key, verb).await;
            if !allowed {
                break;
            }
        }
        let mut answers = lock(&self.answers);
        if answers.len() >= MAX_ANSWERS {
            answers.retain(|_, (_, at)| now.duration_since(*at) < self.ttl);
            if answers.len() >= MAX_ANSWERS {
                answers.clear();
            }
        }
        answers.insert(question, (allowed, now));
        allowed
    }

    async fn ask(&self, identity: &Identity, account_namespace: &str, key: &WatchKey, verb: &str) -> bool {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: identity.user(),
                groups: Some(vec![
                    "system:serviceaccounts".to_string(),
                    format!("system:serviceaccounts:{account_namespace}"),
                    "system:authenticated".to_string(),
                ]),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(key.resource.group.clone()),
                    resource: Some(key.resource.plural.clone()),
                    namespace: key.namespace.clone(),
                    verb: Some(verb.to_string()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        match tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review)).await {
            Ok(Ok(answer)) => answer.status.is_some_and(|status| status.allowed),
            Ok(Err(error)) => {
                tracing::debug!(%identity, watch = %key, %error, "SubjectAccessReview failed; not sharing the watch");
                false
            }
            Err(_) => false,
        }
    }
}
