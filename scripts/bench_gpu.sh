#!/usr/bin/env bash
# GPU training benchmark: `lapidary bench --backend cuda` and transformers + PEFT + bitsandbytes
# (scripts/peers/hf_qlora_bench.py: NF4 double quant, bf16 compute, sdpa) on the Gemma-2B shape, one after the
# other in the same GPU session. Every result is appended as a JSON line to docs/bench/gpu.jsonl (and to
# $OUT/gpu.jsonl when OUT names a folder to bring back); scripts/bench_table.py renders them.
#
# It builds nothing (the GPU machine has no Rust toolchain). Here, once: `bash scripts/gpu_pack.sh` (the cuda
# binaries stripped and xz-compressed into .devbuild, ~10 MB each, scripts/peers/hf_qlora_bench.py, bitsandbytes);
# then on the GPU machine (a copy of this working tree plus the ignored .devbuild), one part or a few per call
# (10 min each):
#   bash scripts/bench_gpu.sh check tests          # the GPU, the libraries, every backend path; tests/gpu.rs
#   CASES="512x8:gc 1024x4:gc" bash scripts/bench_gpu.sh ours peer
# or everything in one call that stops starting runs after BUDGET seconds (for ~15 minutes of GPU time):
#   RUN_ID=R BUDGET=520 bash scripts/bench_gpu.sh check tests pairs mem     # a call of at most 600 s
#
# usage: scripts/bench_gpu.sh [PART...]   PART: check tests ours peer pairs paths mem (default: ours peer)
#   check  nvidia-smi, where cuBLAS/NVRTC/CUPTI/CUDA come from, a 270M-shape step with each switch of
#          lapidary_model::cuda (cuBLAS on CubeCL's stream / with host waits, f32 / TF32 / Burn's matmul;
#          device / host dequantization): the losses should agree
#   tests  the carried tests/gpu.rs binary (TESTBIN, default .devbuild/gpu-tests[.xz])
#   ours   lapidary on each case of CASES;  peer  transformers + PEFT + bitsandbytes on each case of CASES
#   pairs  for each case of CASES, lapidary then transformers + PEFT + bitsandbytes (a cut-short run still has
#          comparable pairs)
#   paths  lapidary on the first case with LAPIDARY_CUBLAS_STREAM=sync, LAPIDARY_CUBLAS=0, =tf32,
#          LAPIDARY_DEQUANT=host and in f32 (what each buys)
#   mem    lapidary on the first case for MEM_STEPS steps, memory every 10 (`--mem-trace`): flat or growing?
# env:   BIN     the lapidary binary built with --features cuda (default .devbuild/lapidary, or that .xz)
#        PYTHON  a python with torch, transformers, peft (default python3; the GPU machine's has them)
#        ANCHOR  the transformers + PEFT + bitsandbytes script, from the repository root (default
#                .devbuild/hf_qlora_bench.py, else scripts/peers/hf_qlora_bench.py)
#        BNB     a folder holding bitsandbytes (scripts/peers/fetch_bnb.sh's DIR/site; default .devbuild/bnb/site)
#        CASES   SEQxBATCH[:gc] ... (default: the benchmark's five: 512x8:gc 1024x4:gc 2048x2:gc 4096x1:gc 1024x4)
#        MODEL   published shape (default gemma-2b);  WARMUP, STEPS (default 2, 5);  MEM_STEPS (default 200)
#        DTYPE   what ours computes in (default bf16, as hf_qlora_bench.py on a GPU: bnb_4bit_compute_dtype=bfloat16)
#        LIMIT   seconds one run of ours or hf_qlora_bench.py may take before it is killed and recorded as failed
#                (default 240; `check` runs get 60; `mem` gets MEM_LIMIT, default 300): a hang must not eat a
#                whole device call
#        BUDGET  seconds after the start past which no further run begins (default: no limit); runs skipped
#                for it are listed at the end
# Results go to $OUT/gpu.jsonl as they come (not only at the end), and everything printed to $OUT/log.txt, so
# that a call killed at its time limit still brings back what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
bin=${BIN:-.devbuild/lapidary}
anchor=${ANCHOR:-.devbuild/hf_qlora_bench.py}
[ -f "$anchor" ] || anchor=scripts/peers/hf_qlora_bench.py
bnb=${BNB:-.devbuild/bnb/site}
model=${MODEL:-gemma-2b}
cases=${CASES:-512x8:gc 1024x4:gc 2048x2:gc 4096x1:gc 1024x4}
warmup=${WARMUP:-2}
steps=${STEPS:-5}
mem_steps=${MEM_STEPS:-200}
dtype=${DTYPE:-bf16}
limit=${LIMIT:-240}
mem_limit=${MEM_LIMIT:-300}
budget=${BUDGET:-0}
skipped=()
# False (and the run noted as skipped) once BUDGET seconds have passed.
in_budget() {
  if [ "$budget" -gt 0 ] && [ "$SECONDS" -ge "$budget" ]; then skipped+=("$*"); return 1; fi
}
out=docs/bench/gpu.jsonl
parts=${*:-ours peer}
run_id=${RUN_ID:-$(date -u +%Y-%m-%dT%H:%MZ)}
testbin=${TESTBIN:-.devbuild/gpu-tests}
unxz() { # FILE.xz -> an executable copy in a fresh temporary folder, printed
  local dst; dst=$(mktemp -d)/$(basename "$1" .xz)
  "$py" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$dst"
  chmod +x "$dst"; echo "$dst"
}
if [ ! -x "$bin" ] && [ -f "$bin.xz" ]; then bin=$(unxz "$bin.xz"); fi
[ -x "$bin" ] || { echo "no lapidary binary at $bin (build it with --features cuda and carry it; see the header)" >&2; exit 2; }
mkdir -p docs/bench
results=("$out")
if [ -n "${OUT:-}" ]; then
  results+=("$OUT/gpu.jsonl")
  exec > >(tee -a "$OUT/log.txt") 2>&1
