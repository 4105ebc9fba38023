//! kube-trigger TriggerServices (`standard.oam.dev/v1alpha1`) and `triggers:` files converted
//! into ktrigger specs: CUE filters into CEL, `action` into `destinations`, and every setting
//! ktrigger does not keep reported.

use ktrigger_api::{DestinationSpec, Trigger, TriggerServiceSpec};
use serde_json::json;

use crate::{Note, cue};

/// kube-trigger's API group and version.
pub const API_VERSION: &str = "standard.oam.dev/v1alpha1";

/// kube-trigger actions that have no ktrigger destination, and what they did.
const UNSUPPORTED_ACTIONS: [(&str, &str); 1] = [("sae-record-event", "recorded the event for Alibaba Cloud SAE")];

/// `spec` rewritten for ktrigger, with a note for every place where the meaning changes.
/// `in_cluster` says whether it came from a TriggerService object (namespaced, in the controller).
pub fn convert_spec(spec: &TriggerServiceSpec, document: usize, in_cluster: bool) -> (TriggerServiceSpec, Vec<Note>) {
    let mut notes = Vec::new();
    if let Some(worker) = &spec.worker {
        notes.push(Note::new(
            document,
            None,
            "spec.worker",
            &format!(
                "kube-trigger's worker settings ({}) are dropped: ktrigger runs every trigger in its own task, \
                 with a delivery queue per destination, and has no worker pool to size",
                compact(worker)
            ),
        ));
    }
    let names = ktrigger_api::trigger_names(spec);
    let triggers = spec
        .triggers
        .iter()
        .zip(names)
        .enumerate()
        .map(|(index, (trigger, name))| convert_trigger(trigger, &name, index, document, in_cluster, &mut notes))
        .collect();
    (TriggerServiceSpec { triggers, service_account_name: spec.service_account_name.clone(), worker: None }, notes)
}

fn convert_trigger(
    trigger: &Trigger,
    name: &str,
    index: usize,
    document: usize,
    in_cluster: bool,
    notes: &mut Vec<Note>,
) -> Trigger {
    let mut note = |field: &str, message: String| {
        notes.push(Note::new(document, Some(name), &format!("triggers[{index}].{field}"), &message))
    };
    let mut refusals = Vec::new();
    let mut out = trigger.clone();
    out.name = Some(name.to_string());
    if out.source.type_name == "cronjob" {
        out.source.type_name = "cron".into();
    }
    if out.source.type_name == "resource-watcher"
        && let Some(properties) = out.source.properties.as_object_mut()
    {
        if let Some(clusters) = properties.remove("clusters") {
            let local_only = clusters.as_array().is_some_and(|c| c.iter().all(|c| c.as_str() == Some("local")));
            if !local_only {
                note(
                    "source.properties.clusters",
                    format!(
                        "watching other clusters ({}) is not supported yet; the converted trigger watches \
                         only the cluster ktrigger runs in",
                        compact(&clusters)
                    ),
                );
            }
        }
        let namespaced = properties.get("namespace").and_then(|n| n.as_str()).is_some_and(|n| !n.is_empty());
        if in_cluster && !namespaced {
            note(
                "source.properties.namespace",
                "absent: kube-trigger watched every namespace; the ktrigger controller does too only when the \
                 TriggerService's identity may (serviceAccountName), else its own namespace"
                    .into(),
            );
        }
    }
    out.filter = match trigger.filter.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => match cue::translate(text) {
            Ok(translation) => {
                if translation.cel != text {
                    note("filter", format!("CUE {text:?} translated to CEL {:?}", translation.cel));
                }
                for extra in translation.notes {
                    note("filter", extra);
                }
                Some(translation.cel)
            }
            Err(reason) => {
                let message =
                    format!("not translated ({reason}); the CUE text is kept for you to rewrite in CEL: {text:?}");
                refusals.push(Note::refusal(document, Some(name), &format!("triggers[{index}].filter"), &message));
                Some(text.to_string())
            }
        },
    };
    let mut destinations: Vec<DestinationSpec> = trigger.destinations.clone();
    match &trigger.action {
        Some(action) => destinations.push(convert_action(action, &mut note)),
        None if destinations.is_empty() => {
            note(
                "action",
                "absent: kube-trigger did nothing with the events; the converted trigger logs them (type: log)".into(),
            );
            destinations.push(DestinationSpec { type_name: "log".into(), ..Default::default() });
        }
        None => {}
    }
    out.destinations = destinations;
    out.action = None;
    notes.extend(refusals);
    out
}

fn convert_action(action: &DestinationSpec, note: &mut impl FnMut(&str, String)) -> DestinationSpec {
    let mut out = action.clone();
    if out.type_name == "task" {
        out.type_name = "job".into();
    }
    if let Some((kind, did)) = UNSUPPORTED_ACTIONS.iter().find(|(kind, _)| *kind == action.type_name) {
        note(
            "action.type",
            format!(
                "{kind} is not supported (kube-trigger {did}); the converted trigger logs the event instead \
                 (type: log) and its properties ({}) are dropped",
                compact(&action.properties)
            ),
        );
        out = DestinationSpec { type_name: "log".into(), properties: json!(null), ..Default::default() };
    }
    out
}

/// A value as one line of JSON, cut short, for a note.
fn compact(value: &serde_json::Value) -> String {
    let mut text = value.to_string();
    if text.len() > 200 {
        let mut cut = 197;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}
