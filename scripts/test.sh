#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch the real Gemma 3 270M (seconds when cached), then every test in
# release mode (numerical tests are too slow unoptimised). Tests that need the real model skip visibly when it
# is absent, but this script always fetches it first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch_model.sh >/dev/null
cargo test --release --workspace --locked 2>&1