fi

# cuBLAS, NVRTC and CUPTI (lapidary_model::cuda::stream) are loaded at run time: the CUDA toolkit's, else the
# pip wheels' next to torch.
libdirs=$({ ls -d /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/extras/CUPTI/lib64 \
              2>/dev/null || true
            "$py" -c 'import glob, os, site
for s in site.getsitepackages():
    for lib in ("libcublas.so*", "libnvrtc.so*", "libcupti.so*"):
        for f in glob.glob(os.path.join(s, "nvidia", "**", lib), recursive=True):
            print(os.path.dirname(f))' 2>/dev/null || true; } | sort -u | paste -sd: -)
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

tag() { "$py" -c 'import json,sys; r=json.loads(sys.argv[1]); r.update(run=sys.argv[2], case=sys.argv[3]); print(json.dumps(r))' "$1" "$run_id" "$2"; }
flags() { # SEQxBATCH[:gc] -> bench flags
  local c=$1 s b; s=${c%%x*}; b=${c#*x}; b=${b%%:*}
  echo "--seq $s --batch $b"; [[ $c == *:gc ]] && echo "--gc"; return 0
}
ours() { # case [env assignments...] -- [extra bench flags]
  local case=$1; shift; local envs=()
  in_budget "ours $case $*" || return 0
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do envs+=("$1"); shift; done; [ $# -gt 0 ] && shift
  local r
  if r=$(timeout -k 10 "$limit" env "${envs[@]}" "$bin" bench --model "$model" --backend cuda --quant nf4 --warmup "$warmup" \
      --steps "$steps" --dtype "$dtype" $(flags "$case") --json "$@"); then
    r=$("$py" -c 'import json,sys; r=json.loads(sys.argv[1]); r["env"]=sys.argv[2:]; print(json.dumps(r))' "$r" "${envs[@]}")
  else
    echo "lapidary failed: $case ${envs[*]}" >&2
    r="{\"system\": \"lapidary\", \"model\": \"$model\", \"case_flags\": \"$case\", \"failed\": true}"
  fi
  tag "$r" "$case" | tee -a "${results[@]}"
}
peer() { # case
  local case=$1 r
  in_budget "peer $case" || return 0
  r=$(PYTHONPATH="$bnb${PYTHONPATH:+:$PYTHONPATH}" timeout -k 10 "$limit" "$py" "$anchor" --model "$model" --warmup "$warmup" \
      --steps "$steps" $(flags "$case") | tail -n 1) || true
  case $r in
    "{"*) ;;
    *) echo "hf_qlora_bench.py failed: $case" >&2
       r="{\"system\": \"hf-peft-bnb\", \"model\": \"$model\", \"case_flags\": \"$case\", \"failed\": true}" ;;
  esac
  tag "$r" "$case" | tee -a "${results[@]}"
}
first=${cases%% *}
for p in $parts; do
  case $p in
    check)
      nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv || true
      echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
      ls /usr/local/cuda/include/cuda.h 2>/dev/null || echo "no /usr/local/cuda/include (set CUDA_PATH)"
      for e in LAPIDARY_CUBLAS=1 LAPIDARY_CUBLAS_STREAM=sync LAPIDARY_CUBLAS=tf32 LAPIDARY_CUBLAS=0 LAPIDARY_DEQUANT=host; do
        echo "== $e"
        timeout -k 5 60 env "$e" "$bin" bench --model gemma3-270m --backend cuda --seq 64 --batch 1 --warmup 1 --steps 2 --json || true
        timeout -k 5 60 env "$e" "$bin" bench --model gemma3-270m --backend cuda --seq 64 --batch 1 --warmup 1 --steps 2 --json \
          --dtype bf16 || true
      done
      "$bin" bench --model gemma3-270m --backend flex --seq 64 --batch 1 --warmup 1 --steps 2 --json ;;
    tests)
      if [ ! -x "$testbin" ] && [ -f "$testbin.xz" ]; then testbin=$(unxz "$testbin.xz"); fi
      [ -x "$testbin" ] || { echo "no test binary at $testbin (see the header)" >&2; exit 2; }
      # The test binary has its build machine's paths compiled in; these two say where things are here.
      LAPIDARY_REPO=$PWD LAPIDARY_BIN=$bin timeout -k 10 "$((2 * limit))" "$testbin" --test-threads 1 --nocapture || true ;;
    ours) for c in $cases; do ours "$c"; done ;;
    peer) for c in $cases; do peer "$c"; done ;;
    pairs) for c in $cases; do ours "$c"; peer "$c"; done ;;
    paths)
      for e in LAPIDARY_CUBLAS_STREAM=sync LAPIDARY_CUBLAS=0 LAPIDARY_CUBLAS=tf32 LAPIDARY_DEQUANT=host; do ours "$first" "$e"; done
      dtype=f32 ours "$first" ;;
    mem) steps=$mem_steps limit=$mem_limit ours "$first" -- --mem-trace 10 ;;
    *) echo "unknown part $p (check tests ours peer pairs paths mem)" >&2; exit 2 ;;
  esac
done
echo "done in ${SECONDS}s"
if [ ${#skipped[@]} -gt 0 ]; then echo "skipped past BUDGET=${budget}s:"; printf '  %s\n' "${skipped[@]}"; fi
