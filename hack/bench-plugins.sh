#!/usr/bin/env bash
# Events per second through a plugin source and a plugin destination against the built-in
# webhook source and destination, in one run, with the ratios (hack/bench-plugins.py says how).
#
#   hack/bench-plugins.sh [--events N]      (default 5000)
#
# Release builds of ktrigger and of the Rust example plugin (examples/plugins/rust).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p ktrigger -p ktrigger-example-plugin
target="${CARGO_TARGET_DIR:-target}"
exec python3 hack/bench-plugins.py --ktrigger "$target/release/ktrigger" \
  --plugin "$(cd "$target/release" && pwd)/ktrigger-example-plugin" "$@"
