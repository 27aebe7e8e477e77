#!/usr/bin/env bash
# A real SFT run, lapidary against TRL's SFTTrainer (scripts/peers/trl_sft_bench.py), in one run on this
# machine: the real Gemma 3 270M (the quickstart's GGUF, converted once to the transformers directory TRL
# loads; lapidary trains from the same directory), the quickstart's 240 prompt/completion rows, 20 steps of
# batch 4, max length 64, LoRA r=16 alpha=32 dropout=0.05 on all seven projections, AdamW 5e-4 cosine with 3
# warmup steps, completion-only loss, no packing, no evaluation. TRL in f32 and with bf16 autocast (its fast
# setting on CPUs with AVX512-BF16), plain and on a bitsandbytes NF4 base; lapidary on an NF4 base in f32 and
# bf16, and on the GGUF's own blocks (quant = "gguf", trained from the .gguf file itself; with CASES=gguf only
# that and the runs it is compared with: lapidary nf4 f32 and TRL's best). tokens/s = the non-padding tokens of the optimizer steps over their time, as each trainer reports it.
# Every result is appended as a JSON line to docs/bench/cpu.jsonl (case "sft").
#
# usage: scripts/bench_sft.sh      env: PYTHON (torch, transformers, peft, bitsandbytes, trl; default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
out=docs/bench/cpu.jsonl
run_id=$(date -u +%Y-%m-%dT%H:%MZ)
work=runs/bench_sft
mkdir -p "$work"
cargo build --release -q -p lapidary
bin=./target/release/lapidary
gguf=$(bash scripts/fetch_model.sh)
hf=$work/gemma-3-270m
[ -f "$hf/config.json" ] || $bin convert --model "$gguf" --out "$hf" --overwrite >/dev/null
data=configs/data/dates_train.jsonl
# The quickstart recipe without its evaluation (neither trainer evaluates here).
grep -v -E '^eval ?=' configs/gemma-3-270m-qlora.toml >"$work/recipe.toml"
tag() { "$py" -c 'import json,sys; r=json.loads(sys.argv[1]); r.update(run=sys.argv[2], case="sft", cpu=sys.argv[3]); print(json.dumps(r))' "$1" "$run_id" "$(lscpu | sed -n 's/^Model name: *//p')"; }
trl() { # quant bf16
  local r; r=$("$py" scripts/peers/trl_sft_bench.py --model "$hf" --data "$data" --steps 20 --batch 4 --max-len 64 \
    --quant "$1" --bf16 "$2" 2>/dev/null | tail -n 1) || r="{\"system\": \"trl-sft\", \"quant\": \"$1\", \"bf16\": \"$2\", \"failed\": true}"
  tag "$r" | tee -a "$out"
}
ours() { # compute dtype, quant (default nf4; gguf trains from the .gguf file)
  local q=${2:-nf4} m=$hf; [ "$q" = gguf ] && m=$gguf
  local r; r=$($bin train "$work/recipe.toml" --set "model.path=\"$m\"" --set "output.dir=\"$work/out-$1-$q\"" \
    --set "model.quant=\"$q\"" --set "model.compute_dtype=\"$1\"" --set "train.eval_every=0" --set "train.save_every=0" --set "train.eval_metrics=[\"loss\"]" \
    --set "output.tensorboard=false" --overwrite 2>"$work/train-$1-$q.log" | tail -n 1)
  r=$("$py" -c 'import json,sys; r=json.loads(sys.argv[1]); print(json.dumps({"system": "lapidary", "quant": sys.argv[4], "dtype": sys.argv[2], "compute": sys.argv[3], "steps": r.get("steps"), "tokens": r.get("tokens"), "train_seconds": r.get("train_seconds"), "tokens_per_s": r.get("tokens_per_s"), "peak_gib": r.get("peak_rss_mib", 0) / 1024 or None, "last_loss": r.get("train_loss")}))' \
    "$r" "$1" "$(sed -n 's/^training .*, flex: \(.*\)) with .*/\1/p' "$work/train-$1-$q.log" | head -n 1)" "$q")
  tag "$r" | tee -a "$out"
}
# Interleaved, twice: this machine's speed drifts (the table takes each one's best).
for rep in $(seq "${REPS:-2}"); do
  if [ "${CASES:-all}" = gguf ]; then
    ours f32 gguf
    ours f32 nf4
    trl none on
    trl none off
    continue
  fi
  ours f32 gguf
  ours bf16
  trl none on
  ours f32
  trl nf4 on
  trl none off
done
