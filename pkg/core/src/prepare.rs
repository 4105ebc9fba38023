//! Turning a TriggerService spec into ready-to-run triggers: every source, filter, dedup key,
//! template and destination is checked and compiled here, once, before anything runs.

use std::collections::HashMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use ktrigger_api::{DestinationSpec, Trigger, TriggerServiceSpec, parse_duration, trigger_names, validate_spec};

use crate::cel::CelExpr;
use crate::delivery::{Flow, RetryPolicy, Target};
use crate::event::TriggerId;
use crate::registry::{BuildContext, Registry, Source, SourceNeeds};
use crate::secrets::ClusterSecrets;
use crate::state::{SourceState, StateStore};

/// A trigger whose every part compiled.
pub struct PreparedTrigger {
    /// Which trigger this is.
    pub id: TriggerId,
    /// Hash of the trigger's spec, the service identity and the Secret values it uses: a change
    /// means a restart.
    pub hash: u64,
    /// The source type as written.
    pub source_type: String,
    /// The running part of the source.
    pub source: Arc<dyn Source>,
    /// The filter, when there is one.
    pub filter: Option<CelExpr>,
    /// The dedup key expression and window.
    pub dedup: Option<(CelExpr, Duration)>,
    /// Events per minute and burst.
    pub rate_limit: Option<(u32, Option<u32>)>,
    /// Quiet period before firing.
    pub debounce: Option<Duration>,
    /// Destinations with their retry policies and flows.
    pub targets: Vec<Target>,
    /// Where deliveries that fail for good go.
    pub dead_letter: Option<Target>,
}

impl fmt::Debug for PreparedTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedTrigger").field("id", &self.id).field("source_type", &self.source_type).finish()
    }
}

impl PreparedTrigger {
    /// `cron → log, webhook`: a one-line summary for `run`'s start-up report.
    pub fn summary(&self) -> String {
        let targets: Vec<&str> = self.targets.iter().map(|t| t.label.as_str()).collect();
        let filter = if self.filter.is_some() { " (with filter)" } else { "" };
        format!("{}{filter} → {}", self.source_type, targets.join(", "))
    }
}

/// Why a trigger could not be prepared: every problem found, each naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerProblem {
    /// The trigger.
    pub id: TriggerId,
    /// The problems, e.g. `triggers[0].filter: line 1, column 8: ...`.
    pub messages: Vec<String>,
}

impl fmt::Display for TriggerProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "trigger {}: {}", self.id, self.messages.join("; "))
    }
}

/// Prepares every trigger of one TriggerService, with the values of the Secrets it refers to
/// already read into `secrets`; sources keep their position in `store`. Problems in one trigger
/// never stop the others.
pub fn prepare_service(
    registry: &Registry,
    namespace: &str,
    service: &str,
    spec: &TriggerServiceSpec,
    dry_run: bool,
    secrets: &ClusterSecrets,
    store: &Arc<dyn StateStore>,
) -> (Vec<PreparedTrigger>, Vec<TriggerProblem>) {
    let names = trigger_names(spec);
    let mut spec_errors: HashMap<String, Vec<String>> = HashMap::new();
    for error in validate_spec(spec) {
        spec_errors.entry(error.trigger.clone()).or_default().push(format!("{}: {}", error.field, error.message));
    }
    let mut prepared = Vec::new();
    let mut problems = Vec::new();
    for (index, (trigger, name)) in spec.triggers.iter().zip(names).enumerate() {
        let id = TriggerId { namespace: namespace.to_string(), service: service.to_string(), trigger: name };
        let mut messages = spec_errors.remove(&id.trigger).unwrap_or_default();
        if messages.is_empty() {
            let context = BuildContext {
                trigger: id.clone(),
                dry_run,
                service_account: spec.service_account_name.clone(),
                secrets: secrets.clone(),
                state: SourceState::new(store.clone(), &id),
                needs: SourceNeeds::default(),
            };
            let mut builder = Builder { registry, prefix: format!("triggers[{index}]"), messages: &mut messages };
            if let Some(ready) = builder.trigger(trigger, &context, spec) {
                prepared.push(ready);
                continue;
            }
        }
        problems.push(TriggerProblem { id, messages });
    }
    (prepared, problems)
}

struct Builder<'a> {
    registry: &'a Registry,
    prefix: String,
    messages: &'a mut Vec<String>,
}

