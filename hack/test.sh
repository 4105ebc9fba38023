#!/usr/bin/env bash
# Runs every test, twice where Kubernetes is involved:
#   1. the whole workspace on the in-process test cluster (pkg/testcluster, with its fault injection);
#   2. the Kubernetes end-to-end suites again on a real kube-apiserver and controller-manager
#      (../shared/realk8s), through KTRIGGER_TEST_KUBECONFIG, plus a server-side dry run of the
#      deploy manifests (kustomize and the Helm chart).
#
#   bash hack/test.sh            both
#   bash hack/test.sh --real     only the real-server run
#   bash hack/test.sh --no-real  only the test-cluster run
#
# The real server gets a port of its own (REALK8S_PORT, default 16443; etcd on REALK8S_ETCD_PORT,
# default 12379), starts empty and is stopped at the end, also when tests fail. Its first start on a
# machine builds kube-apiserver from source (10-15 minutes; cached in ~/.cache/realk8s after).
# The end-to-end tests use real third-party receivers from PyPI, installed here into a virtual
# environment under target/ (a stock Debian Python refuses system-wide pip installs), whose
# python3 comes first on PATH for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-all}
case "$mode" in
  all | --real | --no-real) ;;
  *) echo "usage: bash hack/test.sh [--real | --no-real]" >&2; exit 2 ;;
esac

venv=${CARGO_TARGET_DIR:-target}/test-venv
[ -x "$venv/bin/python3" ] || python3 -m venv "$venv"
"$venv/bin/python3" -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
PATH=$(cd "$venv/bin" && pwd):$PATH
export PATH

if [ "$mode" != --real ]; then
  cargo test --workspace --locked
fi
[ "$mode" = --no-real ] && exit 0

realk8s=${REALK8S:-../shared/realk8s/realk8s}
[ -x "$realk8s" ] || [ -f "$realk8s" ] || { echo "hack/test.sh: $realk8s not found (set REALK8S)" >&2; exit 1; }
export REALK8S_PORT=${REALK8S_PORT:-16443} REALK8S_ETCD_PORT=${REALK8S_ETCD_PORT:-12379}
trap 'bash "$realk8s" down' EXIT
kubeconfig=$(bash "$realk8s" up)
export KTRIGGER_TEST_KUBECONFIG=$kubeconfig
echo "hack/test.sh: Kubernetes end-to-end suites on the real kube-apiserver (KTRIGGER_TEST_KUBECONFIG=$kubeconfig)"

# Every test target that runs on KTRIGGER_TEST_KUBECONFIG when it is set: the binary's end-to-end
# tests that use tests/support/cluster.rs, and the library (and sample controller) tests that read
# the variable.
e2e=()
for file in tests/*.rs; do
  grep -q 'support::cluster' "$file" && e2e+=(--test "$(basename "$file" .rs)")
done
cargo test --locked -p ktrigger "${e2e[@]}"
for manifest in pkg/*/Cargo.toml examples/*/Cargo.toml; do
  package=$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -1)
  for file in "$(dirname "$manifest")"/tests/*.rs; do
    [ -f "$file" ] && grep -q 'KTRIGGER_TEST_KUBECONFIG' "$file" || continue
    cargo test --locked -p "$package" --test "$(basename "$file" .rs)"
  done
done
