#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch the real Gemma 3 270M (seconds when cached), make sure Mesa's CPU
# Vulkan driver is there for the GPU-kernel tests, then run every test in release mode (numerical tests are too
# slow unoptimised) in ONE build with the `cuda` and `wgpu` features:
# - `cuda`: the build is the `cargo build --release --features cuda` check (no GPU is needed to build it);
#   tests/gpu.rs's GPU checks skip, saying so, where there is no GPU; its no-driver and index-arithmetic
#   checks run.
# - `wgpu`: the CubeCL kernels (dequantization, attention, RMSNorm, GeGLU, RoPE, dropout, the LM-head loss) and
#   the GPU-side train steps run on the wgpu runtime against the CPU, on lavapipe here (model/src/cube/tests.rs,
#   trainer/src/train/step.rs). LAPIDARY_REQUIRE_WGPU=1 makes a missing adapter a failure, not a skip.
# One build, not one per feature set: the features change those of the whole Burn/CubeCL stack, which would
# otherwise be compiled again for each.
# Cost on 2 cores (AMD EPYC, measured 2026-12-07): 18 minutes to build everything from an empty target dir
# (about half of it the Burn/CubeCL/wgpu dependencies); the tests then take ~2 minutes (the wgpu ones ~40 s on
# lavapipe, the real-model ones most of the rest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch_model.sh >/dev/null
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing Mesa's CPU Vulkan driver (lavapipe) for the wgpu tests"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
    else
        echo "error: the wgpu tests need Mesa's CPU Vulkan driver: apt-get install mesa-vulkan-drivers libvulkan1" >&2
        exit 1
    fi
fi
# wgpu looks for a runtime directory; a CI shell may have none.
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
export LAPIDARY_REQUIRE_WGPU=1
cargo test --release --workspace --locked --features lapidary/cuda,lapidary/wgpu 2>&1
