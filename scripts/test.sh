#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch the real Gemma 3 270M (seconds when cached), run every test in
# release mode (numerical tests are too slow unoptimised), then build the CUDA binary and run tests/gpu.rs with
# it (no GPU is needed to build it; the GPU checks skip, saying so, where there is none, and the checks that
# need no GPU run: `--backend cuda` fails with a clear error, the kernels' index arithmetic).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch_model.sh >/dev/null
cargo test --release --workspace --locked 2>&1
cargo test --release --locked --features cuda -p lapidary --test gpu -- --nocapture 2>&1 | tail -n 24
