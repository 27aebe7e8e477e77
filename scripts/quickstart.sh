#!/usr/bin/env bash
# The main job, from a fresh clone: fetch the real Gemma 3 270M, fine-tune it with QLoRA (NF4 base) on CPU on
# the small question/answer task shipped in configs/data/, and show the held-out eval loss before and after
# and the same held-out question answered by the base model and by the fine-tuned one.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/quickstart}
echo "== fetching the model (cached after the first run)"
model=$(bash scripts/fetch_model.sh)
echo "== building"
cargo build --release -q -p lapidary
bin=./target/release/lapidary
echo "== fine-tuning (configs/gemma-3-270m-qlora.toml) into $out"
$bin train configs/gemma-3-270m-qlora.toml --set "model.path=\"$model\"" --set "output.dir=\"$out\"" --overwrite
# Before/after: the trainer evaluates the held-out split at step 0 and at every eval_every.
read -r before after steps < <(python3 - "$out/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ev = [r for r in rows if "eval_loss" in r]
print(ev[0]["eval_loss"], ev[-1]["eval_loss"], ev[-1]["step"])
PY
)
q=$(python3 -c 'import json;print(json.loads(open("configs/data/qa_eval.jsonl").readline())["prompt"])')
base=$($bin generate --model "$model" --prompt "$q" --max-new-tokens 16)
tuned=$($bin generate --model "$model" --quant nf4 --adapter "$out/adapter" --prompt "$q" --max-new-tokens 16)
printf '\n| held-out eval loss (configs/data/qa_eval.jsonl) | value |\n|---|---|\n'
printf '| base model (step 0) | %.4f |\n| after %s QLoRA steps | %.4f |\n\n' "$before" "$steps" "$after"
printf 'prompt: %s\nbase:   %s\ntuned:  %s\n\n' "$q" "${base//$'\n'/ }" "${tuned//$'\n'/ }"
echo "adapter (PEFT format): $out/adapter   loss curve: $out/loss.png   metrics: $out/metrics.jsonl"
