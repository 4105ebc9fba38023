//! Reading the free-form `properties` of sources and destinations, with errors naming the property.
//! The secrets they refer to are read by the `secrets` module.

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
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
}
