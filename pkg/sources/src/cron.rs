//! The `cron` source (kube-trigger's `cronjob`): fires on a cron schedule in a time zone.
//!
//! Each running source is one task that sleeps until the next occurrence and fires once for it.
//! There is no catch-up: occurrences that pass while the trigger is not running are not replayed,
//! and when the process wakes up late (e.g. it was paused) it fires once for the occurrence it was
//! waiting for and then continues with the first occurrence after the current time.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use ktrigger_core::event::{Event, rfc3339};
use ktrigger_core::properties::parse_properties;
use ktrigger_core::registry::{BuildContext, EventSink, PropertyDoc, Source, SourceError, SourceFactory, TypeDoc};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest single sleep: the wall clock is checked again at least this often, so that clock
/// changes (NTP steps, suspend and resume) delay a fire by at most this much.
const MAX_SLEEP: Duration = Duration::from_secs(60);

static DOC: TypeDoc = TypeDoc {
    name: "cron",
    aliases: &["cronjob"],
    summary: "Fires on a cron schedule (5 fields, or 6 with seconds first) in a time zone. Each fire has \
        `event.type` `fire` and `object` {schedule, timeZone, scheduledTime, firedTime}",
    properties: &[
        PropertyDoc {
            name: "schedule",
            required: true,
            description: "Cron expression: `min hour day-of-month month day-of-week`, or with a leading \
                seconds field (6 fields). Names (MON, JAN), ranges, steps, L, W, # and @hourly-style \
                nicknames work. A day-of-month and a day-of-week both given match either (Vixie cron); \
                prefix day-of-week with + to require both. Occurrences missed while the trigger was not \
                running are not replayed.",
        },
        PropertyDoc {
            name: "timeZone",
            required: false,
            description: "IANA time zone the schedule is read in, e.g. Europe/Berlin; default UTC. \
                Daylight-saving gaps and repeats follow croner's rules.",
        },
    ],
    example: "source:
  type: cron
  properties:
    schedule: \"0 9 * * MON-FRI\"
    timeZone: Europe/Berlin
",
};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Properties {
    schedule: String,
    #[serde(default)]
    time_zone: Option<String>,
}

/// Builds `cron` sources.
#[derive(Debug, Clone, Copy, Default)]
pub struct CronFactory;

impl SourceFactory for CronFactory {
    fn doc(&self) -> &'static TypeDoc {
        &DOC
    }

    fn build(&self, properties: &Value, _context: &BuildContext) -> Result<Arc<dyn Source>, String> {
        let props: Properties = parse_properties(properties)?;
        Ok(Arc::new(CronSource::new(&props.schedule, props.time_zone.as_deref(), Clock::System)?))
    }
}

/// Where the source reads the wall-clock time; tests anchor it to tokio's pausable clock.
#[derive(Debug, Clone, Copy)]
enum Clock {
    System,
    #[cfg(test)]
    Anchored {
        wall: DateTime<Utc>,
        at: Instant,
    },
}

impl Clock {
    fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            #[cfg(test)]
            Clock::Anchored { wall, at } => {
                *wall + chrono::TimeDelta::from_std(at.elapsed()).unwrap_or(chrono::TimeDelta::MAX)
            }
        }
    }
}

/// One schedule in one time zone.
#[derive(Debug)]
struct CronSource {
    cron: Cron,
    schedule: String,
    zone: Tz,
    clock: Clock,
}

impl CronSource {
    fn new(schedule: &str, zone: Option<&str>, clock: Clock) -> Result<Self, String> {
        let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
        let cron = parser
            .parse(schedule)
            .map_err(|e| format!("properties.schedule: invalid cron expression {schedule:?}: {e}"))?;
        let zone = match zone {
            None => Tz::UTC,
            Some(name) => name.parse::<Tz>().map_err(|_| {
                format!(
                    "properties.timeZone: unknown time zone {name:?}; use an IANA name such as Europe/Berlin or UTC"
                )
            })?,
        };
        let source = CronSource { cron, schedule: schedule.to_string(), zone, clock };
        source
            .next_after(source.clock.now())
            .map_err(|e| format!("properties.schedule: {schedule:?} never fires: {e}"))?;
        Ok(source)
    }

