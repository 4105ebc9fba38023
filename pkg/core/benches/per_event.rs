//! The cost of one event: parsing a ~4 KB Pod, building the event, and running it through ten
//! triggers (CEL filter, dedup key, router), compared with parsing alone.
//!
//! Run with `cargo bench -p ktrigger-core --bench per_event`. After the criterion groups it prints
//! events per second of the full path and the ratio full path / parse (the target is <= 1.3),
//! and what the trace spans of each event cost with tracing off, under the subscriber the binary
//! installs then.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::Criterion;
use ktrigger_core::{
    CelExpr, Event, TriggerId, Vars,
    router::{Admission, RateLimit, Router},
    trace,
};
use serde_json::{Value, json};

/// A realistic Pod as the API server sends it in a watch event.
fn pod_bytes() -> Vec<u8> {
    let managed_field = |manager: &str, operation: &str| {
        json!({
            "manager": manager,
            "operation": operation,
            "apiVersion": "v1",
            "time": "2026-03-01T11:50:02Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {"f:labels": {".": {}, "f:app": {}, "f:tier": {}, "f:pod-template-hash": {}},
                               "f:ownerReferences": {".": {}, "k:{\"uid\":\"6f1c\"}": {}}},
                "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:name": {},
                           "f:ports": {}, "f:resources": {}}}, "f:nodeSelector": {}},
                "f:status": {"f:conditions": {}, "f:containerStatuses": {}, "f:phase": {}, "f:podIP": {}},
            },
        })
    };
    let container = |name: &str, image: &str, port: u16| {
        json!({
            "name": name,
            "image": image,
            "ports": [{"containerPort": port, "protocol": "TCP"}],
            "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
            "volumeMounts": [{"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 10, "failureThreshold": 3},
            "terminationMessagePath": "/dev/termination-log",
            "imagePullPolicy": "IfNotPresent",
        })
    };
    let status = |name: &str, restarts: i64, ready: bool| {
        json!({
            "name": name,
            "ready": ready,
            "restartCount": restarts,
            "image": format!("registry.example.com/shop/{name}:1.24.3"),
            "imageID": format!("registry.example.com/shop/{name}@sha256:9b2a61c4f0e7d2b3a5c6e8f1d0c2b4a6e8f0a1c3e5b7d9f1a3c5e7b9d1f3a5c7"),
            "containerID": "containerd://4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d",
            "started": ready,
            "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": "2026-03-01T11:52:00Z", "finishedAt": "2026-03-01T11:55:10Z"}},
            "state": {"running": {"startedAt": "2026-03-01T11:55:12Z"}},
        })
    };
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-7d9f8b6c5d-x2x4k",
            "generateName": "web-7d9f8b6c5d-",
            "namespace": "apps",
            "uid": "0b9d3c4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e",
            "resourceVersion": "48213377",
            "creationTimestamp": "2026-03-01T11:50:00Z",
            "labels": {"app": "web", "tier": "frontend", "pod-template-hash": "7d9f8b6c5d", "team": "shop"},
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090",
                "kubectl.kubernetes.io/restartedAt": "2026-02-28T09:00:00Z",
            },
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8b6c5d",
                                 "uid": "6f1c2d3e-4a5b-6c7d-8e9f-0a1b2c3d4e5f", "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [managed_field("kube-controller-manager", "Update"), managed_field("kubelet", "Update")],
        },
        "spec": {
            "containers": [container("web", "registry.example.com/shop/web:1.24.3", 8080),
                           container("sidecar", "registry.example.com/shop/envoy:1.30.1", 9901)],
            "nodeName": "node-17",
            "serviceAccountName": "web",
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
            "priority": 0,
            "terminationGracePeriodSeconds": 30,
            "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
        },
        "status": {
            "phase": "Running",
            "qosClass": "Burstable",
            "hostIP": "10.0.3.17",
            "podIP": "10.244.5.23",
            "startTime": "2026-03-01T11:50:01Z",
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-03-01T11:50:01Z"},
                {"type": "Ready", "status": "False", "lastTransitionTime": "2026-03-01T11:55:10Z", "reason": "ContainersNotReady"},
                {"type": "ContainersReady", "status": "False", "lastTransitionTime": "2026-03-01T11:55:10Z"},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-03-01T11:50:00Z"},
            ],
            "containerStatuses": [status("web", 4, false), status("sidecar", 0, true)],
        },
    });
    serde_json::to_vec(&pod).expect("a JSON value serializes")
}

/// One trigger as the engine holds it once loaded.
struct Trigger {
    id: TriggerId,
    filter: CelExpr,
    dedup: Option<(CelExpr, Duration)>,
    limit: Option<RateLimit>,
}

