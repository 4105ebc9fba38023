#!/usr/bin/env bash
# Measures `ktrigger controller` against the in-process test cluster: time from applying a
# TriggerService to its first delivery (p50/p99/max over --runs fresh webhook TriggerServices),
# VmRSS/VmHWM and watch requests with --services TriggerServices of 10 triggers each, API
# requests per minute at idle (by method and path) over --idle-seconds, and the exit code
# after SIGTERM.
#
#   hack/bench-controller.sh [--runs N] [--services N] [--idle-seconds N]
#
# Release builds of the binary and of the bench driver (pkg/controller/examples/bench_controller.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p ktrigger
cargo build --release -q -p ktrigger-controller --example bench_controller
target="${CARGO_TARGET_DIR:-target}"
exec "$target/release/examples/bench_controller" --ktrigger "$target/release/ktrigger" "$@"
