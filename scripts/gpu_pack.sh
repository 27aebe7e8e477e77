#!/usr/bin/env bash
# Packs what a GPU session carries (the device tool: carry [".devbuild"]), built HERE, since the GPU machine
# has no Rust toolchain: the lapidary binary and the tests/gpu.rs binary built with --features cuda
# (stripped and xz-compressed: ~80 MB each otherwise, over what the tool carries), the peer script, and
# bitsandbytes for the peer. Then, on the GPU machine, in one call (timeout_s 600):
# `RUN_ID=... BUDGET=520 bash scripts/bench_gpu.sh check tests pairs mem` (see scripts/bench_gpu.sh).
#
# usage: scripts/gpu_pack.sh        env: CARGO_TARGET_DIR (default target), ANCHORS (default ../shared/anchors)
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
anchors=${ANCHORS:-../shared/anchors}
cargo build --release --locked --features cuda -p lapidary
t=$(cargo test --release --locked --features cuda -p lapidary --test gpu --no-run 2>&1 \
    | grep -o '[^ ()]*/deps/gpu-[0-9a-f]*' | tail -n 1)
[ -x "$t" ] || { echo "no tests/gpu.rs binary found (got '$t')" >&2; exit 1; }
mkdir -p .devbuild
strip -o .devbuild/lapidary "$target/release/lapidary"
strip -o .devbuild/gpu-tests "$t"
xz -T0 -f .devbuild/lapidary .devbuild/gpu-tests
cp "$anchors/hf_qlora_bench.py" .devbuild/
[ -d .devbuild/bnb/site ] || bash "$anchors/fetch_bnb.sh" .devbuild/bnb
du -sh .devbuild/*