/// Ten triggers watching Pods, with the kind of filters users write.
fn triggers() -> Vec<Trigger> {
    let filters: [(&str, Option<&str>); 10] = [
        ("object.status.phase == \"Running\"", None),
        (
            "object.metadata.namespace == \"apps\" && object.metadata.labels[\"app\"] == \"web\"",
            Some("object.metadata.name"),
        ),
        (
            "object.status.containerStatuses.exists(c, c.restartCount >= 3)",
            Some("object.metadata.namespace + \"/\" + object.metadata.name"),
        ),
        ("!object.metadata.name.startsWith(\"canary-\") && event.type == \"update\"", None),
        ("has(object.metadata.annotations) && \"prometheus.io/scrape\" in object.metadata.annotations", None),
        ("object.spec.containers.all(c, has(c.resources.limits))", None),
        ("context.data.status.phase == \"Failed\"", None),
        (
            "object.status.conditions.exists(c, c.type == \"Ready\" && c.status == \"False\")",
            Some("object.metadata.uid"),
        ),
        ("now - timestamp(object.metadata.creationTimestamp) > duration(\"5m\")", None),
        ("size(object.spec.containers) > 1 && object.spec.nodeName.matches(\"^node-[0-9]+$\")", None),
    ];
    filters
        .iter()
        .enumerate()
        .map(|(i, (filter, key))| Trigger {
            id: TriggerId { namespace: "apps".into(), service: "pod-watch".into(), trigger: format!("trigger-{i}") },
            filter: CelExpr::filter(filter).expect("the bench filters compile"),
            dedup: key.map(|k| (CelExpr::filter(k).expect("the bench keys compile"), Duration::from_secs(600))),
            limit: (i % 3 == 0).then(|| RateLimit::per_minute(1_000_000_000, None)).flatten(),
        })
        .collect()
}

/// The floor: parsing the bytes.
fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("the pod parses")
}

/// The per-event path: parse, build the shared event, then filter, key and route it per trigger.
/// Returns how many triggers matched.
fn full_path(bytes: &[u8], triggers: &[Trigger], router: &Router) -> usize {
    let event = Arc::new(Event::new("resource-watcher", "update", parse(bytes)));
    let now = Utc::now();
    let mut matched = 0;
    for trigger in triggers {
        let vars = Vars::for_event(&event, &trigger.id.trigger, now);
        if trigger.filter.eval_bool(&vars) != Ok(true) {
            continue;
        }
        matched += 1;
        let dedup = match &trigger.dedup {
            Some((key, window)) => match key.eval_string(&vars) {
                Ok(key) => Some((key, *window)),
                Err(_) => continue,
            },
            None => None,
        };
        black_box(router.admit(&trigger.id, dedup, trigger.limit.as_ref()) == Admission::Fire);
    }
    matched
}

/// The full path with the spans the engine opens for each event and trigger.
fn full_path_traced(bytes: &[u8], triggers: &[Trigger], router: &Router) -> usize {
    let event = Arc::new(Event::new("resource-watcher", "update", parse(bytes)));
    let now = Utc::now();
    let mut matched = 0;
    for trigger in triggers {
        let span = trace::event_span(&trigger.id, &event);
        let _in_event = span.enter();
        let vars = Vars::for_event(&event, &trigger.id.trigger, now);
        let filter = trace::filter_span();
        let passed = filter.in_scope(|| trigger.filter.eval_bool(&vars)) == Ok(true);
        filter.record("matched", passed);
        if !passed {
            continue;
        }
        matched += 1;
        let decision = trace::router_span();
        let dedup = match &trigger.dedup {
            Some((key, window)) => match key.eval_string(&vars) {
                Ok(key) => Some((key, *window)),
                Err(_) => continue,
            },
            None => None,
        };
        let fired = router.admit(&trigger.id, dedup, trigger.limit.as_ref()) == Admission::Fire;
        decision.record("decision", if fired { "fire" } else { "dropped" });
        black_box(fired);
    }
    matched
}

/// The per-event path without dedup keys and router: parse, build the event, run the filters.
fn filters_only(bytes: &[u8], triggers: &[Trigger]) -> usize {
    let event = Arc::new(Event::new("resource-watcher", "update", parse(bytes)));
    let now = Utc::now();
    triggers.iter().filter(|t| t.filter.eval_bool(&Vars::for_event(&event, &t.id.trigger, now)) == Ok(true)).count()
}

/// Mean time per call of `f` over about `budget`.
fn time_per_call(budget: Duration, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    let mut calls = 0u32;
    while start.elapsed() < budget {
        for _ in 0..16 {
            f();
        }
        calls += 16;
    }
    start.elapsed() / calls
}

/// The median of some durations.
fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Times each of `paths` in `rounds` interleaved rounds of `slice` each, so that a change of load
/// on the machine affects them alike. Returns the median time per call of each path and the
/// median, over the rounds, of each path's time relative to the first.
fn interleaved(rounds: usize, slice: Duration, paths: &mut [&mut dyn FnMut()]) -> Vec<(Duration, f64)> {
    let mut times = vec![Vec::new(); paths.len()];
    for _ in 0..rounds {
        for (path, times) in paths.iter_mut().zip(&mut times) {
            times.push(time_per_call(slice, &mut **path));
        }
    }
    let ratios = |i: usize| -> f64 {
        let mut r: Vec<f64> =
            times[i].iter().zip(&times[0]).map(|(t, base)| t.as_secs_f64() / base.as_secs_f64()).collect();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    };
    (0..paths.len()).map(|i| (median(times[i].clone()), ratios(i))).collect()
}

