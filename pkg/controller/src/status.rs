//! Computing a TriggerService's status from what the engine reports. Pure: no I/O.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use ktrigger_api::{Condition, TriggerServiceStatus, TriggerStatus};
use ktrigger_core::{TriggerProblem, rfc3339};

/// The `Ready` condition type.
pub const READY: &str = "Ready";

/// Whether `a` and `b` differ in more than counters: conditions, generation, which triggers run.
/// Such a change is written at once; counters wait for the status interval.
pub fn state_changed(a: &TriggerServiceStatus, b: &TriggerServiceStatus) -> bool {
    let ready = |s: &TriggerServiceStatus| s.triggers.iter().map(|t| (t.name.clone(), t.ready)).collect::<Vec<_>>();
    a.conditions != b.conditions
        || a.observed_generation != b.observed_generation
        || a.ready_triggers != b.ready_triggers
        || ready(a) != ready(b)
}

/// The status of one TriggerService: counters per trigger, totals, and a `Ready` condition that
/// is False with the exact problems when any trigger is invalid or not running. `lastUpdated`
/// moves only when something else in the status changed.
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
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == READY))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::from_second(now.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH)));
    let mut status = TriggerServiceStatus {
        observed_generation: generation,
        conditions: vec![Condition {
            type_: READY.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            last_transition_time,
            observed_generation: generation,
        }],
        ready_triggers: Some(format!("{ready}/{}", triggers.len())),
        fired: triggers.iter().map(|t| t.fired).sum(),
        failed: triggers.iter().map(|t| t.failed).sum(),
        triggers,
        last_updated: None,
    };
    let unchanged = previous.is_some_and(|p| TriggerServiceStatus { last_updated: None, ..p.clone() } == status);
    status.last_updated = match previous {
        Some(previous) if unchanged => previous.last_updated.clone(),
        _ => Some(rfc3339(now)),
    };
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrigger_core::TriggerId;

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
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "InvalidTriggers"));
        assert_eq!(ready.message, "trigger bad: triggers[1].filter: line 1, column 9: oops");
        assert_eq!(ready.observed_generation, Some(1));
        assert_eq!(status.ready_triggers.as_deref(), Some("1/2"));
    }

    #[test]
    fn only_counters_changing_is_not_a_change_of_state() {
        let first = compute_status(Some(1), vec![trigger("a", true, 1)], &[], None, Utc::now());
        let counted = compute_status(Some(1), vec![trigger("a", true, 9)], &[], Some(&first), Utc::now());
        assert!(!state_changed(&first, &counted));
        let stopped = compute_status(Some(1), vec![trigger("a", false, 9)], &[], Some(&first), Utc::now());
        assert!(state_changed(&first, &stopped));
        let next = compute_status(Some(2), vec![trigger("a", true, 9)], &[], Some(&first), Utc::now());
        assert!(state_changed(&first, &next));
    }

    #[test]
    fn received_is_also_written_under_its_former_name() {
        let snapshot = ktrigger_core::StatsSnapshot { received: 41, ..Default::default() };
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

    #[test]
    fn last_updated_moves_only_when_the_status_changes() {
        let earlier = Utc::now() - chrono::TimeDelta::hours(1);
        let first = compute_status(None, vec![trigger("a", true, 1)], &[], None, earlier);
        assert_eq!(first.last_updated, Some(rfc3339(earlier)));
        let same = compute_status(None, vec![trigger("a", true, 1)], &[], Some(&first), Utc::now());
        assert_eq!(same, first, "nothing changed, not even lastUpdated: no status write");
        let now = Utc::now();
        let fired = compute_status(None, vec![trigger("a", true, 2)], &[], Some(&same), now);
        assert_eq!(fired.last_updated, Some(rfc3339(now)));
    }
}