impl Builder<'_> {
    fn fail(&mut self, field: &str, message: impl fmt::Display) {
        self.messages.push(format!("{}.{field}: {message}", self.prefix));
    }

    fn trigger(
        &mut self,
        trigger: &Trigger,
        context: &BuildContext,
        spec: &TriggerServiceSpec,
    ) -> Option<PreparedTrigger> {
        let filter = match trigger.filter.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(source) => {
                CelExpr::filter(source).map_err(|e| self.fail("filter", format!("{e} in {:?}", excerpt(source)))).ok()
            }
        };
        let dedup = trigger.dedup.as_ref().and_then(|dedup| {
            let key = CelExpr::filter(&dedup.key).map_err(|e| self.fail("dedup.key", e)).ok()?;
            Some((key, parse_duration(&dedup.window).ok()?))
        });
        let per_object = PER_OBJECT_SOURCES.contains(&trigger.source.type_name.as_str());
        let targets: Vec<Target> = trigger
            .destinations
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("destinations[{i}]"), d))
            .chain(trigger.action.iter().map(|d| ("action".to_string(), d)))
            .enumerate()
            .filter_map(|(position, (field, spec))| self.target(&field, position, spec, context, per_object))
            .collect();
        let dead_letter =
            trigger.dead_letter.as_ref().and_then(|d| self.target("deadLetter", 0, d, context, per_object));
        let needs = SourceNeeds {
            old_object: filter.as_ref().is_some_and(CelExpr::uses_old_object)
                || dedup.as_ref().is_some_and(|(key, _)| key.uses_old_object())
                || trigger
                    .destinations
                    .iter()
                    .chain(&trigger.action)
                    .chain(&trigger.dead_letter)
                    .any(mentions_old_object),
        };
        let source = self.source(trigger, context, needs);
        if !self.messages.is_empty() {
            return None;
        }
        Some(PreparedTrigger {
            id: context.trigger.clone(),
            hash: spec_hash(trigger, spec, &context.secrets),
            source_type: trigger.source.type_name.clone(),
            source: source?,
            filter,
            dedup,
            rate_limit: trigger.rate_limit.as_ref().map(|r| (r.per_minute, r.burst)),
            debounce: trigger.debounce.as_deref().and_then(|d| parse_duration(d).ok()),
            targets,
            dead_letter,
        })
    }

    fn source(&mut self, trigger: &Trigger, context: &BuildContext, needs: SourceNeeds) -> Option<Arc<dyn Source>> {
        let type_name = &trigger.source.type_name;
        let Some(factory) = self.registry.source(type_name) else {
            self.fail("source.type", self.registry.unknown_type("source", type_name));
            return None;
        };
        let context = BuildContext { needs, ..context.clone() };
        factory
            .build(&trigger.source.properties, &context)
            .map_err(|e| self.fail(&format!("source.{}", e.field()), e.message))
            .ok()
    }

    fn target(
        &mut self,
        field: &str,
        position: usize,
        spec: &DestinationSpec,
        context: &BuildContext,
        per_object: bool,
    ) -> Option<Target> {
        let type_name = &spec.type_name;
        let Some(factory) = self.registry.destination(type_name) else {
            self.fail(&format!("{field}.type"), self.registry.unknown_type("destination", type_name));
            return None;
        };
        let destination = factory
            .build(&spec.properties, context)
            .map_err(|e| self.fail(&format!("{field}.{}", e.field()), e.message))
            .ok()?;
        let policy = RetryPolicy::from_spec(spec).map_err(|e| self.fail(field, e)).ok()?;
        let flow = Flow::from_spec(spec, per_object).map_err(|e| self.fail(field, e)).ok()?;
        if flow.batch.is_some() && !destination.batches() {
            self.fail(
                &format!("{field}.batch"),
                format!(
                    "the {type_name} destination cannot send several deliveries in one request (webhook and log can)"
                ),
            );
            return None;
        }
        let label = format!("{type_name}#{position}");
        Some(Target { label, destination, policy, flow })
    }
}

/// Source types whose events are changes of Kubernetes objects: their destinations keep the
/// order of each object's deliveries unless told otherwise.
const PER_OBJECT_SOURCES: &[&str] = &["resource-watcher", "k8s-events"];

/// Most characters of an expression quoted in an error message.
const EXCERPT: usize = 100;

/// `source`, cut to [`EXCERPT`] characters with `...` when longer: an error quotes the expression
/// it is about without repeating kilobytes of it.
fn excerpt(source: &str) -> String {
    match source.char_indices().nth(EXCERPT) {
        Some((cut, _)) => format!("{}...", &source[..cut]),
        None => source.to_owned(),
    }
}

/// Whether a destination's properties (its templates) mention `oldObject`. Destinations compile
/// their templates themselves, so this looks at the text: a mention that is not a read only costs
/// the memory of keeping previous objects.
fn mentions_old_object(spec: &DestinationSpec) -> bool {
    serde_json::to_string(&spec.properties).is_ok_and(|text| text.contains("oldObject"))
}

fn spec_hash(trigger: &Trigger, spec: &TriggerServiceSpec, secrets: &ClusterSecrets) -> u64 {
    let mut hasher = DefaultHasher::new();
    serde_json::to_string(trigger).unwrap_or_default().hash(&mut hasher);
    spec.service_account_name.hash(&mut hasher);
    secrets.hash_for(trigger, &mut hasher);
    hasher.finish()
}