    /// The first occurrence strictly after `after`.
    fn next_after(&self, after: DateTime<Utc>) -> Result<DateTime<Utc>, croner::errors::CronError> {
        let local = after.with_timezone(&self.zone);
        Ok(self.cron.find_next_occurrence(&local, false)?.with_timezone(&Utc))
    }

    fn fire_record(&self, scheduled: DateTime<Utc>, fired: DateTime<Utc>) -> Value {
        json!({
            "schedule": self.schedule,
            "timeZone": self.zone.name(),
            "scheduledTime": rfc3339(scheduled),
            "firedTime": rfc3339(fired),
        })
    }
}

#[async_trait]
impl Source for CronSource {
    async fn run(&self, sink: EventSink, cancel: CancellationToken) -> Result<(), SourceError> {
        let mut after = self.clock.now();
        loop {
            let next = self
                .next_after(after)
                .map_err(|e| SourceError(format!("no next occurrence of {:?}: {e}", self.schedule)))?;
            loop {
                let now = self.clock.now();
                if now >= next {
                    break;
                }
                let wait = (next - now).to_std().unwrap_or(Duration::ZERO).min(MAX_SLEEP);
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    () = tokio::time::sleep_until(Instant::now() + wait) => {}
                }
            }
            let fired = self.clock.now();
            let mut event = Event::new("cron", "fire", self.fire_record(next, fired));
            event.meta.time = fired;
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                sent = sink.send(event) => if !sent { return Ok(()) },
            }
            // No catch-up: continue after whichever is later, this occurrence or the current time.
            after = self.clock.now().max(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrigger_core::event::{SharedEvent, TriggerId};
    use tokio::sync::mpsc;

    fn context() -> BuildContext {
        BuildContext::new(TriggerId { namespace: String::new(), service: "s".into(), trigger: "t".into() })
    }

    fn load_error(properties: Value) -> String {
        CronFactory.build(&properties, &context()).err().expect("the properties should be refused")
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    /// Runs a source whose wall clock starts at `start` and follows tokio's (paused) clock.
    fn start(schedule: &str, zone: Option<&str>, start: &str) -> (mpsc::Receiver<SharedEvent>, CancellationToken) {
        let clock = Clock::Anchored { wall: at(start), at: Instant::now() };
        let source = CronSource::new(schedule, zone, clock).unwrap();
        let (sink, events) = EventSink::channel(4);
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        tokio::spawn(async move { source.run(sink, token).await });
        (events, cancel)
    }

    async fn next_scheduled(events: &mut mpsc::Receiver<SharedEvent>) -> String {
        let event = events.recv().await.unwrap();
        assert_eq!((event.meta.source.as_str(), event.meta.event_type.as_str()), ("cron", "fire"));
        event.object["scheduledTime"].as_str().unwrap().to_string()
    }

    #[test]
    fn five_and_six_field_schedules_and_the_alias_load() {
        assert!(CronFactory.build(&json!({"schedule": "*/5 * * * *"}), &context()).is_ok());
        assert!(CronFactory.build(&json!({"schedule": "30 */5 * * * *"}), &context()).is_ok());
        assert!(CronFactory.build(&json!({"schedule": "@hourly", "timeZone": "Asia/Tokyo"}), &context()).is_ok());
        assert_eq!(DOC.aliases, ["cronjob"]);
    }

    #[test]
    fn load_errors_name_the_property() {
        let err = load_error(json!({"schedule": "* * *"}));
        assert!(err.starts_with("properties.schedule: invalid cron expression \"* * *\": "), "{err}");
        let err = load_error(json!({"schedule": "0 0 0 1 1 * 2030"}));
        assert!(err.starts_with("properties.schedule: invalid cron expression"), "{err}");
        let err = load_error(json!({"schedule": "61 * * * *"}));
        assert!(err.starts_with("properties.schedule: invalid cron expression"), "{err}");
        let err = load_error(json!({"schedule": "0 0 30 2 *"}));
        assert!(err.starts_with("properties.schedule: \"0 0 30 2 *\" never fires"), "{err}");
        let err = load_error(json!({"schedule": "* * * * *", "timeZone": "Mars/Olympus"}));
        assert!(err.starts_with("properties.timeZone: unknown time zone \"Mars/Olympus\""), "{err}");
        let err = load_error(json!({}));
        assert!(err.contains("missing field `schedule`"), "{err}");
        let err = load_error(json!({"schedule": "* * * * *", "timezone": "UTC"}));
        assert!(err.contains("timezone"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn fires_every_minute_without_duplicates() {
        let (mut events, cancel) = start("* * * * *", None, "2026-01-01T00:00:30Z");
        let event = events.recv().await.unwrap();
        assert_eq!(
            event.object,
            json!({"schedule": "* * * * *", "timeZone": "UTC", "scheduledTime": "2026-01-01T00:01:00Z",
                "firedTime": "2026-01-01T00:01:00Z"})
        );
        assert_eq!(rfc3339(event.meta.time), "2026-01-01T00:01:00Z");
        assert_eq!(next_scheduled(&mut events).await, "2026-01-01T00:02:00Z");
        assert_eq!(next_scheduled(&mut events).await, "2026-01-01T00:03:00Z");
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn six_fields_fire_on_seconds() {
        let (mut events, cancel) = start("*/10 * * * * *", None, "2026-01-01T00:00:05Z");
        assert_eq!(next_scheduled(&mut events).await, "2026-01-01T00:00:10Z");
        assert_eq!(next_scheduled(&mut events).await, "2026-01-01T00:00:20Z");
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn schedules_are_read_in_their_time_zone() {
        // 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer.
        let (mut events, cancel) = start("0 9 * * *", Some("Europe/Berlin"), "2026-03-27T12:00:00Z");
        let event = events.recv().await.unwrap();
        assert_eq!(event.object["scheduledTime"], "2026-03-28T08:00:00Z");
        assert_eq!(event.object["timeZone"], "Europe/Berlin");
        assert_eq!(next_scheduled(&mut events).await, "2026-03-29T07:00:00Z");
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_stops_the_wait_at_once() {
        let clock = Clock::Anchored { wall: at("2026-01-01T00:00:00Z"), at: Instant::now() };
        let source = CronSource::new("0 0 1 1 *", None, clock).unwrap();
        let (sink, mut events) = EventSink::channel(1);
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let cancel = cancel.clone();
            async move { source.run(sink, cancel).await }
        });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let started = Instant::now();
        cancel.cancel();
        task.await.unwrap().unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(events.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_trigger_ends_the_run() {
        let clock = Clock::Anchored { wall: at("2026-01-01T00:00:00Z"), at: Instant::now() };
        let source = CronSource::new("* * * * * *", None, clock).unwrap();
        let (sink, events) = EventSink::channel(1);
        drop(events);
        assert!(source.run(sink, CancellationToken::new()).await.is_ok());
    }

    #[test]
    fn late_wake_up_does_not_catch_up() {
        let clock = Clock::Anchored { wall: at("2026-01-01T00:00:00Z"), at: Instant::now() };
        let source = CronSource::new("* * * * *", None, clock).unwrap();
        // After firing 00:01 late at 00:05:30, the next occurrence is 00:06, not 00:02.
        let after = at("2026-01-01T00:05:30Z").max(at("2026-01-01T00:01:00Z"));
        assert_eq!(source.next_after(after).unwrap(), at("2026-01-01T00:06:00Z"));
    }
}
