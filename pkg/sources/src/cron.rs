//! The `cron` source (kube-trigger's `cronjob`): fires on a cron schedule in a time zone.
//!
//! Each running source is one task that sleeps until the next occurrence and fires once for it.
//! When the process wakes up late (e.g. it was paused) it fires once for the occurrence it was
//! waiting for and then continues with the first occurrence after the current time.
//!
//! With a state store, the source keeps the time up to which runs are accounted for (the last
//! run, written once the trigger has handled its event). On start, runs missed since then fire
//! once (`missedRuns: once`: one event for the latest, if it is within `startingDeadline`) or not
//! at all (`skip`), as a CronJob does. Without a state store nothing is remembered and missed
//! runs are not replayed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use ktrigger_core::{
    BuildContext, Event, EventSink, Handled, PropertyError, Source, SourceError, SourceState, SourceType, rfc3339,
    stable_id,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest single sleep: the wall clock is checked again at least this often, so that clock
/// changes (NTP steps, suspend and resume) delay a fire by at most this much.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Default of `startingDeadline`.
const DEFAULT_STARTING_DEADLINE: Duration = Duration::from_secs(3600);

/// Most missed runs counted in `missedRuns`; a schedule every second down for a month would
/// otherwise take millions of steps to count.
const MAX_COUNTED: u64 = 10_000;

/// Key of the time up to which runs are accounted for.
const LAST_RUN_KEY: &str = "lastRun";

/// Fires on a cron schedule (5 fields, or 6 with seconds first) in a time zone. Each fire has
/// `event.type` `fire` and `object` {schedule, timeZone, scheduledTime, firedTime}.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CronProperties {
    /// Cron expression: `min hour day-of-month month day-of-week`, or with a leading seconds
    /// field (6 fields). Names (MON, JAN), ranges, steps, L, W, # and @hourly-style nicknames
    /// work. A day-of-month and a day-of-week both given match either (Vixie cron); prefix
    /// day-of-week with + to require both.
    schedule: String,
    /// IANA time zone the schedule is read in, e.g. Europe/Berlin; default UTC. Daylight-saving
    /// gaps and repeats follow croner's rules.
    #[serde(default)]
    time_zone: Option<String>,
    /// What to do on start about runs missed while ktrigger was not running (needs a state
    /// store; without one nothing is remembered): `once` (default) fires one event for the
    /// latest missed run, with `object.missedRuns` = how many were missed (counted up to 10000);
    /// `skip` fires none.
    #[serde(default)]
    missed_runs: MissedRuns,
    /// How late a missed run may still fire, like a CronJob's startingDeadlineSeconds, e.g. 10m;
    /// default 1h, at most 30d. A latest missed run older than this is skipped.
    #[serde(default)]
    starting_deadline: Option<String>,
}

/// What to do on start about runs missed while the trigger was not running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum MissedRuns {
    /// Nothing.
    Skip,
    /// Fire once, for the latest.
    #[default]
    Once,
}

/// Builds `cron` sources.
#[derive(Debug, Clone, Copy, Default)]
pub struct CronFactory;

impl SourceType for CronFactory {
    type Properties = CronProperties;
    const NAME: &'static str = "cron";
    const ALIASES: &'static [&'static str] = &["cronjob"];
    const EXAMPLE: &'static str = "source:
  type: cron
  properties:
    schedule: \"0 9 * * MON-FRI\"
    timeZone: Europe/Berlin
    missedRuns: once
    startingDeadline: 2h
";

    fn build(&self, properties: CronProperties, context: &BuildContext) -> Result<Arc<dyn Source>, PropertyError> {
        Ok(Arc::new(CronSource::configured(properties, context, Clock::System)?))
    }
}

