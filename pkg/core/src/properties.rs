//! Reading the free-form `properties` of sources and destinations, and the secrets they refer to.

use std::fmt;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::secrets::ClusterSecrets;

/// Why the properties of a source or destination were refused: the property at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", self.field())]
pub struct PropertyError {
    /// Path of the property within `properties`, e.g. `auth.secretFrom` or `headers[0]`; empty
    /// when the properties as a whole are at fault.
    pub path: String,
    /// What is wrong; never contains credentials.
    pub message: String,
}

impl PropertyError {
    /// The property at `path` (within `properties`) is wrong.
    pub fn new(path: impl Into<String>, message: impl fmt::Display) -> Self {
        PropertyError { path: path.into(), message: message.to_string() }
    }

    /// The properties as a whole are wrong (e.g. two settings conflict).
    pub fn whole(message: impl fmt::Display) -> Self {
        PropertyError::new("", message)
    }

    /// The same error, its path nested under `parent` (e.g. `auth`).
    pub fn under(self, parent: &str) -> Self {
        let path = match (parent.is_empty(), self.path.is_empty()) {
            (true, _) => self.path,
            (false, true) => parent.to_string(),
            (false, false) if self.path.starts_with('[') => format!("{parent}{}", self.path),
            (false, false) => format!("{parent}.{}", self.path),
        };
        PropertyError { path, ..self }
    }

    /// The field as written in a trigger: `properties.url`, or `properties`.
    pub fn field(&self) -> String {
        if self.path.is_empty() { "properties".to_string() } else { format!("properties.{}", self.path) }
    }
}

/// Deserializes `properties` into a typed struct; an error names the property at fault.
/// Absent properties read as an empty object.
pub fn parse_properties<T: DeserializeOwned>(properties: &Value) -> Result<T, PropertyError> {
    let value = if properties.is_null() { Value::Object(Default::default()) } else { properties.clone() };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        PropertyError::new(path, e.into_inner())
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::CredentialPolicy;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Props {
        #[allow(dead_code)]
        url: String,
    }

    #[test]
    fn property_errors_name_the_property() {
        let err = parse_properties::<Props>(&json!({"url": 3})).unwrap_err();
        assert_eq!(err.path, "url");
        assert!(err.to_string().starts_with("properties.url: invalid type"), "{err}");
        let err = parse_properties::<Props>(&Value::Null).unwrap_err();
        assert_eq!(err.path, "");
        assert_eq!(err.to_string(), "properties: missing field `url`");
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
