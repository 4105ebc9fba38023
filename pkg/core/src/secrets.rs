//! Kubernetes Secrets named by `{secretKeyRef: {name, key}}` in a TriggerService's properties.
//!
//! Building a trigger is synchronous, reading a Secret is not: before a TriggerService's triggers
//! are built, every `secretKeyRef` in its properties is read once through a [`SecretReader`] (as
//! the TriggerService's identity, in its namespace), and the builders look the values up in the
//! resulting [`ClusterSecrets`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use ktrigger_api::{Trigger, TriggerServiceSpec};
use serde_json::Value;

use crate::credentials::CredentialPolicy;
use crate::properties::{Secret, SecretKeyRef};

/// Reads one key of a Kubernetes Secret.
#[async_trait]
pub trait SecretReader: Send + Sync {
    /// Reads `reference` in `namespace` (empty: the client's default namespace), acting as
    /// `service_account` of that namespace when given. Errors name the Secret and key, never a value.
    async fn read(
        &self,
        namespace: &str,
        service_account: Option<&str>,
        reference: &SecretKeyRef,
    ) -> Result<Secret, String>;
}

/// What stands in for a Secret's value when nothing may be read (`ktrigger validate`): shaped so
/// that format checks of URLs, tokens and header values pass. Nothing is ever sent with it.
pub(crate) const UNCHECKED_VALUE: &str = "https://secret-not-read.invalid/";

#[derive(Clone, Default)]
enum Lookup {
    /// No cluster: every `secretKeyRef` is an error saying so.
    #[default]
    Offline,
    /// Values (or why they could not be read) of every reference, read before building.
    Read(Arc<BTreeMap<SecretKeyRef, Result<Secret, String>>>),
    /// Offline checking: references are accepted unread.
    Unchecked,
}

/// The Secret values a TriggerService's triggers may use, and which of this process's files and
/// variables they may read. Never prints a value.
#[derive(Clone, Default)]
pub struct ClusterSecrets(Lookup, CredentialPolicy);

impl fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match &self.0 {
            Lookup::Offline => "offline",
            Lookup::Read(_) => "read",
            Lookup::Unchecked => "unchecked",
        };
        f.debug_tuple("ClusterSecrets").field(&mode).finish()
    }
}

impl ClusterSecrets {
    /// For offline checks: every reference is accepted without being read.
    pub fn unchecked() -> Self {
        ClusterSecrets(Lookup::Unchecked, CredentialPolicy::default())
    }

    /// The same values, with `{env}` and `{file}` references read under `policy`.
    pub fn with_credentials(self, policy: CredentialPolicy) -> Self {
        ClusterSecrets(self.0, policy)
    }

    /// What `{env}` and `{file}` references may read.
    pub fn credentials(&self) -> &CredentialPolicy {
        &self.1
    }

    /// Reads every `secretKeyRef` in `spec`'s properties through `reader`, once each, as the
    /// TriggerService's identity (`spec.serviceAccountName`) in `namespace`.
    pub async fn read(reader: &dyn SecretReader, namespace: &str, spec: &TriggerServiceSpec) -> Self {
        let account = spec.service_account_name.as_deref();
        let mut values = BTreeMap::new();
        for reference in spec.triggers.iter().flat_map(trigger_references).collect::<BTreeSet<_>>() {
            let value = reader.read(namespace, account, &reference).await;
            values.insert(reference, value);
        }
        ClusterSecrets(Lookup::Read(Arc::new(values)), CredentialPolicy::default())
    }

    /// The value of `reference`, or why there is none.
    pub fn get(&self, reference: &SecretKeyRef) -> Result<Secret, String> {
        let SecretKeyRef { name, key } = reference;
        match &self.0 {
            Lookup::Offline => Err(no_cluster(reference)),
            Lookup::Read(values) => values
                .get(reference)
                .cloned()
                .unwrap_or_else(|| Err(format!("secretKeyRef {name}/{key} was not read before the trigger was built"))),
            Lookup::Unchecked => Ok(Secret::new(UNCHECKED_VALUE.to_string())),
        }
    }

    /// Whether some reference could not be read (reading again later may succeed).
    pub fn any_unreadable(&self) -> bool {
        matches!(&self.0, Lookup::Read(values) if values.values().any(Result::is_err))
    }

    /// Feeds the values `trigger` refers to into `hasher`, so that a trigger whose Secret changed
    /// counts as changed when its TriggerService is applied again.
    pub fn hash_for(&self, trigger: &Trigger, hasher: &mut impl Hasher) {
        if let Lookup::Read(values) = &self.0 {
            for reference in trigger_references(trigger) {
                match values.get(&reference) {
                    Some(Ok(secret)) => secret.expose().hash(hasher),
                    Some(Err(error)) => error.hash(hasher),
                    None => {}
                }
            }
        }
    }
}

/// Why `reference` cannot be read without a cluster, and what to do instead.
pub fn no_cluster(reference: &SecretKeyRef) -> String {
    let SecretKeyRef { name, key } = reference;
    format!(
        "secretKeyRef {name}/{key}: no cluster to read it from; run with --kubeconfig or in a cluster, \
         or use {{env: NAME}} or {{file: PATH}}"
    )
}

/// Every `secretKeyRef` anywhere in a trigger's source and destination properties.
pub fn trigger_references(trigger: &Trigger) -> BTreeSet<SecretKeyRef> {
    let mut found = BTreeSet::new();
    let destinations = trigger.destinations.iter().chain(&trigger.action).chain(&trigger.dead_letter);
    for properties in std::iter::once(&trigger.source.properties).chain(destinations.map(|d| &d.properties)) {
        collect(properties, &mut found);
    }
    found
}

