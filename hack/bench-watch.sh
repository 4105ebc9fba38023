#!/usr/bin/env bash
# Measures `ktrigger run` watching 10,000 ConfigMaps in the test cluster with 100 triggers:
# peak RSS of the ktrigger process, and event-to-delivery latency (p50/p99) over 1,000 updates,
# each timed from the moment its update request is sent until its delivery line is read.
#
#   hack/bench-watch.sh [--objects N] [--triggers N] [--updates N]
#
# Release builds of the binary and of the bench driver (pkg/kube/examples/bench_watch.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p ktrigger
cargo build --release -q -p ktrigger-kube --example bench_watch
target="${CARGO_TARGET_DIR:-target}"
exec "$target/release/examples/bench_watch" --ktrigger "$target/release/ktrigger" "$@"
