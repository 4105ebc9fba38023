#!/usr/bin/env bash
# Regenerates config/crd from the API types. A test fails when the file drifts from them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q -p ktrigger -- crd > config/crd/ktrigger.dev_triggerservices.yaml
echo "wrote config/crd/ktrigger.dev_triggerservices.yaml"