fn collect(value: &Value, found: &mut BTreeSet<SecretKeyRef>) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                match serde_json::from_value::<SecretKeyRef>(field.clone()) {
                    Ok(reference) if name == "secretKeyRef" => {
                        found.insert(reference);
                    }
                    _ => collect(field, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect(item, found)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::hash::DefaultHasher;
    use std::sync::Mutex;

    use super::*;

    /// Answers from a fixed table and records who asked.
    struct Table {
        values: BTreeMap<(String, String), String>,
        asked: Mutex<Vec<(String, Option<String>, String)>>,
    }

    #[async_trait]
    impl SecretReader for Table {
        async fn read(
            &self,
            namespace: &str,
            service_account: Option<&str>,
            reference: &SecretKeyRef,
        ) -> Result<Secret, String> {
            self.asked.lock().unwrap().push((
                namespace.to_string(),
                service_account.map(str::to_string),
                reference.name.clone(),
            ));
            self.values
                .get(&(reference.name.clone(), reference.key.clone()))
                .map(|v| Secret::new(v.clone()))
                .ok_or_else(|| format!("Secret {namespace}/{} not found", reference.name))
        }
    }

    fn spec(yaml: &str) -> TriggerServiceSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn reference(name: &str, key: &str) -> SecretKeyRef {
        SecretKeyRef { name: name.into(), key: key.into() }
    }

    const SPEC: &str = r#"
serviceAccountName: notifier
triggers:
  - name: a
    source: {type: webhook, properties: {path: /a, auth: {type: bearer, tokenFrom: {secretKeyRef: {name: hooks, key: token}}}}}
    destinations:
      - type: slack
        properties: {webhookUrlFrom: {secretKeyRef: {name: slack, key: url}}}
  - name: b
    source: {type: cron, properties: {schedule: "* * * * * *"}}
    destinations:
      - type: webhook
        properties:
          url: http://example.test
          headersFrom: {X-Token: {secretKeyRef: {name: hooks, key: token}}}
    deadLetter:
      type: slack
      properties: {webhookUrlFrom: {secretKeyRef: {name: missing, key: url}}}
"#;

    #[test]
    fn references_are_found_anywhere_in_properties() {
        let spec = spec(SPEC);
        let a: Vec<_> = trigger_references(&spec.triggers[0]).into_iter().collect();
        assert_eq!(a, vec![reference("hooks", "token"), reference("slack", "url")]);
        let b: Vec<_> = trigger_references(&spec.triggers[1]).into_iter().collect();
        assert_eq!(b, vec![reference("hooks", "token"), reference("missing", "url")]);
    }

    #[tokio::test]
    async fn each_reference_is_read_once_as_the_service_account() {
        let table = Table {
            values: BTreeMap::from([
                (("hooks".into(), "token".into()), "t0ken".into()),
                (("slack".into(), "url".into()), "https://hooks.slack.test/x".into()),
            ]),
            asked: Mutex::new(Vec::new()),
        };
        let secrets = ClusterSecrets::read(&table, "team-a", &spec(SPEC)).await;
        let asked = table.asked.lock().unwrap().clone();
        assert_eq!(asked.len(), 3, "{asked:?}");
        assert!(asked.iter().all(|(ns, account, _)| ns == "team-a" && account.as_deref() == Some("notifier")));
        assert_eq!(secrets.get(&reference("hooks", "token")).unwrap().expose(), "t0ken");
        assert_eq!(secrets.get(&reference("missing", "url")).unwrap_err(), "Secret team-a/missing not found");
        assert!(secrets.any_unreadable());
        assert!(secrets.get(&reference("other", "k")).unwrap_err().contains("was not read"));
        assert_eq!(format!("{secrets:?}"), "ClusterSecrets(\"read\")");
    }

    #[tokio::test]
    async fn a_changed_value_changes_only_the_hash_of_triggers_using_it() {
        let spec = spec(SPEC);
        let read = |url: &str| {
            let table = Table {
                values: BTreeMap::from([
                    (("hooks".into(), "token".into()), "t0ken".into()),
                    (("slack".into(), "url".into()), url.to_string()),
                ]),
                asked: Mutex::new(Vec::new()),
            };
            let spec = spec.clone();
            async move { ClusterSecrets::read(&table, "ns", &spec).await }
        };
        let before = read("https://one.test").await;
        let after = read("https://two.test").await;
        let hash = |secrets: &ClusterSecrets, trigger: &Trigger| {
            let mut hasher = DefaultHasher::new();
            secrets.hash_for(trigger, &mut hasher);
            hasher.finish()
        };
        assert_ne!(hash(&before, &spec.triggers[0]), hash(&after, &spec.triggers[0]));
        assert_eq!(hash(&before, &spec.triggers[1]), hash(&after, &spec.triggers[1]));
    }

    #[test]
    fn offline_and_unchecked_lookups() {
        let err = ClusterSecrets::default().get(&reference("slack", "url")).unwrap_err();
        assert!(err.starts_with("secretKeyRef slack/url: no cluster to read it from"), "{err}");
        assert!(!ClusterSecrets::default().any_unreadable());
        let value = ClusterSecrets::unchecked().get(&reference("slack", "url")).unwrap();
        assert_eq!(value.expose(), UNCHECKED_VALUE);
    }
}