/// The subscriber of `ktrigger run` and `controller` without `--otlp-endpoint`: log lines at
/// info, none of the trace spans.
fn install_default_subscriber() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = EnvFilter::new(format!("info,{}=off", trace::TARGET));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::sink).with_filter(filter);
    tracing_subscriber::registry().with(logs).init();
}

fn main() {
    install_default_subscriber();
    let bytes = pod_bytes();
    let triggers = triggers();
    let router = Router::new();
    let matched = full_path(&bytes, &triggers, &router);
    for trigger in &triggers {
        let event = Event::new("resource-watcher", "update", parse(&bytes));
        let vars = Vars::for_event(&event, &trigger.id.trigger, Utc::now());
        trigger.filter.eval_bool(&vars).expect("the bench filters evaluate");
    }

    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut group = criterion.benchmark_group("per_event");
    group.bench_function("parse_only", |b| b.iter(|| black_box(parse(black_box(&bytes)))));
    group.bench_function("full_path_10_triggers", |b| {
        b.iter(|| black_box(full_path(black_box(&bytes), &triggers, &router)))
    });
    group.finish();
    criterion.final_summary();

    let mut parse_path = || {
        black_box(parse(black_box(&bytes)));
    };
    let mut event_path = || {
        black_box(Arc::new(Event::new("resource-watcher", "update", parse(black_box(&bytes)))));
    };
    let mut filters_path = || {
        black_box(filters_only(black_box(&bytes), &triggers));
    };
    let mut full = || {
        black_box(full_path(black_box(&bytes), &triggers, &router));
    };
    let mut traced = || {
        black_box(full_path_traced(black_box(&bytes), &triggers, &router));
    };
    let measured = interleaved(
        15,
        Duration::from_millis(100),
        &mut [&mut parse_path, &mut event_path, &mut filters_path, &mut full, &mut traced],
    );
    let [
        (parse_time, _),
        (event_time, event_ratio),
        (filters_time, filters_ratio),
        (full_time, full_ratio),
        (traced_time, traced_ratio),
    ] = measured[..]
    else {
        unreachable!("five paths were measured")
    };
    let budget = Duration::from_secs(2);
    // the router's share: the admissions of the matching triggers, keys computed beforehand
    let event = Event::new("resource-watcher", "update", parse(&bytes));
    let admissions: Vec<(&Trigger, Option<(String, Duration)>)> = triggers
        .iter()
        .filter(|t| t.filter.eval_bool(&Vars::for_event(&event, &t.id.trigger, Utc::now())) == Ok(true))
        .map(|t| {
            let vars = Vars::for_event(&event, &t.id.trigger, Utc::now());
            (t, t.dedup.as_ref().map(|(key, window)| (key.eval_string(&vars).expect("the keys evaluate"), *window)))
        })
        .collect();
    let router_time = time_per_call(budget / 4, || {
        for (trigger, dedup) in &admissions {
            black_box(router.admit(&trigger.id, dedup.clone(), trigger.limit.as_ref()));
        }
    });

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!();
    println!("summary: pod of {} bytes, {} triggers, {matched} match it, router included", bytes.len(), triggers.len());
    println!("  (medians of 15 interleaved rounds; ratios are medians of the per-round ratios to parse)");
    println!("  parse only:               {:>7.2} us/event", us(parse_time));
    println!("  parse + event:            {:>7.2} us/event  ratio {event_ratio:.2}", us(event_time));
    println!("  parse + event + filters:  {:>7.2} us/event  ratio {filters_ratio:.2}", us(filters_time));
    println!(
        "  full path:                {:>7.2} us/event  ratio {full_ratio:.2} (target <= 1.3), {:.0} events/s",
        us(full_time),
        1.0 / full_time.as_secs_f64()
    );
    println!("  full path with trace spans, tracing off: {:>7.2} us/event  ratio {traced_ratio:.2}", us(traced_time));
    println!(
        "  of which dedup keys and router {:.2} us, router alone {:.2} us",
        us(full_time.saturating_sub(filters_time)),
        us(router_time)
    );
    println!("  per filter, on an event already parsed:");
    let event = Event::new("resource-watcher", "update", parse(&bytes));
    for trigger in &triggers {
        let time = time_per_call(budget / 10, || {
            let vars = Vars::for_event(&event, &trigger.id.trigger, Utc::now());
            black_box(trigger.filter.eval_bool(&vars).ok());
        });
        println!("    {:>8.3} us  {}", time.as_secs_f64() * 1e6, trigger.filter.source());
    }
    println!("  per dedup key:");
    for (key, _) in triggers.iter().filter_map(|t| t.dedup.as_ref()) {
        let time = time_per_call(budget / 10, || {
            let vars = Vars::for_event(&event, "key", Utc::now());
            black_box(key.eval_string(&vars).ok());
        });
        println!("    {:>8.3} us  {}", time.as_secs_f64() * 1e6, key.source());
    }
}
