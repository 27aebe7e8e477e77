#!/usr/bin/env bash
# CPU training benchmark: `lapidary bench` and transformers + PEFT (scripts/peers/hf_qlora_bench.py --device cpu:
# `--quant nf4` through bitsandbytes' CPU path, `--quant none` plain f32) on the same shapes, one after the
# other in the same run, on an otherwise idle machine. Every result is appended as a JSON line to
# docs/bench/cpu.jsonl; scripts/bench_table.py then rewrites the tables in docs/benchmarks.md.
#
# usage: scripts/bench_cpu.sh [PART...]   PART: train270 train2b scaling infer bf16 (default: all but bf16)
# env:   PYTHON   a python with torch, transformers, peft, bitsandbytes (default python3)
#        ANCHOR   the transformers + PEFT + bitsandbytes script, from the repository root
#                 (default scripts/peers/hf_qlora_bench.py)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
anchor=${ANCHOR:-scripts/peers/hf_qlora_bench.py}
out=docs/bench/cpu.jsonl
parts=${*:-train270 train2b scaling infer}
cpu=$(lscpu | sed -n 's/^Model name: *//p')
cargo build --release -q -p lapidary
bin=./target/release/lapidary
run_id=$(date -u +%Y-%m-%dT%H:%MZ)
tag() { "$py" -c 'import json,sys; r=json.loads(sys.argv[1]); r.update(run=sys.argv[2], case=sys.argv[3]); print(json.dumps(r))' "$1" "$run_id" "$2"; }
ours() { # case model seq batch steps [extra bench flags]
  local r; r=$($bin bench --model "$2" --seq "$3" --batch "$4" --warmup 1 --steps "$5" --quant nf4 --json "${@:6}")
  tag "$r" "$1" | tee -a "$out"
}
peer() { # case model seq batch steps quant [extra reference flags]
  local r; r=$("$py" "$anchor" --device cpu --model "$2" --seq "$3" --batch "$4" --warmup 1 --steps "$5" --quant "$6" "${@:7}" 2>/dev/null | tail -n 1) || true
  case $r in
    "{"*) ;;
    *) echo "hf_qlora_bench.py failed: $2 seq $3 batch $4 quant $6" >&2
       r="{\"system\": \"hf-peft-bnb\", \"model\": \"$2\", \"seq\": $3, \"batch\": $4, \"quant\": \"$6\", \"failed\": true}" ;;
  esac
  tag "$r" "$1" | tee -a "$out"
}
for p in $parts; do
  case $p in
    train270)  # the headline shape: Gemma 3 270M, seq 256 x batch 4; ours and the two transformers + PEFT
               # settings (nf4, none) are interleaved twice, since this machine's speed drifts (the table
               # takes each one's best)
      for rep in 1 2; do
        ours train270 gemma3-270m 256 4 3
        peer train270 gemma3-270m 256 4 3 nf4
        peer train270 gemma3-270m 256 4 3 none
      done
      ours train270 gemma3-270m 256 4 3 --gc
      ours train270 gemma3-270m 256 4 3 --backend ndarray ;;
    train2b)   # Gemma 2B, seq 256 x batch 1; interleaved twice, as train270 (one run of ours has measured
               # anything from 5.9 to 10.6 tokens/s on this machine, minutes apart)
      for rep in 1 2; do
        ours train2b gemma-2b 256 1 2
        peer train2b gemma-2b 256 1 2 nf4
        peer train2b gemma-2b 256 1 2 none
      done ;;
    scaling)   # cost against sequence length, Gemma 3 270M, batch 1
      for s in 256 512 1024 2048; do
        ours scaling gemma3-270m "$s" 1 2
        peer scaling gemma3-270m "$s" 1 2 nf4
      done ;;
    bf16)      # bf16 on CPU (on a CPU with AVX512-BF16, bf16 autocast is the reference's fast setting): ours
               # in bf16 and f32, the reference in f32 and with bf16 autocast, plain and NF4; interleaved twice
      echo "cpu: $cpu; flags: $(grep -o -w -E 'avx512_bf16|amx_bf16|avx512f|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')" >&2
      for rep in 1 2; do
        ours bf16 gemma3-270m 256 4 3 --dtype bf16
        peer bf16 gemma3-270m 256 4 3 nf4 --autocast bf16
        ours bf16 gemma3-270m 256 4 3
        peer bf16 gemma3-270m 256 4 3 none --autocast bf16
        peer bf16 gemma3-270m 256 4 3 none --autocast off
        peer bf16 gemma3-270m 256 4 3 nf4 --autocast off
      done ;;
    infer)     # eval and generation on the real 270M against transformers
      bash scripts/bench_infer.sh "$py" --json | while read -r l; do tag "$l" infer | tee -a "$out"; done ;;
    *) echo "unknown part $p (train270 train2b scaling infer bf16)" >&2; exit 2 ;;
  esac
done
"$py" scripts/bench_table.py "$out" docs/benchmarks.md
