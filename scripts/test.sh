#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch the real Gemma 3 270M (seconds when cached), then run every test
# in release mode (numerical tests are too slow unoptimised) in ONE build that has the `cuda` feature: that
# build is the `cargo build --release --features cuda` check (no GPU is needed to build it), tests/gpu.rs's
# GPU checks skip, saying so, where there is no GPU, and the rest (the CPU backends, `--backend cuda` failing
# with a clear error, the kernels' index arithmetic) run. One build, not a default one and then a CUDA one:
# the feature changes the features of the whole Burn stack, which would otherwise be compiled twice (that
# took CI 28 minutes; this takes ~21 on 2 cores from an empty target dir).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch_model.sh >/dev/null
cargo test --release --workspace --locked --features lapidary/cuda 2>&1
