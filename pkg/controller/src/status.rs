//! Computing a TriggerService's status from what the engine reports. Pure: no I/O.

use chrono::{DateTime, Utc};
use ktrigger_api::{Condition, TriggerServiceStatus, TriggerStatus};
use ktrigger_core::event::rfc3339;
use ktrigger_core::prepare::TriggerProblem;

/// The `Ready` condition type.
pub const READY: &str = "Ready";

/// The status of one TriggerService: counters per trigger, totals, and a `Ready` condition that
/// is False with the exact problems when any trigger is invalid or not running.
pub fn compute_status(
    generation: Option<i64>,
    triggers: Vec<TriggerStatus>,
    problems: &[TriggerProblem],
    previous: Option<&TriggerServiceStatus>,
    now: DateTime<Utc>,
) -> TriggerServiceStatus {
    let ready = triggers.iter().filter(|t| t.ready).count();
    let (status, reason, message) = if !problems.is_empty() {
        let details: Vec<String> =
            problems.iter().map(|p| format!("trigger {}: {}", p.id.trigger, p.messages.join("; "))).collect();
        ("False", "InvalidTriggers", details.join(" | "))
    } else if ready < triggers.len() {
        let details: Vec<String> = triggers
            .iter()
            .filter(|t| !t.ready)
            .map(|t| match &t.last_error {
                Some(error) => format!("trigger {}: not running: {error}", t.name),
                None => format!("trigger {}: starting", t.name),
            })
            .collect();
        ("False", "TriggersNotRunning", details.join(" | "))
    } else {
        ("True", "TriggersRunning", format!("{} trigger(s) running", triggers.len()))
    };
    let last_transition_time = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_name == READY))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| rfc3339(now));
    TriggerServiceStatus {
        observed_generation: generation,
        conditions: vec![Condition {
            type_name: READY.to_string(),
            status: status.to_string(),
            reason: Some(reason.to_string()),
            message: Some(message),
            last_transition_time: Some(last_transition_time),
        }],
        ready_triggers: Some(format!("{ready}/{}", triggers.len())),
        fired: triggers.iter().map(|t| t.fired).sum(),
        failed: triggers.iter().map(|t| t.failed).sum(),
        triggers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrigger_core::event::TriggerId;

    fn trigger(name: &str, ready: bool, fired: u64) -> TriggerStatus {
        TriggerStatus { name: name.into(), ready, fired, ..Default::default() }
    }

    fn id(trigger: &str) -> TriggerId {
        TriggerId { namespace: "ns".into(), service: "svc".into(), trigger: trigger.into() }
    }

    #[test]
    fn all_running_is_ready_with_totals() {
        let status = compute_status(Some(3), vec![trigger("a", true, 2), trigger("b", true, 5)], &[], None, Utc::now());
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.conditions[0].status, "True");
        assert_eq!(status.ready_triggers.as_deref(), Some("2/2"));
        assert_eq!(status.fired, 7);
    }

    #[test]
    fn an_invalid_trigger_makes_ready_false_with_the_exact_error() {
        let problem =
            TriggerProblem { id: id("bad"), messages: vec!["triggers[1].filter: line 1, column 9: oops".into()] };
        let status = compute_status(
            Some(1),
            vec![trigger("a", true, 0), TriggerStatus { name: "bad".into(), ..Default::default() }],
            &[problem],
            None,
            Utc::now(),
        );
        let ready = &status.conditions[0];
        assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("False", Some("InvalidTriggers")));
        assert_eq!(ready.message.as_deref(), Some("trigger bad: triggers[1].filter: line 1, column 9: oops"));
        assert_eq!(status.ready_triggers.as_deref(), Some("1/2"));
    }

    #[test]
    fn received_is_also_written_under_its_former_name() {
        let snapshot = ktrigger_core::stats::StatsSnapshot { received: 41, ..Default::default() };
        let written = serde_json::to_value(snapshot.to_status("a")).unwrap();
        assert_eq!((written["received"].as_u64(), written["matched"].as_u64()), (Some(41), Some(41)));
    }

    #[test]
    fn the_transition_time_only_moves_when_the_condition_changes() {
        let earlier = Utc::now() - chrono::TimeDelta::hours(1);
        let first = compute_status(None, vec![trigger("a", true, 0)], &[], None, earlier);
        let same = compute_status(None, vec![trigger("a", true, 9)], &[], Some(&first), Utc::now());
        assert_eq!(same.conditions[0].last_transition_time, first.conditions[0].last_transition_time);
        let changed = compute_status(None, vec![trigger("a", false, 9)], &[], Some(&same), Utc::now());
        assert_ne!(changed.conditions[0].last_transition_time, first.conditions[0].last_transition_time);
    }
}
