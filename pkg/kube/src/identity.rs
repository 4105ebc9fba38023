//! Who a TriggerService acts as in the cluster: one rule for the lists and watches of its
//! sources, its `secretKeyRef` reads and its actions.
//!
//! `spec.serviceAccountName` is impersonated; without one, the operator's default ServiceAccount
//! of the TriggerService's namespace (`--default-service-account`, as Flux does); without that,
//! this process's own identity, which ktrigger confines to the TriggerService's namespace in
//! controller mode. `ktrigger run` uses its kubeconfig's identity anywhere.

use std::fmt;

use http::HeaderValue;
use kube::Client;

/// Longest ServiceAccount name (a DNS subdomain).
const MAX_NAME: usize = 253;

/// Whose credentials a request to the API server carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// This process's own: the kubeconfig's user, or the controller's ServiceAccount.
    Own,
    /// A ServiceAccount, through impersonation.
    ServiceAccount {
        /// Its namespace (the TriggerService's).
        namespace: String,
        /// Its name.
        name: String,
    },
}

impl Identity {
    /// The user name sent in `Impersonate-User`, when this is not the own identity.
    pub fn user(&self) -> Option<String> {
        match self {
            Identity::Own => None,
            Identity::ServiceAccount { namespace, name } => Some(format!("system:serviceaccount:{namespace}:{name}")),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Own => write!(f, "ktrigger's own identity"),
            Identity::ServiceAccount { namespace, name } => write!(f, "ServiceAccount {namespace}/{name}"),
        }
    }
}

/// What one TriggerService acts as, and where ktrigger lets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The credentials its requests carry.
    pub identity: Identity,
    /// The only namespace it may read and act in, when ktrigger confines it (its RBAC does not:
    /// the own identity serves every TriggerService).
    pub confined_to: Option<String>,
}

impl Actor {
    /// The own identity, anywhere (`ktrigger run`).
    pub fn own() -> Self {
        Actor { identity: Identity::Own, confined_to: None }
    }

    /// Refuses to read or act in `namespace` (`None`: all namespaces, or a cluster-scoped kind)
    /// when this actor is confined to another one.
    pub fn check_namespace(&self, namespace: Option<&str>) -> Result<(), String> {
        let Some(home) = &self.confined_to else { return Ok(()) };
        if namespace == Some(home.as_str()) {
            return Ok(());
        }
        let place = match namespace {
            Some(ns) => format!("namespace {ns:?}"),
            None => "all namespaces or cluster-scoped objects".to_string(),
        };
        Err(format!(
            "{place} is outside the TriggerService's namespace {home:?}: a TriggerService without \
             spec.serviceAccountName (and without a default ServiceAccount set by the operator) reads and acts \
             only in its own namespace; set spec.serviceAccountName to a ServiceAccount allowed there"
        ))
    }
}

/// The operator's rule for giving TriggerServices an identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityPolicy {
    /// `--default-service-account`: the ServiceAccount of each TriggerService's namespace that
    /// TriggerServices without `serviceAccountName` act as.
    pub default_service_account: Option<String>,
    /// Whether TriggerServices with no identity at all are confined to their own namespace.
    pub confine_own: bool,
}

impl IdentityPolicy {
    /// `ktrigger run`: named ServiceAccounts are impersonated, everything else uses the
    /// kubeconfig's identity anywhere.
    pub fn local() -> Self {
        IdentityPolicy::default()
    }

    /// `ktrigger controller`: the default ServiceAccount when given, else the own identity
    /// confined to the TriggerService's namespace unless `cluster_wide`.
    pub fn controller(default_service_account: Option<String>, cluster_wide: bool) -> Result<Self, String> {
        if let Some(name) = &default_service_account {
            check_name(name).map_err(|e| format!("--default-service-account: {e}"))?;
        }
        Ok(IdentityPolicy { default_service_account, confine_own: !cluster_wide })
    }

    /// The actor of a TriggerService in `namespace` (empty for files without one) naming
    /// `service_account` (or none).
    pub fn resolve(&self, namespace: &str, service_account: Option<&str>) -> Result<Actor, String> {
        if let Some(name) = service_account {
            check_name(name).map_err(|e| format!("spec.serviceAccountName: {e}"))?;
            if namespace.is_empty() {
                return Err(format!(
                    "serviceAccountName {name:?} needs a namespaced TriggerService (the ServiceAccount lives in it)"
                ));
            }
        }
        if namespace.is_empty() {
            return Ok(Actor::own());
        }
        let account = service_account.or(self.default_service_account.as_deref());
        Ok(match account {
            Some(name) => Actor {
                identity: Identity::ServiceAccount { namespace: namespace.to_string(), name: name.to_string() },
                confined_to: None,
            },
            None => Actor { identity: Identity::Own, confined_to: self.confine_own.then(|| namespace.to_string()) },
        })
    }
}

