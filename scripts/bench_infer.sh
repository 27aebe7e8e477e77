#!/usr/bin/env bash
# Eval and generation speed of lapidary against llama.cpp (`llama-bench`, built by scripts/llama_cpp.sh) and
# transformers (CPU, f32) on the real Gemma 3 270M GGUF, all measured in the same run, interleaved, on all
# cores. Prints a markdown table, or with --json one JSON line per (system, what) for scripts/bench_cpu.sh.
# usage: scripts/bench_infer.sh [PYTHON] [--json]   (PYTHON: one with torch + transformers + gguf)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-python3}
json=${2:-}
model=$(bash scripts/fetch_model.sh)
llama=$(bash scripts/llama_cpp.sh "$py")
cargo build --release -q -p lapidary
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# 8 rows of about 92 tokens of plain English.
para="The river ran slowly through the valley, past the old mill and the stone bridge where children fished in summer. Farmers brought their grain to the market on the first day of every month, and the town grew around that market square."
for i in 1 2 3 4 5 6 7 8; do printf '{"text": "%s %s"}\n' "$para" "$para" >> "$tmp/rows.jsonl"; done
prompt="Write a short story about a lighthouse keeper."
threads=$(nproc)
# Twice each, interleaved; the faster of the two is reported (the machine's speed drifts).
for round in 1 2; do
  ./target/release/lapidary eval --model "$model" --data "$tmp/rows.jsonl" --json > "$tmp/eval$round.json"
  ./target/release/lapidary generate --model "$model" --prompt "$prompt" --max-new-tokens 64 --json > "$tmp/gen$round.json"
  "$llama/llama-bench" -m "$model" -t "$threads" -p 256 -n 64 -r 3 -o json > "$tmp/llama$round.json" 2>/dev/null
done
"$py" scripts/bench_infer_transformers.py "$model" "$tmp/rows.jsonl" "$prompt" 64 2>/dev/null | tail -n 1 > "$tmp/hf.json"
"$py" - "$tmp" "$json" "$threads" <<'PY'
import json, sys
tmp, mode, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
load = lambda n: json.load(open(f"{tmp}/{n}"))
e = max((load(f"eval{r}.json") for r in (1, 2)), key=lambda d: d["tokens_per_s"])
g = max((load(f"gen{r}.json") for r in (1, 2)), key=lambda d: d["decode_tokens_per_s"])
ll = [t for r in (1, 2) for t in load(f"llama{r}.json")]
pp = max(t["avg_ts"] for t in ll if t["n_prompt"] > 0)
tg = max(t["avg_ts"] for t in ll if t["n_gen"] > 0)
p = load("hf.json")
rows = [dict(system="lapidary", what="eval", tokens_per_s=e["tokens_per_s"], loss=e["loss"]),
        # decode: the tokens after the first, one forward pass each, as llama-bench's tg times them;
        # with_prompt: all 64 new tokens over the whole call, prompt included, as transformers' is timed.
        dict(system="lapidary", what="generate", tokens_per_s=g["decode_tokens_per_s"],
             with_prompt_tokens_per_s=g["tokens_per_s"]),
        dict(system="llama.cpp", what="eval", tokens_per_s=pp, threads=threads, test="pp256"),
        dict(system="llama.cpp", what="generate", tokens_per_s=tg, threads=threads, test="tg64"),
        dict(system="transformers", what="eval", tokens_per_s=p["eval_tokens_per_s"], loss=p["eval_loss"],
             threads=p["threads"]),
        dict(system="transformers", what="generate", tokens_per_s=p["gen_tokens_per_s"], threads=p["threads"])]
if mode == "--json":
    for r in rows:
        print(json.dumps(r))
    sys.exit(0)
print(f"| what | lapidary (flex, f32 activations, the file's blocks) | llama.cpp ({threads} threads) | ratio | transformers (torch f32, {p['threads']} threads) | ratio |")
print("|---|---|---|---|---|---|")
print(f"| eval tokens/s (lapidary: {e['tokens']} tokens in 8 rows; llama.cpp: pp256) | {e['tokens_per_s']:.1f} | {pp:.1f} | {e['tokens_per_s']/pp:.2f}x | {p['eval_tokens_per_s']:.1f} | {e['tokens_per_s']/p['eval_tokens_per_s']:.2f}x |")
print(f"| greedy generation, decode tokens/s ({g['new_tokens'] - 1} after the first; llama.cpp: tg64) | {g['decode_tokens_per_s']:.1f} | {tg:.1f} | {g['decode_tokens_per_s']/tg:.2f}x | | |")
print(f"| greedy generation tokens/s with the prompt ({g['new_tokens']} new) | {g['tokens_per_s']:.1f} | | | {p['gen_tokens_per_s']:.1f} | {g['tokens_per_s']/p['gen_tokens_per_s']:.2f}x |")
print(f"| eval loss (sanity) | {e['loss']:.5f} | | | {p['eval_loss']:.5f} | |")
PY
