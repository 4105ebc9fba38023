#!/usr/bin/env bash
# Regenerates the TriggerService CRD from the API types, with its copies in the Helm chart and
# the KubeVela addon. Tests fail when any of them drifts from the types.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q -p ktrigger -- crd > config/crd/ktrigger.dev_triggerservices.yaml
cp config/crd/ktrigger.dev_triggerservices.yaml charts/ktrigger/crds/ktrigger.dev_triggerservices.yaml
cp config/crd/ktrigger.dev_triggerservices.yaml addons/ktrigger/resources/crd.yaml
echo "wrote config/crd/ktrigger.dev_triggerservices.yaml and its chart and addon copies"
