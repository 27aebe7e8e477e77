#!/usr/bin/env bash
# Packs what a GPU session takes besides the working tree (the ignored .devbuild), built HERE, since the GPU machine
# has no Rust toolchain: the lapidary binary and the tests/gpu.rs binary built with --features cuda
# (stripped and xz-compressed: ~80 MB each otherwise, over the 64 MiB a session carries), the transformers + PEFT +
# bitsandbytes script (scripts/peers/hf_qlora_bench.py), and bitsandbytes for it. Then, on the GPU machine, in
# one call of at most 600 s: `RUN_ID=... BUDGET=520 bash scripts/bench_gpu.sh check tests pairs mem` (see
# scripts/bench_gpu.sh).
#
# usage: scripts/gpu_pack.sh
# env:   CARGO_TARGET_DIR  default target
#        ANCHORS           the folder holding hf_qlora_bench.py and fetch_bnb.sh, from the repository root
#                          (default scripts/peers)
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
anchors=${ANCHORS:-scripts/peers}
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
