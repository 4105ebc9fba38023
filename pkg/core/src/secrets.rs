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
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::credentials::{CredentialPolicy, UNCHECKED_VALUE};
use crate::properties::PropertyError;

/// Where a secret value comes from: an environment variable, a file, or (in a cluster) a Secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct SecretRef {
    /// Name of an environment variable holding the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Path of a file holding the value (trailing newline removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// A key of a Kubernetes Secret in the TriggerService's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// A key of a Kubernetes Secret.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key within the Secret.
    pub key: String,
}

/// A credential: shows as `<redacted>` in every debug or display output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential read from somewhere.
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The value itself; only for putting it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl SecretRef {
    /// Reads the value of the property at `path` (within `properties`, e.g. `tokenFrom`) now; a
    /// `secretKeyRef` is looked up in `secrets`, read when the trigger's TriggerService was
    /// applied, and `env` and `file` are read as `secrets`' credential policy allows. An unreadable or empty secret is an error naming the property and where the value
    /// was looked for, never what was found.
    pub fn resolve(&self, secrets: &ClusterSecrets, path: &str) -> Result<Secret, PropertyError> {
        let secret = match (&self.env, &self.file, &self.secret_key_ref) {
            (Some(name), None, None) => secrets.credentials().read_env(name).map(Secret),
            (None, Some(path), None) => secrets.credentials().read_file(path).and_then(|bytes| {
                let text = String::from_utf8(bytes).map_err(|_| format!("secret file {path} is not UTF-8 text"))?;
                Ok(Secret(text.trim_end_matches(['\n', '\r']).to_string()))
            }),
            (None, None, Some(reference)) => secrets.get(reference),
            _ => Err("give exactly one of env, file or secretKeyRef".to_string()),
        };
        match secret {
            Ok(secret) if secret.expose().is_empty() => Err(PropertyError::new(path, "the secret is empty")),
            Ok(secret) => Ok(secret),
            Err(error) => Err(PropertyError::new(path, error)),
        }
    }
}

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

    fn file_ref(path: &std::path::Path) -> SecretRef {
        SecretRef { env: None, file: Some(path.display().to_string()), secret_key_ref: None }
    }

    #[test]
    fn secrets_resolve_from_files_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let secret = file_ref(&path).resolve(&ClusterSecrets::default(), "tokenFrom").unwrap();
        assert_eq!(secret.expose(), "s3cret");
        assert_eq!(format!("{secret:?} {secret}"), "<redacted> <redacted>");
    }

    #[test]
    fn the_credential_policy_of_the_secrets_decides_which_files_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let refusing = ClusterSecrets::default().with_credentials(CredentialPolicy::restricted(&[], &[]).unwrap());
        let err = file_ref(&path).resolve(&refusing, "headers.X-Token").unwrap_err();
        let err = err.to_string();
        assert!(err.starts_with("properties.headers.X-Token: file "), "{err}");
        assert!(err.contains("--allow-credential-files") && !err.contains("s3cret"), "{err}");
        let policy = CredentialPolicy::restricted(&[dir.path().to_path_buf()], &[]).unwrap();
        let allowing = ClusterSecrets::default().with_credentials(policy);
        assert_eq!(file_ref(&path).resolve(&allowing, "headers.X-Token").unwrap().expose(), "s3cret");
    }

    #[test]
    fn unreadable_or_empty_secrets_name_the_property_only() {
        let err = SecretRef { env: Some("KTRIGGER_TEST_UNSET_VAR".into()), file: None, secret_key_ref: None }
            .resolve(&ClusterSecrets::default(), "tokenFrom")
            .unwrap_err();
        assert_eq!(err.to_string(), "properties.tokenFrom: environment variable KTRIGGER_TEST_UNSET_VAR is not set");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        std::fs::write(&path, "\n").unwrap();
        let err = file_ref(&path).resolve(&ClusterSecrets::default(), "secretFrom").unwrap_err();
        assert_eq!(err.to_string(), "properties.secretFrom: the secret is empty");
        let reference = SecretKeyRef { name: "slack".into(), key: "url".into() };
        let err = SecretRef { env: None, file: None, secret_key_ref: Some(reference) }
            .resolve(&ClusterSecrets::default(), "webhookUrlFrom")
            .unwrap_err();
        assert!(err.to_string().starts_with("properties.webhookUrlFrom: secretKeyRef slack/url: no cluster"), "{err}");
        let err = SecretRef { env: Some("A".into()), file: Some("b".into()), secret_key_ref: None }
            .resolve(&ClusterSecrets::default(), "tokenFrom")
            .unwrap_err();
        assert_eq!(err.to_string(), "properties.tokenFrom: give exactly one of env, file or secretKeyRef");
    }
}
