#!/usr/bin/env bash
# Measures delivery throughput through `ktrigger run` (release build): deliveries/s from the
# webhook source to a local receiver answering at once (goal >= 10,000/s on 2 cores) and after
# 50 ms (goal ~ concurrency / 50 ms), inbound requests/s, and a 20,000-event burst with the
# default settings (goal: nothing dead-lettered; 503s counted, senders retry). Prints figures,
# asserts nothing.
#
#   hack/bench-throughput.sh [--events N] [--slow-events N] [--burst N] [--senders N]
#   BASELINE=<git rev> hack/bench-throughput.sh     # the same load against that revision too
#
# With BASELINE, that revision is checked out in a temporary worktree under the target
# directory and built in release mode (sharing the target directory, so dependencies are built
# once); its binary is kept as target/bench-baseline/ktrigger-<rev> for later runs, and its
# figures are printed beside the current ones.
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(cd "${CARGO_TARGET_DIR:-target}" 2>/dev/null && pwd || echo "$PWD/target")
export CARGO_TARGET_DIR="$target"
baseline_args=()
if [ -n "${BASELINE:-}" ]; then
  rev=$(git rev-parse --short "$BASELINE")
  worktree="$target/bench-baseline/$rev"
  binary="$target/bench-baseline/ktrigger-$rev"
  if [ ! -x "$binary" ]; then
    rm -rf "$worktree"
    git worktree add --detach -q "$worktree" "$rev"
    built=0
    (cd "$worktree" && cargo build --release -q -p ktrigger) && cp "$target/release/ktrigger" "$binary" && built=1
    # Only the binary is kept: the worktree goes at once (the script ends in exec, no trap runs).
    git worktree remove --force "$worktree"
    [ "$built" = 1 ] || { echo "the baseline $rev did not build" >&2; exit 1; }
  fi
  baseline_args=(--baseline "$binary")
fi
cargo build --release -q -p ktrigger
cargo build --release -q -p ktrigger --example bench_throughput
exec "$target/release/examples/bench_throughput" --ktrigger "$target/release/ktrigger" "${baseline_args[@]}" "$@"
