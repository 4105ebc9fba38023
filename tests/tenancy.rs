//! A tenant attacks the shared controller. On a real cluster (`KTRIGGER_TEST_KUBECONFIG` with a
//! `tenant` context, as ../shared/realk8s makes) the `tenant` user is bound to the built-in `edit`
//! role in its namespace, with the TriggerService rules aggregated to `edit` as shipped
//! (config/rbac/aggregate_roles.yaml), and writes its TriggerServices with kubectl as itself; on
//! the test cluster (no RBAC) the same objects are applied by the test.
//!
//! Each attack of the multi-tenancy rule is tried once: reading the controller's files, watching
//! another namespace's Secrets, taking over another TriggerService's webhook, CEL and template
//! bombs, filling memory through queues and dedup keys, a huge duration, slow connections, and
//! credentials leaking on a redirect. Each is refused or contained with a message in status;
//! nothing of the other namespace, and no credential, reaches the attacker's receivers; and an
//! unrelated tenant's signed webhook keeps delivering all along (its latency is printed).

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cluster::{Env, NamespaceGuard, WAIT};
use support::http_server::{Answer, TestServer};
use support::{closed_by_server, hmac_signature, last_error, post, repo, write_config};

/// The bystander's signing key, handed to the controller through an allowed variable.
const BYSTANDER_KEY_VAR: &str = "KTRIGGER_E2E_BYSTANDER_KEY";

