//! Structural checks of a spec that need no knowledge of source or destination types.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use crate::types::{DestinationSpec, Trigger, TriggerServiceSpec};

/// One problem in a spec, naming the trigger and the field it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// Name of the trigger the problem is in.
    pub trigger: String,
    /// Path of the field, e.g. `triggers[0].dedup.window`.
    pub field: String,
    /// What is wrong and, where it helps, what would be right.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "trigger {:?}: {}: {}", self.trigger, self.field, self.message)
    }
}

impl std::error::Error for SpecError {}

/// The longest duration anywhere in a TriggerService or on the command line: 30 days. Anything
/// longer is a typo or an attempt to overflow the clock arithmetic of timers and windows.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Longest duration text: generous for `1h 30m 15s 500ms`, and bounds what the CRD lets through.
pub const MAX_DURATION_TEXT: usize = 64;

/// Most deliveries one destination may have in flight at once.
pub const MAX_CONCURRENCY: u32 = 1024;

/// Most deliveries in one batch.
pub const MAX_BATCH_EVENTS: u32 = 1000;

/// Parses a duration such as `500ms`, `10s`, `2m` or `1h 30m`, greater than zero and at most
/// [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.len() > MAX_DURATION_TEXT {
        return Err(format!("invalid duration: longer than {MAX_DURATION_TEXT} characters; use e.g. 30s, 5m, 1h"));
    }
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?} ({e}); use e.g. 30s, 5m, 1h"))?;
    if duration.is_zero() {
        return Err(format!("duration {text:?} must be greater than zero"));
    }
    if duration > MAX_DURATION {
        return Err(format!("duration {text:?} is longer than the maximum of 30 days"));
    }
    Ok(duration)
}

/// The effective name of every trigger: its `name`, or `trigger-<index>` when it has none.
pub fn trigger_names(spec: &TriggerServiceSpec) -> Vec<String> {
    spec.triggers
        .iter()
        .enumerate()
        .map(|(index, trigger)| trigger.name.clone().unwrap_or_else(|| format!("trigger-{index}")))
        .collect()
}

/// Checks the shape of every trigger; returns all problems found, in order.
pub fn validate_spec(spec: &TriggerServiceSpec) -> Vec<SpecError> {
    let names = trigger_names(spec);
    let mut seen = HashSet::new();
    let mut errors = Vec::new();
    for (index, (trigger, name)) in spec.triggers.iter().zip(&names).enumerate() {
        let mut check = Checker { trigger: name, prefix: format!("triggers[{index}]"), errors: &mut errors };
        if !seen.insert(name.as_str()) {
            check.fail("name", format!("duplicate trigger name {name:?}; names must be unique"));
        }
        if let Some(explicit) = &trigger.name {
            check_name(&mut check, explicit);
        }
        check_trigger(&mut check, trigger);
    }
    errors
}

struct Checker<'a> {
    trigger: &'a str,
    prefix: String,
    errors: &'a mut Vec<SpecError>,
}

impl Checker<'_> {
    fn fail(&mut self, field: &str, message: String) {
        self.errors.push(SpecError {
            trigger: self.trigger.to_string(),
            field: format!("{}.{field}", self.prefix),
            message,
        });
    }

    fn duration(&mut self, field: &str, value: Option<&String>) {
        if let Some(text) = value
            && let Err(message) = parse_duration(text)
        {
            self.fail(field, message);
        }
    }
}

fn check_name(check: &mut Checker, name: &str) {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !valid {
        check.fail("name", format!("invalid name {name:?}: use at most 63 lower-case letters, digits, '-' or '.'"));
    }
}

fn check_trigger(check: &mut Checker, trigger: &Trigger) {
    if trigger.source.type_name.trim().is_empty() {
        check.fail("source.type", "a source type is required".into());
    }
    if let Some(dedup) = &trigger.dedup {
        if dedup.key.trim().is_empty() {
            check.fail("dedup.key", "a dedup key expression is required".into());
        }
        check.duration("dedup.window", Some(&dedup.window));
    }
    if let Some(limit) = &trigger.rate_limit {
        if limit.per_minute == 0 {
            check.fail("rateLimit.perMinute", "must be at least 1".into());
        }
        if limit.burst == Some(0) {
            check.fail("rateLimit.burst", "must be at least 1".into());
        }
    }
    check.duration("debounce", trigger.debounce.as_ref());
    match (trigger.destinations.is_empty(), trigger.action.is_some()) {
        (true, false) => check.fail("destinations", "at least one destination is required".into()),
        (false, true) => check.fail("action", "set either `destinations` or `action`, not both".into()),
        _ => {}
    }
    for (index, destination) in trigger.destinations.iter().enumerate() {
        check_destination(check, &format!("destinations[{index}]"), destination);
    }
    if let Some(action) = &trigger.action {
        check_destination(check, "action", action);
    }
    if let Some(dead_letter) = &trigger.dead_letter {
        check_destination(check, "deadLetter", dead_letter);
    }
}

