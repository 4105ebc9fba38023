#!/usr/bin/env bash
# Measures `ktrigger run` watching many objects (pkg/kube/examples/bench_watch.rs):
#
#   hack/bench-watch.sh [--objects N] [--triggers N] [--updates N] [--mode filters|selectors] [--kubeconfig PATH]
#       one run: 10,000 ConfigMaps and 100 CEL-filtered triggers by default; peak RSS, watches
#       opened, the time to the first deliveries after start, and event-to-delivery latency
#       (p50/p99) over 1,000 updates made once ktrigger and the driver have gone idle, each timed
#       from the moment its update request is sent until its delivery line is read. --mode selectors:
#       the objects spread over five kinds, each trigger with its own label selector on one kind.
#       --kubeconfig: against that API server instead of the test cluster.
#
#   hack/bench-watch.sh --sharing [--kubeconfig PATH] [--before BIN]
#       the watch-sharing figures: 1,000 triggers with distinct label selectors over 5 kinds and
#       10,000 objects, on the test cluster and (with --kubeconfig) on that API server; with
#       --before, the same runs with another ktrigger binary (an older build) first.
#
# Release builds of the binary and of the bench driver.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p ktrigger
cargo build --release -q -p ktrigger-kube --example bench_watch
target="${CARGO_TARGET_DIR:-target}"
driver="$target/release/examples/bench_watch"
if [[ "${1:-}" != "--sharing" ]]; then
    exec "$driver" --ktrigger "$target/release/ktrigger" "$@"
fi
shift
kubeconfig="" before=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --kubeconfig) kubeconfig="$2"; shift 2 ;;
        --before) before="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
binaries=()
[[ -n "$before" ]] && binaries+=("before:$before")
binaries+=("this build:$target/release/ktrigger")
for entry in "${binaries[@]}"; do
    label="${entry%%:*}" binary="${entry#*:}"
    servers=("")
    [[ -n "$kubeconfig" ]] && servers+=("$kubeconfig")
    for server in "${servers[@]}"; do
        echo "== $label ($binary)"
        args=(--ktrigger "$binary" --mode selectors --objects 10000 --triggers 1000 --updates 200)
        [[ -n "$server" ]] && args+=(--kubeconfig "$server")
        "$driver" "${args[@]}"
    done
done
