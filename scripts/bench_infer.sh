#!/usr/bin/env bash
# Eval and generation speed of lapidary against transformers (CPU, f32) on the real Gemma 3 270M, measured in
# the same run. Prints a markdown table, or with --json one JSON line per (system, what) for
# scripts/bench_cpu.sh.
# usage: scripts/bench_infer.sh [PYTHON] [--json]   (PYTHON: one with torch + transformers + gguf)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-python3}
json=${2:-}
model=$(bash scripts/fetch_model.sh)
cargo build --release -q -p lapidary
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# 8 rows of about 128 tokens of plain English.
para="The river ran slowly through the valley, past the old mill and the stone bridge where children fished in summer. Farmers brought their grain to the market on the first day of every month, and the town grew around that market square."
for i in 1 2 3 4 5 6 7 8; do printf '{"text": "%s %s"}\n' "$para" "$para" >> "$tmp/rows.jsonl"; done
prompt="Write a short story about a lighthouse keeper."
ours_eval=$(./target/release/lapidary eval --model "$model" --data "$tmp/rows.jsonl" --json)
ours_gen=$(./target/release/lapidary generate --model "$model" --prompt "$prompt" --max-new-tokens 64 --json)
hf=$("$py" scripts/bench_infer_transformers.py "$model" "$tmp/rows.jsonl" "$prompt" 64 2>/dev/null | tail -n 1)
"$py" - "$ours_eval" "$ours_gen" "$hf" "$json" <<'PY'
import json, sys
e, g, p = (json.loads(a) for a in sys.argv[1:4])
if sys.argv[4] == "--json":
    for r in [dict(system="lapidary", what="eval", tokens_per_s=e["tokens_per_s"], loss=e["loss"]),
              dict(system="lapidary", what="generate", tokens_per_s=g["tokens_per_s"]),
              dict(system="transformers", what="eval", tokens_per_s=p["eval_tokens_per_s"], loss=p["eval_loss"],
                   threads=p["threads"]),
              dict(system="transformers", what="generate", tokens_per_s=p["gen_tokens_per_s"], threads=p["threads"])]:
        print(json.dumps(r))
    sys.exit(0)
print(f"| what | lapidary (flex, f32) | transformers (torch f32, {p['threads']} threads) | ratio |")
print("|---|---|---|---|")
print(f"| eval tokens/s ({e['tokens']} tokens, 8 rows) | {e['tokens_per_s']:.1f} | {p['eval_tokens_per_s']:.1f} | {e['tokens_per_s']/p['eval_tokens_per_s']:.2f}x |")
print(f"| greedy generation tokens/s ({g['new_tokens']} new) | {g['tokens_per_s']:.1f} | {p['gen_tokens_per_s']:.1f} | {g['tokens_per_s']/p['gen_tokens_per_s']:.2f}x |")
print(f"| eval loss (sanity) | {e['loss']:.5f} | {p['eval_loss']:.5f} | |")
PY
