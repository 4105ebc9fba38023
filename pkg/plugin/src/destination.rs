//! A destination served by a plugin: one Deliver call per attempt, its answer mapped to the same
//! outcomes as built-in destinations so that retries, dead letter and counters work unchanged.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use ktrigger_core::{DeliveryError, DeliveryRequest, Destination, Receipt};
use serde_json::{Value, json};
use tonic::Code;

use crate::manager::Plugin;
use crate::proto::{DeliverRequest, Trigger, deliver_response};
use crate::types::cut;

/// A destination of one trigger served by a plugin.
pub struct PluginDestination {
    plugin: Arc<Plugin>,
    type_name: &'static str,
    properties: Value,
}

impl PluginDestination {
    /// The destination of type `type_name` from `plugin` with `properties`.
    pub fn new(plugin: Arc<Plugin>, type_name: &'static str, properties: &Value) -> Self {
        PluginDestination { plugin, type_name, properties: properties.clone() }
    }

    fn failed(&self, reason: &str) -> String {
        format!("plugin {:?}: {}", self.plugin.name(), cut(reason))
    }
}

#[async_trait]
impl Destination for PluginDestination {
    fn render(&self, request: &DeliveryRequest<'_>) -> Result<Value, DeliveryError> {
        Ok(json!({
            "plugin": self.plugin.name(),
            "type": self.type_name,
            "properties": self.properties,
            "context": request.event.context_value(&request.trigger.trigger, Utc::now()),
        }))
    }

    async fn deliver(&self, request: &DeliveryRequest<'_>) -> Result<Receipt, DeliveryError> {
        let mut client = self.plugin.client().map_err(|e| DeliveryError::transient(e.to_string()))?;
        let call = DeliverRequest {
            r#type: self.type_name.to_string(),
            properties_json: self.properties.to_string(),
            trigger: Some(Trigger {
                namespace: request.trigger.namespace.clone(),
                service: request.trigger.service.clone(),
                name: request.trigger.trigger.clone(),
            }),
            delivery_id: request.id.to_string(),
            attempt: request.attempt,
            context_json: request.event.context_value(&request.trigger.trigger, Utc::now()).to_string(),
        };
        let answer = client.deliver(call).await.map_err(|status| {
            let reason = self.failed(&format!("{:?}: {}", status.code(), status.message()));
            match status.code() {
                Code::InvalidArgument
                | Code::NotFound
                | Code::AlreadyExists
                | Code::PermissionDenied
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::Unimplemented
                | Code::Unauthenticated => DeliveryError::permanent(reason),
                _ => DeliveryError::transient(reason),
            }
        })?;
        match answer.into_inner().result {
            Some(deliver_response::Result::Delivered(done)) => {
                Ok(Receipt { detail: (!done.detail.is_empty()).then(|| cut(&done.detail)) })
            }
            Some(deliver_response::Result::Transient(failure)) => Err(DeliveryError::Transient {
                reason: self.failed(&failure.reason),
                retry_after: (failure.retry_after_ms > 0).then(|| Duration::from_millis(failure.retry_after_ms)),
            }),
            Some(deliver_response::Result::Permanent(failure)) => {
                Err(DeliveryError::permanent(self.failed(&failure.reason)))
            }
            None => Err(DeliveryError::permanent(self.failed("the answer has no result"))),
        }
    }
}
