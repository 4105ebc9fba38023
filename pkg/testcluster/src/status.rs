//! API errors, rendered as `Status` objects the way the API server renders them.

use std::fmt;

use serde_json::{Value, json};

/// One invalid field, as the API server lists it among the causes of an Invalid `Status`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FieldError {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueForbidden` or `FieldValueDuplicate`.
    pub reason: &'static str,
    /// The field's path, e.g. `spec.triggers[0].name`; `<nil>` for the object itself.
    pub field: String,
    /// What is wrong, e.g. `Invalid value: "object": must be set`.
    pub body: String,
}

impl FieldError {
    fn new(reason: &'static str, field: &str, body: String) -> Self {
        let field = if field.is_empty() { "<nil>".to_string() } else { field.to_string() };
        FieldError { reason, field, body }
    }

    /// A value that is not allowed; `value` is what the API server shows of it (for CEL rules,
    /// the schema type of the value).
    pub fn invalid(field: &str, value: &str, detail: &str) -> Self {
        Self::new("FieldValueInvalid", field, with_detail(format!("Invalid value: {value:?}"), detail))
    }

    /// A value that is missing.
    pub fn required(field: &str, detail: &str) -> Self {
        Self::new("FieldValueRequired", field, with_detail("Required value".to_string(), detail))
    }

    /// A value that is not permitted here.
    pub fn forbidden(field: &str, detail: &str) -> Self {
        Self::new("FieldValueForbidden", field, with_detail("Forbidden".to_string(), detail))
    }

    /// A value that must be unique and is not; the API server shows no detail for these.
    pub fn duplicate(field: &str, value: &str) -> Self {
        Self::new("FieldValueDuplicate", field, format!("Duplicate value: {value:?}"))
    }
}

fn with_detail(head: String, detail: &str) -> String {
    if detail.is_empty() { head } else { format!("{head}: {detail}") }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.body)
    }
}

/// A failed request: the HTTP code and the `Status` reason and message.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None }
    }

    fn with_details(mut self, group: &str, kind: &str, name: &str) -> Self {
        let mut details = json!({"kind": kind});
        if !name.is_empty() {
            details["name"] = json!(name);
        }
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        self.details = Some(details);
        self
    }

    /// 404 for an object that does not exist.
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", qualified(group, plural)))
            .with_details(group, plural, name)
    }

    /// 404 for a path the server does not serve.
    pub fn no_route() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
    }

    /// 409 for a create whose name is taken.
    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", qualified(group, plural)))
            .with_details(group, plural, name)
    }

    /// 409 for a write based on a stale resourceVersion.
    pub fn conflict(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                qualified(group, plural)
            ),
        )
        .with_details(group, plural, name)
    }

    /// 422 for an object that fails validation.
    pub fn invalid(group: &str, kind: &str, name: &str, detail: &str) -> Self {
        Self::new(422, "Invalid", format!("{kind} \"{name}\" is invalid: {detail}")).with_details(group, kind, name)
    }

    /// 422 for an object with invalid fields: the message lists them (each once) after
    /// `Kind.group "name" is invalid`, and the details hold one cause per field error, which is
    /// what `kubectl` prints.
    pub fn invalid_fields(group: &str, kind: &str, name: &str, errors: &[FieldError]) -> Self {
        let mut distinct: Vec<String> = Vec::new();
        for text in errors.iter().map(FieldError::to_string) {
            if !distinct.contains(&text) {
                distinct.push(text);
            }
        }
        let listed = match distinct.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let qualified = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
        let mut error = Self::new(422, "Invalid", format!("{qualified} \"{name}\" is invalid: {listed}"))
            .with_details(group, kind, name);
        let causes: Vec<Value> =
            errors.iter().map(|e| json!({"reason": e.reason, "message": e.body, "field": e.field})).collect();
        if let Some(details) = &mut error.details {
            details["causes"] = json!(causes);
        }
        error
    }

    /// 400 for a malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 403 for a request the (injected) authorizer denies.
    pub fn forbidden(verb: &str, group: &str, plural: &str, namespace: Option<&str>) -> Self {
        let scope = match namespace {
            Some(ns) => format!(" in the namespace \"{ns}\""),
            None => " at the cluster scope".to_string(),
        };
        Self::new(
            403,
            "Forbidden",
            format!(
                "{plural} is forbidden: User \"test\" cannot {verb} resource \"{plural}\" in API group \"{group}\"{scope}"
            ),
        )
        .with_details(group, plural, "")
    }

    /// 405 for a verb the path does not support.
    pub fn method_not_allowed(verb: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({verb})"),
        )
    }

    /// 410 for a watch from a resourceVersion older than the event log.
    pub fn gone(requested: u64, oldest: u64) -> Self {
        Self::new(410, "Expired", format!("too old resource version: {requested} ({oldest})"))
    }

    /// 410 for a continue token older than what the server still has.
    pub fn continue_expired() -> Self {
        Self::new(
            410,
            "Expired",
            "The provided continue parameter is too old to display a consistent list result. You can start a new \
             list without the continue parameter.",
        )
    }

    /// 415 for a patch in a format the server does not know.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, \
                 got {content_type:?}"
            ),
        )
    }

    /// 500, as injected by the fault `fail_next`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

/// `plural.group` (or just `plural` for the core group), as in API server messages.
fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() { plural.to_string() } else { format!("{plural}.{group}") }
}
