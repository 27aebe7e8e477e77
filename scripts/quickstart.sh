#!/usr/bin/env bash
# The main job, from a fresh clone: fetch the real Gemma 3 270M, measure it on a small held-out task, fine-tune
# it with QLoRA (NF4 base) on CPU, measure again, merge the adapter into the base, and print a before/after
# table and one held-out prompt answered by the base model and by the merged one.
#
# The task (configs/data/dates_*.jsonl, written by scripts/make_quickstart_data.py): write an ISO date out in
# words, "Date: 1967-10-28\nWritten out:" -> "October 28, 1967". The 24 eval dates never occur in the 240
# training rows. Accuracy is greedy exact match (`lapidary eval --metric exact_match`); the loss is the mean
# next-token loss of the answers, as the trainer computes it.
#
# Environment: OUT (default runs/quickstart), LAPIDARY_CACHE (where the model is cached).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/quickstart}
recipe=configs/gemma-3-270m-qlora.toml
data=configs/data/dates_eval.jsonl
# The trainer's exact_match settings (the recipe's eval_max_new_tokens / eval_stop_at_newline), for lapidary eval.
em=(--metric exact_match --max-new-tokens 16 --stop-at-newline)
start=$SECONDS
elapsed() { printf '%dm%02ds' $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60)); }

echo "== fetching the model (cached after the first run)"
model=$(bash scripts/fetch_model.sh)
# Relative to the repository when it is inside it (the default cache), so the output names no machine path.
model=$(python3 -c 'import os, sys; p = os.path.relpath(sys.argv[1]); print(sys.argv[1] if p.startswith("..") else p)' "$model")
echo "== building"
cargo build --release -q -p lapidary
bin=./target/release/lapidary
mkdir -p "$out"

echo "== [$(elapsed)] evaluating the base model on $data"
$bin eval --model "$model" --data "$data" "${em[@]}" --predictions "$out/base_predictions.jsonl" --json \
    >"$out/base_eval.json"

echo "== [$(elapsed)] fine-tuning ($recipe) into $out"
echo "   the trainer measures the same rows (loss and exact match) before the first step, at step 10 and at the end"
$bin train "$recipe" --set "model.path=\"$model\"" --set "output.dir=\"$out\"" --overwrite >"$out/train.json"

echo "== [$(elapsed)] merging the adapter into the base: $out/merged"
$bin merge --model "$model" --adapter "$out/adapter" --out "$out/merged" --dtype bf16 --overwrite
echo "== [$(elapsed)] evaluating the merged model (a new process: no adapter, no quantization)"
$bin eval --model "$out/merged" --data "$data" "${em[@]}" --predictions "$out/merged_predictions.jsonl" --json \
    >"$out/merged_eval.json"

python3 - "$out" "$data" <<'PY'
import json, sys
out, data = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(f"{out}/metrics.jsonl") if l.strip()]
ev = [r for r in rows if "eval_exact_match" in r]
base, merged = json.load(open(f"{out}/base_eval.json")), json.load(open(f"{out}/merged_eval.json"))
n = base["examples"]
acc = lambda a: f"{round(a * n)}/{n} ({a:.0%})"
table = [
    ("base model (lapidary eval)", acc(base["accuracy"]), "-"),
    ("base model, NF4 (trainer, step 0)", acc(ev[0]["eval_exact_match"]), f"{ev[0]['eval_loss']:.4f}"),
    (f"after {ev[-1]['step']} QLoRA steps (trainer, NF4 + adapter)", acc(ev[-1]["eval_exact_match"]),
     f"{ev[-1]['eval_loss']:.4f}"),
    ("merged, bf16 (lapidary eval)", acc(merged["accuracy"]), "-"),
]
print(f"\n| held-out: {data} ({n} dates not in training) | exact match | eval loss |\n|---|---|---|")
for r in table:
    print("| " + " | ".join(r) + " |")
row = json.loads(open(data).readline())
pred = lambda f: json.loads(open(f).readline())["prediction"].strip()
print(f"\nprompt:  {row['prompt']!r}\nanswer:  {row['answer']}")
print(f"base:    {pred(f'{out}/base_predictions.jsonl')}\nmerged:  {pred(f'{out}/merged_predictions.jsonl')}\n")
train = json.load(open(f"{out}/train.json"))
print(f"training steps: {train['train_seconds']:.0f} s ({train['tokens_per_s']:.0f} tokens/s)", end="; ")
PY
echo "all: $(elapsed). adapter (PEFT format): $out/adapter   merged model: $out/merged"
echo "loss curve: $out/loss.png   metrics: $out/metrics.jsonl"