fn check_destination(check: &mut Checker, field: &str, destination: &DestinationSpec) {
    if destination.type_name.trim().is_empty() {
        check.fail(&format!("{field}.type"), "a destination type is required".into());
    }
    check.duration(&format!("{field}.timeout"), destination.timeout.as_ref());
    if destination.queue_size == Some(0) {
        check.fail(&format!("{field}.queueSize"), "must be at least 1".into());
    }
    if destination.concurrency.is_some_and(|n| !(1..=MAX_CONCURRENCY).contains(&n)) {
        check.fail(&format!("{field}.concurrency"), format!("must be between 1 and {MAX_CONCURRENCY}"));
    }
    if let Some(batch) = &destination.batch {
        if !(1..=MAX_BATCH_EVENTS).contains(&batch.max_events) {
            check.fail(&format!("{field}.batch.maxEvents"), format!("must be between 1 and {MAX_BATCH_EVENTS}"));
        }
        check.duration(&format!("{field}.batch.maxDelay"), batch.max_delay.as_ref());
    }
    if let Some(retry) = &destination.retry {
        if retry.max_attempts == Some(0) {
            check.fail(&format!("{field}.retry.maxAttempts"), "must be at least 1".into());
        }
        check.duration(&format!("{field}.retry.backoff"), retry.backoff.as_ref());
        check.duration(&format!("{field}.retry.maxBackoff"), retry.max_backoff.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{DedupSpec, SourceSpec};

    fn trigger(name: &str) -> Trigger {
        Trigger {
            name: Some(name.into()),
            source: SourceSpec { type_name: "cron".into(), ..Default::default() },
            destinations: vec![DestinationSpec { type_name: "log".into(), ..Default::default() }],
            ..Default::default()
        }
    }

    #[test]
    fn duplicate_names_are_reported_with_the_field() {
        let spec = TriggerServiceSpec { triggers: vec![trigger("a"), trigger("a")], ..Default::default() };
        let errors = validate_spec(&spec);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "triggers[1].name");
        assert!(errors[0].message.contains("duplicate"));
    }

    #[test]
    fn bad_durations_name_the_field() {
        let mut t = trigger("a");
        t.dedup = Some(DedupSpec { key: "object.x".into(), window: "ten minutes".into() });
        t.debounce = Some("0s".into());
        let spec = TriggerServiceSpec { triggers: vec![t], ..Default::default() };
        let fields: Vec<_> = validate_spec(&spec).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["triggers[0].dedup.window", "triggers[0].debounce"]);
    }

    #[test]
    fn durations_are_bounded_to_thirty_days() {
        assert_eq!(parse_duration("30d"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("720h"), Ok(MAX_DURATION));
        let err = parse_duration("30d 1s").unwrap_err();
        assert!(err.contains("longer than the maximum of 30 days"), "{err}");
        let err = parse_duration("500000000000y").unwrap_err();
        assert!(err.contains("500000000000y"), "{err}");
    }

    #[test]
    fn huge_debounce_and_window_are_reported_with_the_field() {
        let mut t = trigger("a");
        t.dedup = Some(DedupSpec { key: "object.x".into(), window: "100y".into() });
        t.debounce = Some("500000000000y".into());
        let spec = TriggerServiceSpec { triggers: vec![t], ..Default::default() };
        let fields: Vec<_> = validate_spec(&spec).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["triggers[0].dedup.window", "triggers[0].debounce"]);
    }

    #[test]
    fn a_trigger_without_destinations_is_rejected() {
        let mut t = trigger("a");
        t.destinations.clear();
        let spec = TriggerServiceSpec { triggers: vec![t], ..Default::default() };
        assert_eq!(
            validate_spec(&spec)[0].to_string(),
            "trigger \"a\": triggers[0].destinations: at least one destination is required"
        );
    }

    #[test]
    fn unnamed_triggers_get_index_names() {
        let mut t = trigger("x");
        t.name = None;
        let spec = TriggerServiceSpec { triggers: vec![trigger("a"), t], ..Default::default() };
        assert_eq!(trigger_names(&spec), ["a", "trigger-1"]);
    }
}
