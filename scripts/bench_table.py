"""Renders docs/bench/cpu.jsonl (written by scripts/bench_cpu.sh) as the CPU tables of docs/benchmarks.md,
replacing what is between `<!-- bench_cpu:begin -->` and `<!-- bench_cpu:end -->`. For each case it uses the
newest run that has it, so every table compares numbers measured in one run.

usage: python scripts/bench_table.py docs/bench/cpu.jsonl docs/benchmarks.md
"""
import json
import sys

BEGIN, END = "<!-- bench_cpu:begin -->", "<!-- bench_cpu:end -->"


def newest(rows, case):
    rows = [r for r in rows if r.get("case") == case]
    if not rows:
        return []
    run = max(r["run"] for r in rows)
    return [r for r in rows if r["run"] == run]


def best_of_repeats(rows):
    """One row per setting: the fastest of its repeats (with its own memory)."""
    best = {}
    for r in rows:
        key = (r["system"], r.get("backend"), r.get("gc"), r["quant"], r["seq"], r["batch"])
        if key not in best or r["tokens_per_s"] > best[key]["tokens_per_s"]:
            best[key] = dict(r, repeats=best.get(key, {}).get("repeats", 0) + 1)
        else:
            best[key]["repeats"] += 1
    return list(best.values())


def train_table(rows, title):
    rows = best_of_repeats(rows)
    ours = [r for r in rows if r["system"] == "lapidary"]
    peers = [r for r in rows if r["system"] != "lapidary"]
    main = [r for r in ours if r["backend"] == "flex" and not r["gc"]]
    if not main or not peers:
        return []
    o = main[-1]
    best = max(peers, key=lambda r: r["tokens_per_s"])
    lean = min(peers, key=lambda r: r["peak_gib"])
    out = [f"### {title}", "",
           f"Run {o['run']}, `{o['device']}`; seq {o['seq']} x batch {o['batch']}, LoRA r={o['rank']} on all seven "
           f"projections, AdamW; {o['warmup']} warm-up + {o['steps']} timed steps per measurement; where a "
           f"setting was measured more than once (interleaved with the others), the fastest is shown.", "",
           "| system | base | tokens/s | peak resident GiB | last loss |", "|---|---|---|---|---|"]
    for r in ours + peers:
        if r["system"] == "lapidary":
            name = f"lapidary ({r['backend']}" + (", --gc" if r["gc"] else "") + ")"
        else:
            name = "transformers + PEFT" + (" + bitsandbytes" if r["quant"] == "nf4" else "")
        out.append(f"| {name} | {r['quant']} | {r['tokens_per_s']:.1f} | {r['peak_gib']:.2f} | {r['loss']} |")
    out += ["", f"lapidary (flex, no --gc) against the peer: "
                f"**tokens/s {o['tokens_per_s'] / best['tokens_per_s']:.2f}x** the peer's best "
                f"({best['quant']}); **peak memory {o['peak_gib'] / lean['peak_gib']:.2f}x** the peer's lowest "
                f"({lean['quant']}).", ""]
    return out


def scaling_table(rows):
    ours = {r["seq"]: r for r in rows if r["system"] == "lapidary"}
    peer = {r["seq"]: r for r in rows if r["system"] != "lapidary"}
    seqs = sorted(set(ours) & set(peer))
    if not seqs:
        return []
    r0 = ours[seqs[0]]
    out = ["### Cost against sequence length: Gemma 3 270M shape, batch 1", "",
           f"Run {r0['run']}, `{r0['device']}`; lapidary nf4 against transformers + PEFT + bitsandbytes nf4.", "",
           "| seq | lapidary tokens/s | peer tokens/s | ratio | lapidary s/step | peer s/step | lapidary GiB | peer GiB |",
           "|---|---|---|---|---|---|---|---|"]
    for s in seqs:
        o, p = ours[s], peer[s]
        out.append(f"| {s} | {o['tokens_per_s']:.1f} | {p['tokens_per_s']:.1f} | "
                   f"{o['tokens_per_s'] / p['tokens_per_s']:.2f}x | {s / o['tokens_per_s']:.2f} | "
                   f"{s / p['tokens_per_s']:.2f} | {o['peak_gib']:.2f} | {p['peak_gib']:.2f} |")
    return out + [""]


def infer_table(rows):
    get = {(r["system"], r["what"]): r for r in rows}
    need = [("lapidary", "eval"), ("transformers", "eval"), ("lapidary", "generate"), ("transformers", "generate")]
    if not all(k in get for k in need):
        return []
    le, te, lg, tg = (get[k] for k in need)
    return ["### Evaluation and generation: the real Gemma 3 270M (GGUF), f32", "",
            f"Run {le['run']}; `scripts/bench_infer.sh`: eval of 8 rows of ~92 tokens, each row alone; greedy "
            "generation of 64 new tokens with the KV cache. Both load the same GGUF.", "",
            "| what | lapidary (flex) | transformers (torch f32) | ratio |", "|---|---|---|---|",
            f"| eval tokens/s | {le['tokens_per_s']:.1f} | {te['tokens_per_s']:.1f} | "
            f"{le['tokens_per_s'] / te['tokens_per_s']:.2f}x |",
            f"| generation tokens/s | {lg['tokens_per_s']:.1f} | {tg['tokens_per_s']:.1f} | "
            f"{lg['tokens_per_s'] / tg['tokens_per_s']:.2f}x |",
            f"| eval loss (sanity) | {le['loss']:.5f} | {te['loss']:.5f} | |", ""]


def main():
    src, doc = sys.argv[1], sys.argv[2]
    rows = [r for r in (json.loads(l) for l in open(src) if l.strip()) if not r.get("failed")]
    body = ["## CPU: lapidary against transformers + PEFT (+ bitsandbytes), measured in one run", "",
            "Regenerate with `PYTHON=/path/to/python bash scripts/bench_cpu.sh` (raw results: "
            "`docs/bench/cpu.jsonl`).", ""]
    body += train_table(newest(rows, "train270"), "Training: Gemma 3 270M shape, seq 256 x batch 4")
    body += train_table(newest(rows, "train2b"), "Training: Gemma 2B shape, seq 256 x batch 1")
    body += scaling_table(newest(rows, "scaling"))
    body += infer_table(newest(rows, "infer"))
    text = open(doc).read()
    block = BEGIN + "\n" + "\n".join(body) + "\n" + END
    if BEGIN in text and END in text:
        a, b = text.index(BEGIN), text.index(END) + len(END)
        text = text[:a] + block + text[b:]
    else:
        head, _, rest = text.partition("\n")
        text = head + "\n\n" + block + "\n" + rest
    open(doc, "w").write(text)


if __name__ == "__main__":
    main()
