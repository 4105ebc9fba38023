//! The `TriggerService` API of ktrigger: types, validation, document parsing and the CRD.
//!
//! This crate does no I/O: callers hand it text and get typed specs or precise errors back.
//!
//! Features:
//! - `crd` (default): the `TriggerService` custom resource with its status and conditions, the
//!   generated CRD ([`crd_yaml`]) and the JSON Schema of TriggerService files. It brings in `kube`
//!   and `k8s-openapi`; without it the crate holds only the Kubernetes-free spec types, their
//!   validation and document parsing, which is what the engine (`ktrigger-core`) needs.

#![deny(missing_docs)]

#[cfg(feature = "crd")]
mod crd;
mod document;
#[cfg(feature = "crd")]
mod file_schema;
mod locate;
mod schema;
mod types;
mod validate;

#[cfg(feature = "crd")]
pub use crd::{Condition, TriggerServiceStatus, crd_yaml};
pub use document::{Document, DocumentError, MAX_DOCUMENT_PROBLEMS, check_documents, parse_documents};
#[cfg(feature = "crd")]
pub use file_schema::{TypeSchema, file_schema};
pub use locate::{FieldPositions, Position, field_positions};
pub use schema::MAX_EXPRESSION;
pub use types::*;
pub use validate::{
    MAX_BATCH_EVENTS, MAX_CONCURRENCY, MAX_DURATION, MAX_DURATION_TEXT, SpecError, parse_duration, trigger_names,
    validate_spec,
};
