//! Bounded evaluation end to end: `ktrigger run` with bomb triggers (filters, templates and
//! durations that used to crash or stall the process) beside an unrelated webhook trigger. Each
//! bomb is refused at load or contained with a clear reason, and the unrelated trigger keeps
//! delivering.

mod support;

use std::time::{Duration, Instant};

use support::{Running, ktrigger, post, write_config};

/// The bombs, and `healthy`, which has nothing to do with them.
fn config() -> String {
    let sum = vec!["1"; 1500].join("+");
    let long_sum = vec!["1"; 20_000].join("+");
    let items: Vec<String> = (0..300).map(|i| i.to_string()).collect();
    let list = format!("[{}]", items.join(","));
    format!(
        r#"
apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {{name: tenant}}
spec:
  triggers:
  - name: sum-3kb
    source: {{type: webhook, properties: {{path: /sum}}}}
    filter: '{sum} > 0'
    destinations: [{{type: log}}]
  - name: sum-40kb
    source: {{type: webhook, properties: {{path: /long-sum}}}}
    filter: '{long_sum} > 0'
    destinations: [{{type: log}}]
  - name: nested-maps
    source: {{type: webhook, properties: {{path: /maps}}}}
    filter: 'size({list}.map(a, {list}.map(b, {list}.map(c, a + b + c)))) > 0'
    destinations: [{{type: log}}]
  - name: huge-debounce
    source: {{type: webhook, properties: {{path: /debounce}}}}
    debounce: 500000000000y
    destinations: [{{type: log}}]
  - name: loop-over-data
    source: {{type: webhook, properties: {{path: /loop}}}}
    filter: 'object.items.all(a, object.items.exists(b, b == a))'
    destinations: [{{type: log}}]
  - name: template-loop
    source: {{type: webhook, properties: {{path: /template}}}}
    destinations:
    - type: log
      properties:
        message: '{{% for i in range(100000) %}}{{% for j in range(100000) %}}x{{% endfor %}}{{% endfor %}}'
      retry: {{maxAttempts: 1}}
  - name: near-limit
    source: {{type: webhook, properties: {{path: /near-limit}}}}
    filter: 'size(lists.range(500000)) > 0'
    destinations: [{{type: log}}]
  - name: healthy
    source: {{type: webhook, properties: {{path: /healthy}}}}
    destinations: [{{type: log, properties: {{message: 'healthy {{{{ object.n }}}}'}}}}]
"#
    )
}

#[test]
fn validate_refuses_each_bomb_with_the_trigger_and_field() {
    let (_dir, path) = write_config(&config());
    let out = ktrigger().args(["validate", "-f", path.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for expected in [
        "trigger sum-3kb: spec.triggers[0].filter: line 1, column 1: expression is nested too deeply",
        "trigger sum-40kb: spec.triggers[1].filter: line 1, column 1: expression is 40003 bytes long; the limit is 4096",
        "trigger nested-maps: spec.triggers[2].filter: line 1, column 1: estimated cost",
        "trigger huge-debounce: spec.triggers[3].debounce: duration \"500000000000y\" is longer than the maximum of 30 days",
        "4 problem(s) found",
    ] {
        assert!(stdout.contains(expected), "{expected}\n{stdout}");
    }
    assert!(stdout.len() < 4000, "errors quote long expressions in full: {} bytes", stdout.len());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("trigger near-limit: spec.triggers[6].filter: estimated cost "), "{stderr}");
    assert!(stderr.contains(" of the limit 1000000"), "{stderr}");
}

#[test]
fn bombs_are_refused_or_contained_and_an_unrelated_webhook_trigger_keeps_delivering() {
    let (_dir, path) = write_config(&config());
    let running = Running::start(&["-f", path.to_str().unwrap()]);
    let report = running.stderr.wait_for("ktrigger running", Duration::from_secs(30));
    for skipped in [
        "skipped trigger tenant/sum-3kb",
        "skipped trigger tenant/sum-40kb",
        "skipped trigger tenant/nested-maps",
        "skipped trigger tenant/huge-debounce",
    ] {
        assert!(report.contains(skipped), "{skipped}\n{report:.4000}");
    }
    let base = running.webhook_url();
    let items: Vec<i64> = (0..3000).collect();
    let payload = serde_json::json!({"items": items}).to_string();
    let json = [("Content-Type", "application/json")];
    for _ in 0..5 {
        assert_eq!(post(&format!("{base}/loop"), &json, &payload).0, 202);
        assert_eq!(post(&format!("{base}/template"), &json, "{}").0, 202);
    }
    let started = Instant::now();
    for n in 0..5 {
        assert_eq!(post(&format!("{base}/healthy"), &json, &format!("{{\"n\": {n}}}")).0, 202);
    }
    running.stdout.wait_until("five healthy deliveries", Duration::from_secs(30), |text| {
        (0..5).all(|n| text.contains(&format!("healthy {n}")))
    });
    eprintln!("healthy deliveries while bombs ran: {:?}", started.elapsed());
    let logs = running.stderr.wait_until("both bombs contained", Duration::from_secs(30), |text| {
        text.contains("evaluation exceeded the cost limit of 1000000")
            && text.contains("ran more than 100000 instructions")
    });
    assert!(!logs.contains("panicked"), "{logs:.4000}");
    assert!(!running.stdout.text().lines().any(|line| line.contains("xxxxxxxx")));
    assert_eq!(running.stop(), Some(0));
}
