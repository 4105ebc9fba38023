//! The CLI end to end: validate, eval, crd, sources/destinations, dry-run and bad input.

mod support;

use std::time::Duration;

use support::{Running, example_env, example_files, ktrigger, repo, write_config};

fn output(args: &[&str]) -> (i32, String, String) {
    let out = ktrigger().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn every_example_validates() {
    let mut command = ktrigger();
    command.arg("validate");
    for file in example_files() {
        command.arg("-f").arg(file);
    }
    // Examples read credentials from `{env: NAME}`: give each variable a placeholder value.
    command.envs(example_env());
    let out = command.output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("no problems"), "{stdout}");
    assert!(!stderr.contains("warning"), "examples hold only TriggerServices: {stderr}");
}

#[test]
fn validate_works_offline_with_unset_credentials_as_warnings_unless_strict() {
    let mut command = ktrigger();
    command.arg("validate");
    for file in example_files() {
        command.arg("-f").arg(file);
    }
    for (name, _) in example_env() {
        command.env_remove(name);
    }
    let out = command.output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("no problems"), "{stdout}");
    assert!(
        stderr.contains(
            "warning: environment variable SLACK_WEBHOOK_URL cannot be read here; it is read when the triggers run"
        ),
        "{stderr}"
    );

    command.arg("--strict");
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("properties.webhookUrlFrom: environment variable SLACK_WEBHOOK_URL is not set"),
        "{stdout}"
    );
}

#[test]
fn upstream_kube_trigger_cron_file_validates() {
    let file = repo().join("tests/upstream/kube-trigger/conf-cronjob.yaml");
    let (code, stdout, _) = output(&["validate", "-f", file.to_str().unwrap()]);
    // The upstream file has an empty `action:` (a TODO): reported, not accepted silently.
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout
            .contains("trigger conf-cronjob/trigger-0: triggers[0].destinations: at least one destination is required"),
        "{stdout}"
    );
}

const BAD: &str = r#"
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {name: bad}
spec:
  triggers:
  - name: bad-cel
    source: {type: cron, properties: {schedule: "* * * * *"}}
    filter: 'object.count >'
    destinations: [{type: log}]
  - name: bad-cron
    source: {type: cron, properties: {schedule: "every minute"}}
    destinations: [{type: log}]
  - name: bad-template
    source: {type: cron, properties: {schedule: "* * * * *"}}
    destinations: [{type: log, properties: {message: "{{ pod.name }}"}}]
  - name: unknown-types
    source: {type: carrier-pigeon}
    destinations: [{type: fax}]
  - name: missing-url
    source: {type: cron, properties: {schedule: "* * * * *"}}
    destinations: [{type: webhook}]
  - name: unknown-variable
    source: {type: cron, properties: {schedule: "* * * * *"}}
    filter: 'pod.name == "x"'
    destinations: [{type: log}]
  - name: fine
    source: {type: cron, properties: {schedule: "*/1 * * * * *"}}
    destinations: [{type: log}]
"#;

