"""Renders docs/bench/cpu.jsonl (written by scripts/bench_cpu.sh) as the CPU tables of docs/benchmarks.md,
replacing what is between `<!-- bench_cpu:begin -->` and `<!-- bench_cpu:end -->`. For each case it uses the
newest run that has it, so every table compares numbers measured in one run.

usage: python scripts/bench_table.py docs/bench/cpu.jsonl docs/benchmarks.md

With `--gpu`, renders docs/bench/gpu.jsonl (written by scripts/bench_gpu.sh) between `<!-- bench_gpu:begin -->`
and `<!-- bench_gpu:end -->` instead (see `render_gpu`):

usage: python scripts/bench_table.py --gpu docs/bench/gpu.jsonl docs/benchmarks.md
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
    refs = [r for r in rows if r["system"] != "lapidary"]  # transformers + PEFT (+ bitsandbytes)
    main = [r for r in ours if r["backend"] == "flex" and not r["gc"]]
    if not main or not refs:
        return []
    o = main[-1]
    best = max(refs, key=lambda r: r["tokens_per_s"])
    lean = min(refs, key=lambda r: r["peak_gib"])
    out = [f"### {title}", "",
           f"Run {o['run']}, `{o['device']}`; seq {o['seq']} x batch {o['batch']}, LoRA r={o['rank']} on all seven "
           f"projections, AdamW; {o['warmup']} warm-up + {o['steps']} timed steps per measurement; where a "
           f"setting was measured more than once (interleaved with the others), the fastest is shown.", "",
           "| system | base | tokens/s | peak resident GiB | last loss |", "|---|---|---|---|---|"]
    for r in ours + refs:
        if r["system"] == "lapidary":
            name = f"lapidary ({r['backend']}" + (", --gc" if r["gc"] else "") + ")"
        else:
            name = "transformers + PEFT" + (" + bitsandbytes" if r["quant"] == "nf4" else "")
        out.append(f"| {name} | {r['quant']} | {r['tokens_per_s']:.1f} | {r['peak_gib']:.2f} | {r['loss']} |")
    out += ["", f"lapidary (flex, no --gc) against transformers + PEFT: "
                f"**tokens/s {o['tokens_per_s'] / best['tokens_per_s']:.2f}x** its best "
                f"({best['quant']}); **peak memory {o['peak_gib'] / lean['peak_gib']:.2f}x** its lowest "
                f"({lean['quant']}).", ""]
    return out


def scaling_table(rows):
    ours = {r["seq"]: r for r in rows if r["system"] == "lapidary"}
    ref = {r["seq"]: r for r in rows if r["system"] != "lapidary"}  # transformers + PEFT + bitsandbytes
    seqs = sorted(set(ours) & set(ref))
    if not seqs:
        return []
    r0 = ours[seqs[0]]
    out = ["### Cost against sequence length: Gemma 3 270M shape, batch 1", "",
           f"Run {r0['run']}, `{r0['device']}`; lapidary nf4 against transformers + PEFT + bitsandbytes nf4.", "",
           "| seq | lapidary tokens/s | transformers tokens/s | ratio | lapidary s/step | transformers s/step "
           "| lapidary GiB | transformers GiB |",
           "|---|---|---|---|---|---|---|---|"]
    for s in seqs:
        o, p = ours[s], ref[s]
        out.append(f"| {s} | {o['tokens_per_s']:.1f} | {p['tokens_per_s']:.1f} | "
                   f"{o['tokens_per_s'] / p['tokens_per_s']:.2f}x | {s / o['tokens_per_s']:.2f} | "
                   f"{s / p['tokens_per_s']:.2f} | {o['peak_gib']:.2f} | {p['peak_gib']:.2f} |")
    return out + [""]


def generation_rows(lg, cg, tg, ratio, num):
    """Generation against llama.cpp at the decode rate and against transformers prompt included; rows
    recorded before the decode rate was (tokens/s prompt included only) keep the one row they had."""
    if "with_prompt_tokens_per_s" not in lg:
        return [f"| generation tokens/s | {num(lg)} | {num(cg)} | {ratio(lg, cg)} | {num(tg)} | {ratio(lg, tg)} |"]
    whole = dict(lg, tokens_per_s=lg["with_prompt_tokens_per_s"])
    return [f"| generation tokens/s, decode (llama.cpp: tg64) | {num(lg)} | {num(cg)} | {ratio(lg, cg)} | | |",
            f"| generation tokens/s, prompt included | {num(whole)} | | | {num(tg)} | {ratio(whole, tg)} |"]


def infer_table(rows):
    get = {(r["system"], r["what"]): r for r in rows}
    need = [("lapidary", "eval"), ("transformers", "eval"), ("lapidary", "generate"), ("transformers", "generate")]
    if not all(k in get for k in need):
        return []
    le, te, lg, tg = (get[k] for k in need)
    ce, cg = get.get(("llama.cpp", "eval")), get.get(("llama.cpp", "generate"))
    ratio = lambda a, b: f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x" if b else ""
    num = lambda r: f"{r['tokens_per_s']:.1f}" if r else "not measured"
    return ["### Evaluation and generation: the real Gemma 3 270M (GGUF)", "",
            f"Run {le['run']}; `scripts/bench_infer.sh`, all on every core, interleaved twice, the faster kept. "
            "lapidary (flex; by default a GGUF's own blocks, multiplied as stored with f32 activations): eval "
            "of 8 rows of ~92 tokens (packed into one forward pass), greedy generation of 64 new tokens with the "
            "KV cache. llama.cpp: `llama-bench` pp256 and tg64 on the same file (8-bit activations). "
            "transformers: torch f32, the same GGUF dequantized, each row alone. Generation is compared "
            "with llama.cpp at the decode rate (the tokens after the first, one forward pass each, as "
            "`tg` times them) and with transformers over the whole call, prompt included, as it is timed.", "",
            "| what | lapidary | llama.cpp | lapidary / llama.cpp | transformers | lapidary / transformers |",
            "|---|---|---|---|---|---|",
            f"| eval tokens/s | {num(le)} | {num(ce)} | {ratio(le, ce)} | {num(te)} | {ratio(le, te)} |",
            *generation_rows(lg, cg, tg, ratio, num),
            f"| eval loss (sanity) | {le['loss']:.5f} | | | {te['loss']:.5f} | |", ""]


def load_rows(src):
    """The JSON lines of `src`, failed runs left out."""
    return [r for r in (json.loads(l) for l in open(src) if l.strip()) if not r.get("failed")]


def splice(doc, begin, end, body, at_end):
    """Writes `body` between the markers `begin` and `end` of `doc`; without them, adds the marked block
    after the title line, or at the end when `at_end`."""
    text = open(doc).read()
    block = begin + "\n" + "\n".join(body) + "\n" + end
    if begin in text and end in text:
        a, b = text.index(begin), text.index(end) + len(end)
        text = text[:a] + block + text[b:]
    elif at_end:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        head, _, rest = text.partition("\n")
        text = head + "\n\n" + block + "\n" + rest
    open(doc, "w").write(text)


def main():
    if sys.argv[1] == "--gpu":
        return render_gpu(sys.argv[2], sys.argv[3])
    src, doc = sys.argv[1], sys.argv[2]
    rows = load_rows(src)
    body = ["## CPU: lapidary against transformers + PEFT (+ bitsandbytes), measured in one run", "",
            "Regenerate with `PYTHON=/path/to/python bash scripts/bench_cpu.sh` (raw results: "
            "`docs/bench/cpu.jsonl`).", ""]
    body += train_table(newest(rows, "train270"), "Training: Gemma 3 270M shape, seq 256 x batch 4")
    body += train_table(newest(rows, "train2b"), "Training: Gemma 2B shape, seq 256 x batch 1")
    body += scaling_table(newest(rows, "scaling"))
    body += infer_table(newest(rows, "infer"))
    splice(doc, BEGIN, END, body, at_end=False)


# GPU: lapidary --backend cuda against transformers + PEFT + bitsandbytes (scripts/bench_gpu.sh).

GPU_BEGIN, GPU_END = "<!-- bench_gpu:begin -->", "<!-- bench_gpu:end -->"
GPU_CASES = ["512x8:gc", "1024x4:gc", "2048x2:gc", "4096x1:gc", "1024x4"]  # the GPU benchmark's shapes, in order


def newest_of(rows, pred):
    """The newest row (by run, then by position in the file) that satisfies pred, or None."""
    best = None
    for i, r in enumerate(rows):
        if pred(r) and (best is None or (r["run"], i) >= (best[0]["run"], best[1])):
            best = (r, i)
    return best[0] if best else None


def gpu_shapes_table(rows):
    """Per case: the newest plain lapidary row (no switches, no memory trace) and the newest transformers + PEFT +
    bitsandbytes row."""
    out = ["| seq x batch | gc | lapidary tokens/s | transformers tokens/s | speed ratio (goal >= 3) | lapidary peak "
           "GiB (in use) | transformers peak GiB | memory ratio (goal <= 0.25) | runs |",
           "|---|---|---|---|---|---|---|---|---|"]
    cases = GPU_CASES + sorted({r["case"] for r in rows} - set(GPU_CASES))
    for case in cases:
        o = newest_of(rows, lambda r: r["case"] == case and r["system"] == "lapidary" and not r.get("env")
                      and "mem_trace" not in r)
        p = newest_of(rows, lambda r: r["case"] == case and r["system"] != "lapidary")
        if not o and not p:
            continue
        ot = f"{o['tokens_per_s']:.0f}" if o else "-"
        pt = f"{p['tokens_per_s']:.0f}" if p else "-"
        om = f"{o['peak_gib']:.2f} ({o.get('peak_in_use_gib', float('nan')):.2f})" if o else "-"
        pm = f"{p['peak_gib']:.2f}" if p else "-"
        speed = f"{o['tokens_per_s'] / p['tokens_per_s']:.2f}x" if o and p else "-"
        mem = f"{o['peak_gib'] / p['peak_gib']:.2f}x" if o and p else "-"
        seq_batch, gc = case.split(":")[0].replace("x", " x "), "yes" if case.endswith(":gc") else "no"
        runs = ", ".join(sorted({r["run"] for r in (o, p) if r}))
        out.append(f"| {seq_batch} | {gc} | {ot} | {pt} | {speed} | {om} | {pm} | {mem} | {runs} |")
    return out + [""] if len(out) > 2 else []


def gpu_paths_table(rows):
    """lapidary with each switch of lapidary_model::cuda (LAPIDARY_CUBLAS, LAPIDARY_DEQUANT) against none."""
    switched = [r for r in rows if r["system"] == "lapidary" and r.get("env")]
    if not switched:
        return []
    case = switched[-1]["case"]
    base = newest_of(rows, lambda r: r["case"] == case and r["system"] == "lapidary" and not r.get("env")
                     and "mem_trace" not in r)
    out = [f"What each path buys, case {case} (`scripts/bench_gpu.sh paths`):", "",
           "| setting | tokens/s | peak GiB | last loss |", "|---|---|---|---|"]
    for r in ([base] if base else []) + [r for r in switched if r["case"] == case]:
        name = " ".join(r.get("env") or []) or "default (cuBLAS f32, device dequantization)"
        out.append(f"| {name} | {r['tokens_per_s']:.0f} | {r['peak_gib']:.2f} | {r['loss']} |")
    return out + [""]


def gpu_mem_trace(rows):
    """The newest memory trace: memory every N steps of a long run (flat, or growing?). On CUDA the entries
    hold in_use_gib and reserved_gib; a CPU run's hold rss_gib."""
    r = newest_of(rows, lambda r: r.get("mem_trace"))
    if not r:
        return []
    t = r["mem_trace"]
    cols = [k for k in t[0] if k != "step"]
    first, last = t[0], t[-1]
    change = "; ".join(f"{c.removesuffix('_gib').replace('_', ' ')} {first[c]:.2f} GiB at step {first['step']}, "
                       f"{last[c]:.2f} at step {last['step']} (largest growth {max(e[c] for e in t) - first[c]:.2f})"
                       for c in cols)
    out = [f"Memory over {r['steps']} steps, case {r['case']}, run {r['run']} (`scripts/bench_gpu.sh mem`): "
           f"{change}.", "",
           "| step | " + " | ".join(c.removesuffix("_gib").replace("_", " ") + " GiB" for c in cols) + " |",
           "|---|" + "---|" * len(cols)]
    out += ["| " + " | ".join([str(e["step"])] + [f"{e[c]:.2f}" for c in cols]) + " |" for e in t]
    return out + [""]


def render_gpu(src, doc):
    rows = load_rows(src)
    dev = next((r["device"] for r in reversed(rows) if r.get("device")), "?")
    model = next((r["model"] for r in reversed(rows) if r.get("model")), "?")
    body = ["## GPU: lapidary --backend cuda against transformers + PEFT + bitsandbytes", "",
            f"`{dev}`; {model} shape, random weights, NF4 double quant, LoRA r=16 on all seven projections, AdamW. "
            "Regenerate with `scripts/bench_gpu.sh` on a GPU machine, then "
            "`python scripts/bench_table.py --gpu docs/bench/gpu.jsonl docs/benchmarks.md` "
            "(raw results: `docs/bench/gpu.jsonl`). lapidary's peak is the device memory its pools reserved "
            "(in use by tensors in brackets); transformers' is `torch.cuda.max_memory_allocated`.", ""]
    body += gpu_shapes_table(rows) + gpu_paths_table(rows) + gpu_mem_trace(rows)
    splice(doc, GPU_BEGIN, GPU_END, body, at_end=True)


if __name__ == "__main__":
    main()
