#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch the real Gemma 3 270M (seconds when cached), run every test in
# release mode (numerical tests are too slow unoptimised), then check that the CUDA build compiles (no GPU is
# needed to build it; the GPU checks themselves skip, saying so, where there is none).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch_model.sh >/dev/null
cargo test --release --workspace --locked 2>&1
cargo build --release --locked --features cuda -p lapidary 2>&1 | tail -n 3
