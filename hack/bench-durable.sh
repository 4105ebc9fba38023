#!/usr/bin/env bash
# Measures the embedded state store through `ktrigger run`: deliveries per second relayed from
# the webhook source to a local receiver in memory and with the store (goal: durable at least
# 0.8x in-memory), and the size of the state file with 10,000 dedup keys. Prints figures,
# asserts nothing.
#
#   hack/bench-durable.sh [--events N] [--senders N] [--keys N]
#
# Release builds of the binary and of the bench driver (cmd/ktrigger/examples/bench_durable.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p ktrigger
cargo build --release -q -p ktrigger --example bench_durable
target="${CARGO_TARGET_DIR:-target}"
exec "$target/release/examples/bench_durable" --ktrigger "$target/release/ktrigger" "$@"
