#!/usr/bin/env bash
# Measures peak RSS of `ktrigger run` under memory abuse, against its memory limits: 100
# TriggerServices whose webhook destinations never answer, with abusive ones pushing 1,000
# events of 900 KB each (queue bytes); the same with 4,000 distinct dedup keys of 50 KB each
# and a log destination (dedup keys); and the idle baseline. Prints figures, asserts nothing.
#
#   hack/bench-memory.sh [--services N] [--abusive N] [--deliveries N] [--size BYTES]
#                        [--keys N] [--key-size BYTES] [-- ktrigger run flags, e.g. --max-queue-bytes 32Mi]
#
# Release builds of the binary and of the bench driver (pkg/core/examples/bench_memory.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p ktrigger
cargo build --release -q -p ktrigger-core --example bench_memory
target="${CARGO_TARGET_DIR:-target}"
exec "$target/release/examples/bench_memory" --ktrigger "$target/release/ktrigger" "$@"
