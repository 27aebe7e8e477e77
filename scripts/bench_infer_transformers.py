"""The reference for inference speed: transformers on CPU (f32) loading the same GGUF lapidary reads.

Prints one JSON object: eval tokens/s (each row alone, as `lapidary eval` does; loss included as a sanity
check) and greedy generation tokens/s (`generate(do_sample=False)` with the KV cache).
usage: python scripts/bench_infer_transformers.py MODEL.gguf ROWS.jsonl PROMPT NEW_TOKENS
"""
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    path, rows_path, prompt, new_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(os.cpu_count())
    d, f = os.path.split(os.path.abspath(path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    rows = [tok(json.loads(l)["text"])["input_ids"] for l in open(rows_path) if l.strip()]
    nll, n = 0.0, 0
    with torch.no_grad():
        start = time.perf_counter()
        for ids in rows:
            x = torch.tensor([ids])
            lp = torch.log_softmax(model(x).logits[0, :-1].float(), -1)
            nll -= lp.gather(1, x[0, 1:, None]).sum().item()
            n += len(ids) - 1
        eval_s = time.perf_counter() - start
        enc = tok(prompt, return_tensors="pt")
        start = time.perf_counter()
        out = model.generate(**enc, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        gen_s = time.perf_counter() - start
    generated = out.shape[1] - enc["input_ids"].shape[1]
    print(json.dumps({
        "eval_loss": nll / n, "eval_tokens": n, "eval_tokens_per_s": n / eval_s,
        "gen_tokens": generated, "gen_tokens_per_s": generated / gen_s, "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
