//! The TriggerService CRD's validation rules end to end: the real `kubectl` applies
//! TriggerServices, and the API server (the test cluster, or the cluster of
//! `KTRIGGER_TEST_KUBECONFIG`) refuses those that break a rule, with the rule's message.

mod support;

use support::cluster::Env;
use support::write_config;

/// `kubectl apply` of `yaml` in the test's namespace: whether it succeeded, and its output.
fn apply(env: &Env, yaml: &str) -> (bool, String) {
    let (_dir, path) = write_config(yaml);
    env.kubectl(&["apply", "-n", &env.namespace, "-f", path.to_str().unwrap()])
}

/// A TriggerService called `name` with the `triggers` given as YAML list items.
fn service(name: &str, triggers: &[&str]) -> String {
    let mut yaml = format!(
        "apiVersion: ktrigger.dev/v1alpha1\nkind: TriggerService\nmetadata:\n  name: {name}\nspec:\n  triggers:\n"
    );
    for trigger in triggers {
        yaml.push_str(&format!("  - {trigger}\n"));
    }
    yaml
}

const SOURCE: &str = r#"source: {type: cron, properties: {schedule: "* * * * *"}}"#;

fn named(name: &str) -> String {
    format!("{{name: {name}, {SOURCE}, destinations: [{{type: log}}]}}")
}

/// Applies `yaml`, expects a refusal of TriggerService `name` naming `field` and `message`.
fn assert_refused(env: &Env, name: &str, yaml: &str, field: &str, message: &str) {
    let (ok, text) = apply(env, yaml);
    assert!(!ok, "TriggerService {name} was accepted: {text}");
    assert!(text.contains(&format!("The TriggerService \"{name}\" is invalid")), "{text}");
    assert!(text.contains(&format!("{field}: ")), "the refusal names {field}: {text}");
    assert!(text.contains(message), "the refusal says {message:?}: {text}");
}

#[test]
fn trigger_services_that_break_a_rule_are_refused_with_its_message() {
    let env = Env::new("crd-rules");
    env.install_trigger_service_crd();

    let unnamed_action = format!("{{{SOURCE}, action: {{type: log}}}}");
    let (ok, text) = apply(&env, &service("valid", &[&named("tick"), &named("tock"), &unnamed_action]));
    assert!(ok, "a valid TriggerService is accepted: {text}");

    let duplicate = service("duplicate", &[&named("tick"), &named("tick")]);
    assert_refused(&env, "duplicate", &duplicate, "spec.triggers", "trigger names must be unique");

    let lonely = format!("{{name: lonely, {SOURCE}}}");
    let no_destination = service("no-destination", &[&lonely]);
    let message = "at least one destination is required";
    assert_refused(&env, "no-destination", &no_destination, "spec.triggers[0].destinations", message);

    // The unnamed trigger at index 0 is called trigger-0.
    let taken = service("taken", &[&unnamed_action, &named("trigger-0")]);
    let message = "trigger names must be unique: an unnamed trigger is named trigger-<index>";
    assert_refused(&env, "taken", &taken, "spec.triggers", message);

    let (ok, text) = env.kubectl(&["get", "triggerservices", "-n", &env.namespace, "-o", "name"]);
    assert!(ok, "{text}");
    assert_eq!(text.trim(), "triggerservice.ktrigger.dev/valid", "only the valid TriggerService was stored");
}
