"""Checks that `lapidary convert` writes a directory transformers loads as it is.

Converts the toy Gemma 3 GGUF (tests/fixtures/gguf/tiny_gemma3.gguf.bin) with the release binary, loads the
result with transformers (AutoModelForCausalLM + AutoTokenizer, f32, eager attention), and records token ids
and the eval loss (mean next-token NLL over all predicted tokens of all rows, each row alone) into
tests/fixtures/gguf/convert_check.json. tests/convert.rs asserts `lapidary eval` on the GGUF gives that loss.

usage: python scripts/check_convert.py   (after `cargo build --release`)
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["hello world", "The quick brown fox.", " leading space and\ttab\nnewline", "<start_of_turn>user\nhi<end_of_turn>"]


def main():
    tmp = tempfile.mkdtemp()
    try:
        gguf = os.path.join(tmp, "toy.gguf")
        shutil.copy(os.path.join(ROOT, "tests/fixtures/gguf/tiny_gemma3.gguf.bin"), gguf)
        out = os.path.join(tmp, "converted")
        subprocess.run([os.path.join(ROOT, "target/release/lapidary"), "convert", "--model", gguf, "--out", out], check=True)
        tok = AutoTokenizer.from_pretrained(out)
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
        rows = [tok(t)["input_ids"] for t in TEXTS]
        nll, n = 0.0, 0
        with torch.no_grad():
            for ids in rows:
                x = torch.tensor([ids])
                logits = model(x).logits[0, :-1].double()
                lp = torch.log_softmax(logits, -1)
                nll -= lp.gather(1, x[0, 1:, None]).sum().item()
                n += len(ids) - 1
        result = {
            "texts": TEXTS,
            "ids": rows,
            "eval_loss": nll / n,
            "eval_tokens": n,
            "model_class": type(model).__name__,
            "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
        }
        with open(os.path.join(ROOT, "tests/fixtures/gguf/convert_check.json"), "w") as f:
            json.dump(result, f, indent=1)
        print(json.dumps({k: result[k] for k in ("eval_loss", "eval_tokens", "model_class")}))
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    sys.exit(main())
