#!/usr/bin/env bash
# Puts bitsandbytes (for scripts/peers/hf_qlora_bench.py on a GPU machine) into DIR/site, keeping only the CUDA 13.0
# and CPU libraries so that the folder stays small enough to carry. Usage: fetch_bnb.sh DIR   (then PYTHONPATH=DIR/site)
set -euo pipefail
dir=${1:?usage: fetch_bnb.sh DIR}
mkdir -p "$dir/wheel" "$dir/site"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  -d "$dir/wheel" bitsandbytes==0.50.2
python3 -m zipfile -e "$dir"/wheel/bitsandbytes-*.whl "$dir/site"
find "$dir/site/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name '*_cuda130.so' ! -name '*_cpu.so' -delete
rm -rf "$dir/wheel"
du -sh "$dir/site"