/// Who writes the attacker's TriggerServices: the `tenant` user with `edit` in `env`'s
/// namespace on a real cluster, the test's own kubeconfig on the test cluster.
fn attacker_kubeconfig(env: &Env) -> String {
    let Some(tenant) = env.tenant_kubeconfig() else {
        return env.kubeconfig().to_string();
    };
    let aggregated = repo().join("config/rbac/aggregate_roles.yaml");
    let (ok, text) = env.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", aggregated.to_str().unwrap()]);
    assert!(ok, "the aggregated TriggerService roles: {text}");
    env.apply(
        &env.namespace,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: tenant-edit}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}\n\
         subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: tenant}]\n",
    );
    let tenant = tenant.to_str().unwrap().to_string();
    // The aggregation controller fills `edit` asynchronously: wait until the tenant may create.
    let start = Instant::now();
    loop {
        let (_, answer) =
            env.kubectl_as(&tenant, &["auth", "can-i", "create", "triggerservices.ktrigger.dev", "-n", &env.namespace]);
        if answer.trim() == "yes" {
            return tenant;
        }
        assert!(start.elapsed() < WAIT, "edit never included TriggerServices: {answer}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `kubectl apply` of `yaml` in the attacker's namespace, as the attacker.
fn apply_as(env: &Env, kubeconfig: &str, yaml: &str) {
    let (_dir, path) = write_config(yaml);
    let (ok, text) = env.kubectl_as(kubeconfig, &["apply", "-n", &env.namespace, "-f", path.to_str().unwrap()]);
    assert!(ok, "kubectl apply as the attacker: {text}\n{yaml}");
}

/// The attacker's TriggerService: one trigger per attack, each sending what it gets to `loot`.
fn attacks(other: &str, loot: &str, hanging: &str, redirecting: &str, token_file: &str) -> String {
    let bomb = vec!["1"; 1500].join("+");
    format!(
        r#"apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {{name: attacks}}
spec:
  triggers:
  - name: token
    source: {{type: webhook, properties: {{path: /token}}}}
    destinations:
    - {{type: webhook, properties: {{url: "{loot}token", headers: {{X-Token: {{file: "{token_file}"}}}}}}}}
  - name: all-secrets
    source: {{type: resource-watcher, properties: {{apiVersion: v1, kind: Secret, replayExisting: true}}}}
    destinations: [{{type: webhook, properties: {{url: "{loot}secrets"}}}}]
  - name: other-secrets
    source: {{type: resource-watcher, properties: {{apiVersion: v1, kind: Secret, namespace: {other}, replayExisting: true}}}}
    destinations: [{{type: webhook, properties: {{url: "{loot}other"}}}}]
  - name: takeover
    source: {{type: webhook, properties: {{path: /deploys}}}}
    destinations: [{{type: webhook, properties: {{url: "{loot}takeover"}}}}]
  - name: deep-filter
    source: {{type: webhook, properties: {{path: /deep}}}}
    filter: '{bomb} == 2'
    destinations: [{{type: log}}]
  - name: costly-filter
    source: {{type: webhook, properties: {{path: /costly}}}}
    filter: 'object.items.map(a, object.items.map(b, object.items.map(c, a + b + c))).size() > 0'
    destinations: [{{type: log}}]
  - name: template-loop
    source: {{type: webhook, properties: {{path: /template}}}}
    destinations:
    - type: webhook
      properties:
        url: "{loot}template"
        body: '{{% for i in range(100000) %}}{{% for j in range(100000) %}}x{{% endfor %}}{{% endfor %}}'
      retry: {{maxAttempts: 1}}
  - name: queue-fill
    source: {{type: webhook, properties: {{path: /fill}}}}
    destinations: [{{type: webhook, properties: {{url: "{hanging}"}}, timeout: 10m}}]
  - name: queue-fill-dead-letter
    source: {{type: webhook, properties: {{path: /fill-dead-letter}}}}
    destinations: [{{type: webhook, properties: {{url: "{hanging}"}}, timeout: 10m, overflow: deadLetter}}]
  - name: key-fill
    source: {{type: webhook, properties: {{path: /keys}}}}
    dedup: {{key: 'object.k', window: 10m}}
    destinations: [{{type: log, properties: {{includeObject: false}}}}]
  - name: forever
    source: {{type: webhook, properties: {{path: /forever}}}}
    debounce: 500000000000y
    destinations: [{{type: log}}]
  - name: redirected
    source:
      type: http-poller
      properties:
        url: "{redirecting}"
        interval: 1s
        headers: {{X-Api-Key: {{secretKeyRef: {{name: api-key, key: key}}}}}}
    destinations: [{{type: log}}]
"#,
    )
}

/// The bystander: another tenant's signed webhook delivering to its own receiver.
fn bystander(url: &str) -> String {
    format!(
        r#"apiVersion: ktrigger.dev/v1alpha1
kind: TriggerService
metadata: {{name: bystander}}
spec:
  triggers:
  - name: deploys
    source:
      type: webhook
      properties:
        path: /deploys
        auth: {{type: hmac, secretFrom: {{env: {BYSTANDER_KEY_VAR}}}}}
    destinations: [{{type: webhook, properties: {{url: "{url}"}}}}]
"#
    )
}

/// The status entry of `trigger` of the attacker's TriggerService once `check` holds.
fn wait_attack(env: &Env, trigger: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    env.wait_trigger("attacks", trigger, what, check)
}

/// Sends one signed bystander event numbered by its place in `sent`, and notes when.
fn bystander_event(url: &str, key: &str, sent: &mut Vec<Instant>) {
    let n = sent.len();
    let body = json!({"deploy": n}).to_string();
    sent.push(Instant::now());
    let (code, text) = post(url, &[("X-Signature-256", &hmac_signature(key, &body))], &body);
    assert!((200..300).contains(&code), "the bystander's event {n} was taken: {code} {text}");
}

#[test]
fn a_tenant_with_edit_is_refused_or_contained_in_every_attack_and_a_bystander_keeps_delivering() {
    let env = Env::new("tenancy");
    let other = format!("{}-other", env.namespace);
    let _other = NamespaceGuard::create(&env, &other);
    let marker = format!("other-namespace-secret-{}", support::cluster::uuid_suffix());
    env.apply(
        &other,
        &format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: crown-jewels}}\nstringData: {{v: {marker}}}\n"),
    );
    env.install_trigger_service_crd();
    let attacker = attacker_kubeconfig(&env);

    let loot = TestServer::start(Answer::Ok);
    let hanging = TestServer::start(Answer::Hang);
    let elsewhere = TestServer::start(Answer::Ok);
    let redirecting = TestServer::start(Answer::RedirectTo(format!("{}collect", elsewhere.url())));
    let bystander_receiver = TestServer::start(Answer::Ok);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let token = format!("controller-token-{}", support::cluster::uuid_suffix());
    std::fs::write(&token_file, &token).unwrap();
    let key = format!("bystander-{}", support::cluster::uuid_suffix());

    let running = env.start_controller(
        &[
            "--egress-allow",
            "127.0.0.1/32",
            "--allow-credential-env",
            BYSTANDER_KEY_VAR,
            "--watch-namespaces",
            &other,
            "--webhook-header-timeout",
            "1s",
            "--max-queue-bytes-per-trigger",
            "4Mi",
            "--max-dedup-keys-per-trigger",
            "100",
            "--shutdown-grace",
            "2s",
        ],
        &[(BYSTANDER_KEY_VAR.to_string(), key.clone())],
    );
    env.apply(&other, &bystander(&bystander_receiver.url()));
    apply_as(
        &env,
        &attacker,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: api-key}\nstringData: {key: tenant-api-key}\n",
    );
    let yaml = attacks(&other, &loot.url(), &hanging.url(), &redirecting.url(), token_file.to_str().unwrap());
    apply_as(&env, &attacker, &yaml);

    let base = running.webhook_url();
    let bystander_url = format!("{base}/{other}/bystander/deploys");
    let mut sent = Vec::new();
    let start = Instant::now();
    while post(&bystander_url, &[], "{}").0 != 401 {
        assert!(start.elapsed() < WAIT, "the bystander's webhook never loaded");
        std::thread::sleep(Duration::from_millis(200));
    }
    bystander_event(&bystander_url, &key, &mut sent);
    let attacker_url = |path: &str| format!("{base}/{}/attacks{path}", env.namespace);

    // 1. The controller's files: refused, with the same words whether or not the file exists.
    let token_status = wait_attack(&env, "token", "the file credential refused", |t| t["ready"] == false);
    assert!(last_error(&token_status).contains("cannot be read"), "{token_status:#}");
    assert_eq!(post(&attacker_url("/token"), &[], "{}").0, 404, "the refused trigger serves nothing");

    // 2. Other namespaces: named, refused at load; unnamed, confined to the tenant's own.
    let other_status = wait_attack(&env, "other-secrets", "another namespace refused", |t| t["ready"] == false);
    assert!(last_error(&other_status).contains("outside the TriggerService's namespace"), "{other_status:#}");
    let own = loot.wait_for_requests(1);
    assert!(own.iter().any(|r| r.contains("api-key")), "the unnamed watch sees the tenant's own Secrets: {own:?}");

    // 3. Another TriggerService's webhook: signed events reach only the bystander, unsigned are 401.
    for _ in 1..=10 {
        bystander_event(&bystander_url, &key, &mut sent);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(post(&bystander_url, &[], r#"{"forged": true}"#).0, 401, "an unsigned request is refused");

    // 4. Bombs: refused at load, or stopped while running.
    let deep = wait_attack(&env, "deep-filter", "the deep filter refused", |t| t["ready"] == false);
    assert!(last_error(&deep).contains("nested too deeply"), "{deep:#}");
    let costly = wait_attack(&env, "costly-filter", "the costly filter refused", |t| t["ready"] == false);
    assert!(last_error(&costly).contains("cost"), "{costly:#}");
    assert!((200..300).contains(&post(&attacker_url("/template"), &[], "{}").0));
    let template = wait_attack(&env, "template-loop", "the template bomb stopped", |t| t["deadLettered"] == 1);
    assert!(last_error(&template).contains("instructions"), "{template:#}");

    // 5. Memory: queue bytes and dedup keys are bounded per trigger, and counted.
    // With the default `overflow: backpressure` the sender is told to retry once the trigger's
    // bytes are held; with `deadLetter` the deliveries over the limit are dropped and counted.
    let big = json!({"pad": "p".repeat(600 * 1024)}).to_string();
    let mut told_to_retry = 0;
    for _ in 0..12 {
        bystander_event(&bystander_url, &key, &mut sent);
        let code = post(&attacker_url("/fill"), &[], &big).0;
        assert!((200..300).contains(&code) || code == 503, "{code}");
        told_to_retry += usize::from(code == 503);
        let code = post(&attacker_url("/fill-dead-letter"), &[], &big).0;
        assert!((200..300).contains(&code) || code == 503, "{code}");
    }
    assert!(told_to_retry >= 1, "12 events of 600 KB exceed the trigger's 4 MiB of queue bytes");
    let held = wait_attack(&env, "queue-fill", "held back events", |t| t["backpressured"].as_u64() >= Some(1));
    assert_eq!((held["deadLettered"].as_u64(), held["queueByteLimited"].as_u64()), (Some(0), Some(0)), "{held:#}");
    let filled = wait_attack(&env, "queue-fill-dead-letter", "the queue byte limit", |t| {
        t["queueByteLimited"].as_u64() >= Some(1)
    });
    assert!(last_error(&filled).contains("queue byte limit"), "{filled:#}");
    let long = "k".repeat(50 * 1024);
    for n in 0..150 {
        let body = json!({"k": format!("{n}-{long}")}).to_string();
        assert!((200..300).contains(&post(&attacker_url("/keys"), &[], &body).0));
    }
    let keys = wait_attack(&env, "key-fill", "evicted dedup keys", |t| t["dedupEvicted"].as_u64() >= Some(50));
    let active = keys["activeEvents"].as_array().cloned().unwrap_or_default();
    assert!(active.iter().all(|e| e["key"].as_str().unwrap_or_default().len() < 1024), "long keys are kept short");

    // 6. A huge duration: refused at load with the bound.
    let forever = wait_attack(&env, "forever", "the huge debounce refused", |t| t["ready"] == false);
    assert!(last_error(&forever).contains("30 days"), "{forever:#}");

    // 7. Slow connections are cut after the header timeout while the bystander is served.
    let address = base.trim_start_matches("http://").trim_end_matches('/').to_string();
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut stream = TcpStream::connect(&address).unwrap();
            stream.write_all(b"POST /slow HTTP/1.1\r\nhost: x\r\nx-slow: ").unwrap();
            stream
        })
        .collect();
    for _ in 0..5 {
        bystander_event(&bystander_url, &key, &mut sent);
    }
    let start = Instant::now();
    slow.retain(|stream| !closed_by_server(stream, WAIT.saturating_sub(start.elapsed())));
    assert!(slow.is_empty(), "{} slow connections were still open after the header timeout", slow.len());

    // 8. A redirect is not followed, so the credential header never reaches the other origin.
    let asked = redirecting.wait_for_requests(2);
    assert!(asked[0].to_ascii_lowercase().contains("x-api-key: tenant-api-key"), "{}", asked[0]);
    running.stderr.wait_for("redirects are not followed", WAIT);
    assert!(elsewhere.requests().is_empty(), "the other origin was never asked: {:?}", elsewhere.requests());

    // The bystander delivered every event; nothing secret reached the attacker.
    let arrived = bystander_receiver.wait_for_requests(sent.len());
    let mut latencies: Vec<Duration> = bystander_receiver
        .timed_requests()
        .iter()
        .filter_map(|(at, text)| {
            let body = text.split_once("\r\n\r\n")?.1;
            let event = serde_json::from_str::<Value>(body).ok()?;
            let n = event["data"]["object"]["deploy"].as_u64()?;
            sent.get(usize::try_from(n).ok()?).map(|s| at.saturating_duration_since(*s))
        })
        .collect();
    assert_eq!(latencies.len(), sent.len(), "every bystander event arrived once");
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    eprintln!(
        "bystander: {} of {} events delivered during the attacks; event-to-delivery p50 {:?}, p99 {:?}, max {:?}",
        arrived.len(),
        sent.len(),
        latencies[latencies.len() / 2],
        p99,
        latencies.last().unwrap()
    );
    let loot_text = loot.requests().join("\n");
    for (what, needle) in [("the controller's token", token.as_str()), ("another namespace's Secret", marker.as_str())]
    {
        assert!(!loot_text.contains(needle), "{what} reached the attacker's receiver");
    }
    assert!(loot.requests().iter().all(|r| !r.contains("/takeover")), "the takeover route received nothing");
    let logs = running.stdout.text() + &running.stderr.text();
    assert!(!logs.contains(&token) && !logs.contains(&marker), "no secret in the controller's output");
    // The deliveries still waiting on the receiver that never answers are kept in the state store
    // at shutdown, and the controller says so.
    let stderr = running.stderr.clone();
    assert_eq!(running.stop(), Some(0));
    assert!(stderr.text().contains("are kept in redb"), "{}", stderr.text());
}