impl CronSource {
    /// Checks `props` and builds the source of `context`'s trigger.
    fn configured(props: CronProperties, context: &BuildContext, clock: Clock) -> Result<CronSource, PropertyError> {
        let starting_deadline = match props.starting_deadline.as_deref() {
            None => DEFAULT_STARTING_DEADLINE,
            Some(text) => ktrigger_api::parse_duration(text).map_err(|e| PropertyError::new("startingDeadline", e))?,
        };
        let source = CronSource::new(&props.schedule, props.time_zone.as_deref(), clock)?;
        Ok(CronSource {
            missed_runs: props.missed_runs,
            starting_deadline,
            state: context.state.clone(),
            trigger: context.trigger.to_string(),
            ..source
        })
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
    missed_runs: MissedRuns,
    starting_deadline: Duration,
    /// Where the last run is kept.
    state: SourceState,
    /// The trigger, part of every event id.
    trigger: String,
}

impl CronSource {
    fn new(schedule: &str, zone: Option<&str>, clock: Clock) -> Result<Self, PropertyError> {
        let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
        let cron = parser
            .parse(schedule)
            .map_err(|e| PropertyError::new("schedule", format!("invalid cron expression {schedule:?}: {e}")))?;
        let zone = match zone {
            None => Tz::UTC,
            Some(name) => name.parse::<Tz>().map_err(|_| {
                PropertyError::new(
                    "timeZone",
                    format!("unknown time zone {name:?}; use an IANA name such as Europe/Berlin or UTC"),
                )
            })?,
        };
        let source = CronSource {
            cron,
            schedule: schedule.to_string(),
            zone,
            clock,
            missed_runs: MissedRuns::default(),
            starting_deadline: DEFAULT_STARTING_DEADLINE,
            state: SourceState::default(),
            trigger: String::new(),
        };
        source
            .next_after(source.clock.now())
            .map_err(|e| PropertyError::new("schedule", format!("{schedule:?} never fires: {e}")))?;
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

    /// The event of the run scheduled at `scheduled`, its id made of the trigger and that time.
    fn fire_event(&self, scheduled: DateTime<Utc>, missed: Option<u64>) -> Event {
        let fired = self.clock.now();
        let mut record = self.fire_record(scheduled, fired);
        if let Some(missed) = missed {
            record["missedRuns"] = json!(missed);
        }
        let mut event = Event::new("cron", "fire", record).with_id(stable_id(&[&self.trigger, &rfc3339(scheduled)]));
        event.meta.time = fired;
        event
    }

    /// How many runs are scheduled in `(last, now]` (at most [`MAX_COUNTED`]), and the latest.
    fn missed(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> Option<(u64, DateTime<Utc>)> {
        let latest = self.cron.find_previous_occurrence(&now.with_timezone(&self.zone), true).ok()?.with_timezone(&Utc);
        if latest <= last {
            return None;
        }
        let mut count = 0;
        let mut after = last;
        while count < MAX_COUNTED {
            match self.next_after(after) {
                Ok(next) if next <= now => {
                    count += 1;
                    after = next;
                }
                _ => break,
            }
        }
        Some((count.max(1), latest))
    }

    /// The time up to which runs were accounted for by an earlier run of the trigger.
    async fn last_run(&self) -> Result<Option<DateTime<Utc>>, SourceError> {
        let stored = self.state.load().await.map_err(|e| SourceError(format!("cannot read the last run: {e}")))?;
        Ok(stored
            .iter()
            .find(|(key, _)| key == LAST_RUN_KEY)
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
            .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
            .map(|time| time.with_timezone(&Utc)))
    }

    async fn store_last_run(&self, time: DateTime<Utc>) -> Result<(), SourceError> {
        self.state
            .put(LAST_RUN_KEY, rfc3339(time).into_bytes())
            .wait()
            .await
            .map_err(|e| SourceError(format!("cannot store the last run: {e}")))
    }

    /// Hands `event` over and, with a state store, records `scheduled` as the last run once the
    /// trigger has handled it. `false` when the trigger stopped.
    async fn fire(&self, sink: &EventSink, event: Event, scheduled: DateTime<Utc>) -> Result<bool, SourceError> {
        if !self.state.durable() {
            return Ok(sink.send(event).await);
        }
        let Some(tracked) = sink.send_tracked(Arc::new(event)).await else { return Ok(false) };
        if let Handled::NotStored(reason) = tracked.handled().await {
            // Started again after a backoff, the source fires this run as a missed one.
            return Err(SourceError(format!("the run of {} was not stored: {reason}", rfc3339(scheduled))));
        }
        self.store_last_run(scheduled).await?;
        Ok(true)
    }

    /// Fires for the runs missed since the last recorded one, as `missedRuns` says.
    async fn catch_up(&self, sink: &EventSink, now: DateTime<Utc>) -> Result<bool, SourceError> {
        let Some(last) = self.last_run().await? else {
            // First start: runs from now on are the ones that can be missed.
            self.store_last_run(now).await?;
            return Ok(true);
        };
        let Some((count, latest)) = self.missed(last, now) else { return Ok(true) };
        let late = (now - latest).to_std().unwrap_or(Duration::ZERO);
        if self.missed_runs == MissedRuns::Skip || late > self.starting_deadline {
            tracing::info!(trigger = %self.trigger, missed = count, latest = %rfc3339(latest),
                "skipping runs missed while the trigger was not running");
            self.store_last_run(latest).await?;
            return Ok(true);
        }
        tracing::info!(trigger = %self.trigger, missed = count, latest = %rfc3339(latest),
            "firing once for runs missed while the trigger was not running");
        self.fire(sink, self.fire_event(latest, Some(count)), latest).await
    }
}

#[async_trait]
impl Source for CronSource {
    async fn run(&self, sink: EventSink, cancel: CancellationToken) -> Result<(), SourceError> {
        let mut after = self.clock.now();
        if self.state.durable() {
            let caught_up = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                caught_up = self.catch_up(&sink, after) => caught_up?,
            };
            if !caught_up {
                return Ok(());
            }
        }
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
            let event = self.fire_event(next, None);
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                sent = self.fire(&sink, event, next) => if !sent? { return Ok(()) },
            }
            // No catch-up: continue after whichever is later, this occurrence or the current time.
            after = self.clock.now().max(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_store::MapStore;
    use ktrigger_core::{Envelope, SharedEvent, SourceFactory, TriggerId, TypedSource, parse_properties};
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;

    fn context() -> BuildContext {
        BuildContext::new(TriggerId { namespace: String::new(), service: "s".into(), trigger: "t".into() })
    }

    fn load(properties: Value) -> Result<Arc<dyn Source>, PropertyError> {
        TypedSource::new(CronFactory).build(&properties, &context())
    }

    fn load_error(properties: Value) -> String {
        load(properties).err().expect("the properties should be refused").to_string()
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    /// Runs a source whose wall clock starts at `start` and follows tokio's (paused) clock.
    fn start(
        schedule: &str,
        zone: Option<&str>,
        start: &str,
    ) -> (mpsc::Receiver<ktrigger_core::Envelope>, CancellationToken) {
        let clock = Clock::Anchored { wall: at(start), at: Instant::now() };
        let source = CronSource::new(schedule, zone, clock).unwrap();
        let (sink, events) = EventSink::channel(4);
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        tokio::spawn(async move { source.run(sink, token).await });
        (events, cancel)
    }

    async fn next_scheduled(events: &mut mpsc::Receiver<ktrigger_core::Envelope>) -> String {
        let event = events.recv().await.unwrap().event;
        assert_eq!((event.meta.source.as_str(), event.meta.event_type.as_str()), ("cron", "fire"));
        event.object["scheduledTime"].as_str().unwrap().to_string()
    }

    #[test]
    fn five_and_six_field_schedules_and_the_alias_load() {
        assert!(load(json!({"schedule": "*/5 * * * *"})).is_ok());
        assert!(load(json!({"schedule": "30 */5 * * * *"})).is_ok());
        assert!(load(json!({"schedule": "@hourly", "timeZone": "Asia/Tokyo"})).is_ok());
        assert_eq!(TypedSource::new(CronFactory).doc().aliases, ["cronjob"]);
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
        let event = events.recv().await.unwrap().event;
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
        let event = events.recv().await.unwrap().event;
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
    fn missed_run_properties_are_checked_naming_the_field() {
        let ok = json!({"schedule": "* * * * *", "missedRuns": "skip", "startingDeadline": "90s"});
        assert!(load(ok).is_ok());
        let err = load_error(json!({"schedule": "* * * * *", "missedRuns": "all"}));
        assert!(err.starts_with("properties.missedRuns: unknown variant `all`, expected `skip` or `once`"), "{err}");
        let err = load_error(json!({"schedule": "* * * * *", "startingDeadline": "soon"}));
        assert!(err.starts_with("properties.startingDeadline: invalid duration"), "{err}");
        let err = load_error(json!({"schedule": "* * * * *", "startingDeadline": "31d"}));
        assert!(err.starts_with("properties.startingDeadline: "), "{err}");
        let err = load_error(json!({"schedule": "* * * * *", "startingDeadline": "0s"}));
        assert!(err.starts_with("properties.startingDeadline: duration \"0s\" must be greater than zero"), "{err}");
    }

    const LAST_RUN: &str = "/s/t/source/lastRun";

    /// Runs trigger `s/t` with `properties` over `store`, its wall clock starting at `start`.
    fn run_durable(
        properties: Value,
        start: &str,
        store: &Arc<MapStore>,
    ) -> (mpsc::Receiver<Envelope>, CancellationToken, JoinHandle<Result<(), SourceError>>) {
        let context = BuildContext { state: MapStore::source_state(store), ..context() };
        let clock = Clock::Anchored { wall: at(start), at: Instant::now() };
        let source = CronSource::configured(parse_properties(&properties).unwrap(), &context, clock).unwrap();
        let (sink, events) = EventSink::channel(4);
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let cancel = cancel.clone();
            async move { source.run(sink, cancel).await }
        });
        (events, cancel, task)
    }

    /// The next event, answered as fired.
    async fn next_fired(events: &mut mpsc::Receiver<Envelope>) -> SharedEvent {
        let envelope = events.recv().await.unwrap();
        let event = envelope.event.clone();
        envelope.answer(Handled::Fired);
        event
    }

    /// Waits (briefly, on the paused clock) until the stored last run is `expected`.
    async fn wait_for_last_run(store: &MapStore, expected: &str) {
        for _ in 0..100 {
            if store.text(LAST_RUN).as_deref() == Some(expected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("last run {:?}, expected {expected}", store.text(LAST_RUN));
    }

    /// Runs `* * * * *` from 00:00:30 until its 00:01 run is recorded, then stops it.
    async fn one_recorded_run(store: &Arc<MapStore>, properties: &Value) {
        let (mut events, cancel, task) = run_durable(properties.clone(), "2026-01-01T00:00:30Z", store);
        assert_eq!(next_fired(&mut events).await.object["scheduledTime"], "2026-01-01T00:01:00Z");
        wait_for_last_run(store, "2026-01-01T00:01:00Z").await;
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn once_fires_one_event_for_three_missed_runs() {
        let store = Arc::new(MapStore::default());
        let properties = json!({"schedule": "* * * * *"});
        one_recorded_run(&store, &properties).await;

        // Stopped until 00:04:30: the runs of 00:02, 00:03 and 00:04 were missed.
        let (mut events, cancel, _task) = run_durable(properties, "2026-01-01T00:04:30Z", &store);
        let missed = next_fired(&mut events).await;
        assert_eq!(missed.object["scheduledTime"], "2026-01-01T00:04:00Z");
        assert_eq!(missed.object["firedTime"], "2026-01-01T00:04:30Z");
        assert_eq!(missed.object["missedRuns"], 3);
        assert_eq!(missed.meta.id, stable_id(&["s/t", "2026-01-01T00:04:00Z"]));
        wait_for_last_run(&store, "2026-01-01T00:04:00Z").await;
        let next = next_fired(&mut events).await;
        assert_eq!(next.object["scheduledTime"], "2026-01-01T00:05:00Z");
        assert!(next.object.get("missedRuns").is_none());
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn skip_fires_no_missed_run() {
        let store = Arc::new(MapStore::default());
        let properties = json!({"schedule": "* * * * *", "missedRuns": "skip"});
        one_recorded_run(&store, &properties).await;

        let (mut events, cancel, _task) = run_durable(properties, "2026-01-01T00:04:30Z", &store);
        wait_for_last_run(&store, "2026-01-01T00:04:00Z").await;
        assert_eq!(next_fired(&mut events).await.object["scheduledTime"], "2026-01-01T00:05:00Z");
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_missed_run_older_than_the_starting_deadline_is_skipped() {
        let store = Arc::new(MapStore::default());
        let properties = json!({"schedule": "* * * * *", "startingDeadline": "20s"});
        one_recorded_run(&store, &properties).await;

        // The latest missed run, 00:09, is 30s late.
        let (mut events, cancel, _task) = run_durable(properties, "2026-01-01T00:09:30Z", &store);
        let first = next_fired(&mut events).await;
        assert_eq!(first.object["scheduledTime"], "2026-01-01T00:10:00Z");
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_the_trigger_could_not_store_fires_again_as_missed() {
        let store = Arc::new(MapStore::default());
        let properties = json!({"schedule": "* * * * *"});
        let (mut events, _cancel, task) = run_durable(properties.clone(), "2026-01-01T00:00:30Z", &store);
        wait_for_last_run(&store, "2026-01-01T00:00:30Z").await;
        let refused = events.recv().await.unwrap();
        let id = refused.event.meta.id.clone();
        refused.answer(Handled::NotStored("queue full".into()));
        let error = task.await.unwrap().unwrap_err();
        assert!(error.0.contains("not stored: queue full"), "{error}");
        assert_eq!(store.text(LAST_RUN).as_deref(), Some("2026-01-01T00:00:30Z"));

        let (mut events, cancel, _task) = run_durable(properties, "2026-01-01T00:01:10Z", &store);
        let again = next_fired(&mut events).await;
        assert_eq!((again.meta.id.as_str(), &again.object["missedRuns"]), (id.as_str(), &json!(1)));
        cancel.cancel();
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
