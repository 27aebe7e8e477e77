#!/usr/bin/env python3
"""Reference values for `lapidary merge` (tests/merge.rs), written to tests/fixtures/merge/.

1. Two more PEFT adapters for tests/fixtures/tiny/gemma3, seeded: `adapter_b` (r=4, alpha=16, attention + gate
   only, so some projections have one adapter) and `adapter_r8` (r=8, all projections).
2. single.json: our release binary merges the fixture adapter (f32 and bf16); transformers loads each merged
   directory as it is (AutoModelForCausalLM, f32 compute) and scores tests/fixtures/tiny/gemma3/eval.jsonl.
3. peft.json: PEFT's add_weighted_adapter (linear, cat, ties, dare_* at density 1.0, where no random mask is
   drawn) + merge_and_unload, its eval loss and a few merged weight values.

Eval loss = mean next-token NLL over all predicted tokens of all rows, each row alone (as `lapidary eval`).
usage: python scripts/make_merge_fixtures.py   (after `cargo build --release`)
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
warnings.filterwarnings("ignore")

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

torch.set_num_threads(2)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "tests/fixtures/tiny/gemma3")
OUT = os.path.join(ROOT, "tests/fixtures/merge")
BIN = os.path.join(ROOT, "target/release/lapidary")
# Flat indices into a few merged weights; layers.3.mlp.up_proj is targeted by `adapter` only.
SAMPLES = [
    ("model.layers.0.self_attn.q_proj.weight", [0, 17, 1000, 4095]),
    ("model.layers.3.mlp.up_proj.weight", [5, 777, 8000]),
    ("model.layers.5.mlp.down_proj.weight", [1, 4321, 8191]),
]


def load_base():
    return AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32, attn_implementation="eager").eval()


def rows():
    tok = AutoTokenizer.from_pretrained(BASE)
    out = []
    with open(os.path.join(BASE, "eval.jsonl"), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            out.append(r["input_ids"] if "input_ids" in r else tok(r["text"])["input_ids"])
    return out


@torch.no_grad()
def eval_loss(model, rs):
    nll, n = 0.0, 0
    for ids in rs:
        x = torch.tensor([ids])
        lp = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), -1)
        nll -= lp.gather(1, x[0, 1:, None]).sum().item()
        n += len(ids) - 1
    return nll / n, n


def make_adapter(name, r, alpha, targets, seed):
    torch.manual_seed(seed)
    pm = get_peft_model(load_base(), LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.1)
    path = os.path.join(OUT, name)
    shutil.rmtree(path, ignore_errors=True)
    pm.save_pretrained(path, safe_serialization=True)
    for f in ("README.md",):
        if os.path.exists(os.path.join(path, f)):
            os.remove(os.path.join(path, f))
    # PEFT records the base as it was loaded, an absolute path of this machine: store it relative to the repository.
    cfg = os.path.join(path, "adapter_config.json")
    with open(cfg, encoding="utf-8") as f:
        text = f.read()
    recorded = json.loads(text).get("base_model_name_or_path")
    if recorded and os.path.isabs(recorded):
        text = text.replace(json.dumps(recorded), json.dumps(os.path.relpath(BASE, ROOT)))
        with open(cfg, "w", encoding="utf-8") as f:
            f.write(text)
    return path


def samples(model):
    sd = model.state_dict()
    return [{"name": n, "index": i, "value": sd[n].flatten()[i].item()} for n, idx in SAMPLES for i in idx]


def main():
    os.makedirs(OUT, exist_ok=True)
    rs = rows()
    a = os.path.join(BASE, "adapter")
    b = make_adapter("adapter_b", 4, 16, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"], 1234)
    r8 = make_adapter("adapter_r8", 8, 8, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], 99)

    # Single adapter: our merge, loaded by transformers.
    single = {}
    tmp = tempfile.mkdtemp()
    try:
        for dtype in ("f32", "bf16"):
            out = os.path.join(tmp, dtype)
            subprocess.run([BIN, "merge", "--model", BASE, "--adapter", a, "--dtype", dtype, "--out", out], check=True)
            m = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
            loss, n = eval_loss(m, rs)
            single[dtype] = {"eval_loss": loss, "eval_tokens": n, "model_class": type(m).__name__}
    finally:
        shutil.rmtree(tmp)
    pm = PeftModel.from_pretrained(load_base(), a).eval()
    single["peft_adapter_eval_loss"] = eval_loss(pm, rs)[0]

    # Several adapters: PEFT's add_weighted_adapter + merge_and_unload.
    cases = [
        ("linear", [a, b], [0.7, 0.5], None),
        ("linear", [a, b], [0.7, -0.5], None),
        ("cat", [a, r8], [0.7, 0.5], None),
        ("ties", [a, b], [0.7, 0.5], 0.5),
        ("ties", [a, b], [1.0, -0.6], 1.0),
        ("dare_linear", [a, b], [0.7, 0.5], 1.0),
        ("dare_ties", [a, b], [0.7, 0.5], 1.0),
    ]
    results = []
    for method, ads, weights, density in cases:
        pm = PeftModel.from_pretrained(load_base(), ads[0], adapter_name="a0")
        for i, d in enumerate(ads[1:], 1):
            pm.load_adapter(d, adapter_name=f"a{i}")
        names = [f"a{i}" for i in range(len(ads))]
        pm.add_weighted_adapter(names, weights, "m", combination_type=method, density=density)
        pm.set_adapter("m")
        merged = pm.merge_and_unload().eval()
        loss, n = eval_loss(merged, rs)
        results.append({
            "method": method,
            "adapters": [os.path.relpath(d, os.path.join(ROOT, "tests/fixtures")) for d in ads],
            "weights": weights,
            "density": density,
            "eval_loss": loss,
            "eval_tokens": n,
            "samples": samples(merged),
        })
        print(f"{method} {weights} density={density}: {loss:.6f}")
    versions = {"transformers": transformers.__version__, "peft": peft.__version__, "torch": torch.__version__}
    with open(os.path.join(OUT, "single.json"), "w") as f:
        json.dump({**single, "versions": versions}, f, indent=1)
    with open(os.path.join(OUT, "peft.json"), "w") as f:
        json.dump({"cases": results, "versions": versions}, f, indent=1)
    print(json.dumps(single))


if __name__ == "__main__":
    sys.exit(main())
