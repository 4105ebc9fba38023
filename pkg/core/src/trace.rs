//! The spans of an event's way through a trigger, for OpenTelemetry tracing: `event`, with
//! children `filter`, `router` and one `deliver` per delivery attempt.
//!
//! They are debug spans under their own target, which the log output never shows: with no
//! tracing exporter installed they are disabled at their call site and cost a level check.

use tracing::Span;
use tracing::field::Empty;

use crate::event::{Event, TriggerId};

/// The target of every span here, for a subscriber to select them.
pub const TARGET: &str = "ktrigger::trace";

/// The span of one event in one trigger.
pub fn event_span(trigger: &TriggerId, event: &Event) -> Span {
    tracing::debug_span!(target: TARGET, "event", trigger = %trigger, event.id = %event.meta.id,
        event.source = %event.meta.source, event.type = %event.meta.event_type)
}

/// The span of the filter's evaluation; `matched` is recorded once known.
pub fn filter_span() -> Span {
    tracing::debug_span!(target: TARGET, "filter", matched = Empty)
}

/// The span of the router's decision (dedup and rate limit); `decision` is recorded once known.
pub fn router_span() -> Span {
    tracing::debug_span!(target: TARGET, "router", decision = Empty)
}

/// The span of one delivery attempt, a child of `event` (the event's span, or none for a
/// delivery restored after a restart); `outcome` is recorded once known.
pub fn deliver_span(event: &Span, destination: &str, delivery: &str, attempt: u32) -> Span {
    // OpenTelemetry has signed integers only: an unsigned one would be exported as text.
    tracing::debug_span!(target: TARGET, parent: event, "deliver", destination, delivery,
        attempt = i64::from(attempt), outcome = Empty)
}