#[test]
fn validate_lists_every_problem_with_trigger_and_field() {
    let (_dir, path) = write_config(BAD);
    let (code, stdout, _) = output(&["validate", "-f", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}");
    let expect = [
        "trigger bad/bad-cel: triggers[0].filter: line 1, column",
        "trigger bad/bad-cron: triggers[1].source: properties.schedule:",
        "trigger bad/bad-template: triggers[2].destinations[0]: properties.message: unknown variable(s) pod",
        "trigger bad/unknown-types: triggers[3].destinations[0].type: unknown destination type \"fax\"",
        "unknown source type \"carrier-pigeon\"; known types: cron, http-poller, k8s-events, resource-watcher, webhook",
        "trigger bad/missing-url: triggers[4].destinations[0]: properties",
        "trigger bad/unknown-variable: triggers[5].filter:",
        "6 problem(s) found",
    ];
    for needle in expect {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("bad/fine"), "{stdout}");
}

#[test]
fn run_skips_invalid_triggers_and_runs_the_rest() {
    let (_dir, path) = write_config(BAD);
    let running = Running::start(&["-f", path.to_str().unwrap()]);
    let stderr = running.stderr.text();
    assert!(stderr.contains("loaded  trigger bad/fine: cron → log#0"), "{stderr}");
    assert_eq!(stderr.matches("skipped trigger bad/").count(), 6, "{stderr}");
    running.stdout.wait_for("\"trigger\":\"bad/fine\"", Duration::from_secs(30));
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn malformed_yaml_names_the_file_and_document() {
    let (_dir, path) = write_config("triggers:\n  - source: {type: cron\n");
    let (code, stdout, _) = output(&["validate", "-f", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stdout.contains(&format!("error: {}: document 1: invalid YAML", path.display())), "{stdout}");
    let (code, _, stderr) = output(&["run", "-f", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no TriggerService to run"), "{stderr}");
}

#[test]
fn eval_reports_ints_bools_and_errors() {
    let (_dir, path) = write_config("object: {count: 3, metadata: {name: web-1}}\nevent: {type: update}\n");
    let event = path.to_str().unwrap();
    let (code, stdout, _) =
        output(&["eval", "--filter", "object.count + 1 == 4 && event.type == 'update'", "--event", event]);
    assert_eq!((code, stdout.trim()), (0, "true"));
    let (code, stdout, _) =
        output(&["eval", "--filter", "context.data.metadata.name.startsWith('db')", "--event", event]);
    assert_eq!((code, stdout.trim()), (1, "false"));
    let (code, stdout, _) = output(&["eval", "--filter", "object.nope > 1", "--event", event]);
    assert_eq!(code, 1);
    assert!(stdout.starts_with("not matched: evaluation error:"), "{stdout}");
    let (code, stdout, _) = output(&["eval", "--filter", "object.count", "--event", event]);
    assert_eq!(code, 1);
    assert!(stdout.contains("3\nnot matched: the result is not a bool"), "{stdout}");
    let (code, stdout, _) = output(&["eval", "--filter", "pod.name == 'x'", "--event", event]);
    assert_eq!(code, 2);
    assert!(stdout.contains("invalid filter:") && stdout.contains("pod"), "{stdout}");
}

#[test]
fn crd_command_prints_the_committed_crd() {
    let (code, stdout, _) = output(&["crd"]);
    assert_eq!(code, 0);
    let committed = std::fs::read_to_string(repo().join("config/crd/ktrigger.dev_triggerservices.yaml")).unwrap();
    assert_eq!(stdout, committed);
}

#[test]
fn type_listings_document_every_property_with_an_example() {
    let (_, sources, _) = output(&["sources"]);
    for name in ["cron (also: cronjob)", "http-poller", "webhook", "schedule (required)", "example:"] {
        assert!(sources.contains(name), "missing {name:?} in:\n{sources}");
    }
    let (_, destinations, _) = output(&["destinations"]);
    for name in ["log", "webhook", "url (required)", "example:"] {
        assert!(destinations.contains(name), "missing {name:?} in:\n{destinations}");
    }
}

#[test]
fn dry_run_prints_each_decision_and_what_would_be_sent() {
    let config = r#"
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {name: dry}
spec:
  triggers:
  - name: failed-only
    source: {type: webhook, properties: {path: /hook}}
    filter: 'object.status == "failed"'
    destinations:
    - type: webhook
      properties: {url: "http://127.0.0.1:9/never-called"}
"#;
    let (_dir, path) = write_config(config);
    let running = Running::start(&["-f", path.to_str().unwrap(), "--dry-run"]);
    assert!(running.stderr.text().contains("dry run: no destination is called"));
    let url = format!("{}/hook", running.webhook_url());
    support::post(&url, &[("Content-Type", "application/json")], r#"{"status": "ok"}"#);
    support::post(&url, &[("Content-Type", "application/json")], r#"{"status": "failed"}"#);
    let stdout = running.stdout.wait_until("two decisions", Duration::from_secs(30), |t| t.lines().count() >= 2);
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["matched"], false);
    assert_eq!(lines[0]["reason"], "filter returned false");
    assert_eq!(lines[1]["matched"], true);
    assert_eq!(lines[1]["destination"], "webhook#0");
    assert_eq!(lines[1]["wouldSend"]["body"]["data"]["object"]["status"], "failed", "{}", lines[1]);
    assert_eq!(running.stop(), Some(0));
}

#[test]
fn validate_knows_the_presets_of_an_event_mappings_file() {
    let (_dir, config) = write_config(
        "triggers:\n- source: {type: k8s-events, properties: {presets: [crash-storm]}}\n  action: {type: log}\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let mappings = dir.path().join("mappings.yaml");
    std::fs::write(&mappings, "mappings:\n- name: crash-storm\n  condition: object.count >= 5\n").unwrap();

    let (code, stdout, _) = output(&["validate", "-f", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("crash-storm"), "the unknown preset is named: {stdout}");

    let (code, stdout, stderr) =
        output(&["validate", "-f", config.to_str().unwrap(), "--event-mappings", mappings.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("no problems"), "{stdout}");

    std::fs::write(&mappings, "mappings:\n- name: broken\n  condition: 'object.count >='\n").unwrap();
    let (code, stdout, stderr) =
        output(&["validate", "-f", config.to_str().unwrap(), "--event-mappings", mappings.to_str().unwrap()]);
    assert_ne!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("broken"), "a bad mappings file is named with the preset: {stderr}");
}
