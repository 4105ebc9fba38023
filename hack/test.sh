#!/usr/bin/env bash
# Runs every test. The end-to-end tests use real third-party receivers from PyPI, installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
cargo test --workspace --locked