/// Checks that `name` can be a ServiceAccount name (a DNS subdomain), so that no other user
/// name can be impersonated through it.
fn check_name(name: &str) -> Result<(), String> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.chars().all(|c| alnum(c) || c == '-' || c == '.')
        && name.starts_with(alnum)
        && name.ends_with(alnum);
    if valid {
        Ok(())
    } else {
        Err(format!("{name:?} is not a ServiceAccount name (lowercase letters, digits, '-', '.')"))
    }
}

/// A client sending through `client` as `identity`: with `Impersonate-User` for a
/// ServiceAccount (the API server adds its groups), unchanged for the own identity.
pub fn client_as(client: &Client, identity: &Identity) -> Result<Client, String> {
    let Some(user) = identity.user() else { return Ok(client.clone()) };
    let value = HeaderValue::from_str(&user).map_err(|_| format!("{identity}: not a valid user name"))?;
    let inner = client.clone();
    let service = tower::service_fn(move |mut request: http::Request<kube::client::Body>| {
        request.headers_mut().insert("impersonate-user", value.clone());
        request.headers_mut().remove("impersonate-group");
        let client = inner.clone();
        async move { client.send(request).await }
    });
    Ok(Client::new(service, client.default_namespace().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service_account(namespace: &str, name: &str) -> Identity {
        Identity::ServiceAccount { namespace: namespace.into(), name: name.into() }
    }

    #[test]
    fn the_named_service_account_comes_first_then_the_default_then_the_confined_own_identity() {
        let policy = IdentityPolicy::controller(Some("ktrigger".into()), false).unwrap();
        let named = policy.resolve("apps", Some("robot")).unwrap();
        assert_eq!(named, Actor { identity: service_account("apps", "robot"), confined_to: None });
        let default = policy.resolve("apps", None).unwrap();
        assert_eq!(default, Actor { identity: service_account("apps", "ktrigger"), confined_to: None });
        let none = IdentityPolicy::controller(None, false).unwrap().resolve("apps", None).unwrap();
        assert_eq!(none, Actor { identity: Identity::Own, confined_to: Some("apps".into()) });
        let wide = IdentityPolicy::controller(None, true).unwrap().resolve("apps", None).unwrap();
        assert_eq!(wide, Actor::own());
    }

    #[test]
    fn run_uses_its_own_identity_anywhere_and_impersonates_named_service_accounts() {
        let policy = IdentityPolicy::local();
        assert_eq!(policy.resolve("", None).unwrap(), Actor::own());
        assert_eq!(policy.resolve("apps", None).unwrap(), Actor::own());
        assert_eq!(policy.resolve("apps", Some("robot")).unwrap().identity, service_account("apps", "robot"));
        let error = policy.resolve("", Some("robot")).unwrap_err();
        assert!(error.contains("serviceAccountName \"robot\" needs a namespaced TriggerService"), "{error}");
    }

    #[test]
    fn names_that_are_not_service_accounts_are_refused() {
        for name in ["", "Robot", "a:b", "system:masters", "-a", "a-", "a b", &"a".repeat(254)] {
            let error = IdentityPolicy::local().resolve("apps", Some(name)).unwrap_err();
            assert!(error.starts_with("spec.serviceAccountName: "), "{name}: {error}");
            assert!(IdentityPolicy::controller(Some(name.to_string()), false).is_err(), "{name}");
        }
        assert!(IdentityPolicy::local().resolve("apps", Some("my-robot.v2")).is_ok());
    }

    #[test]
    fn a_confined_actor_refuses_other_namespaces_and_cluster_scope() {
        let actor = IdentityPolicy::controller(None, false).unwrap().resolve("apps", None).unwrap();
        assert!(actor.check_namespace(Some("apps")).is_ok());
        let other = actor.check_namespace(Some("kube-system")).unwrap_err();
        assert!(other.starts_with("namespace \"kube-system\" is outside the TriggerService's namespace \"apps\""));
        assert!(actor.check_namespace(None).unwrap_err().starts_with("all namespaces or cluster-scoped objects"));
        assert!(Actor::own().check_namespace(None).is_ok());
    }

    #[test]
    fn identities_name_themselves_and_their_user() {
        let robot = service_account("apps", "robot");
        assert_eq!(robot.to_string(), "ServiceAccount apps/robot");
        assert_eq!(robot.user().as_deref(), Some("system:serviceaccount:apps:robot"));
        assert_eq!(Identity::Own.user(), None);
    }
}
