#!/usr/bin/env python3
"""Check that an adapter written by `lapidary train` is a PEFT adapter that means the same thing to PEFT.

Trains nothing. Loads the tiny Gemma 3 base (tests/fixtures/tiny/gemma3) with transformers in float32,
applies tests/fixtures/train/adapter with `PeftModel.from_pretrained`, and computes the loss on
tests/fixtures/tiny/gemma3/eval.jsonl exactly as `lapidary eval` defines it: every row on its own, `text`
rows tokenized with BOS (the tokenizer's post-processor), `input_ids` rows as given, mean next-token NLL over
all predicted tokens of all rows. Writes tests/fixtures/train/peft_check.json, which tests/train_peft.rs
compares with `lapidary eval --adapter` (no Python needed there).

The adapter itself comes from a real training run (regenerate it from the repository root, then rerun this
script; runs/ is ignored by git):

    cargo run --release -p lapidary -- train configs/tiny-test.toml --set output.dir=runs/peft-check --overwrite
    rm -rf tests/fixtures/train/adapter && cp -r runs/peft-check/adapter tests/fixtures/train/adapter
    python scripts/check_peft.py

`--gemma4-moe` does the same for an adapter trained on the tiny Gemma 4 mixture-of-experts fixture with LoRA on
its experts (PEFT's `target_parameters`), written to tests/fixtures/train/peft_check_gemma4_moe.json:

    cargo run --release -p lapidary -- train configs/tiny-test.toml --set output.dir=runs/peft-check-moe \
        --set model.path=tests/fixtures/tiny/gemma4_moe --set lora.dropout=0 \
        --set 'lora.target_parameters=["experts.gate_up_proj","experts.down_proj"]' --overwrite
    rm -rf tests/fixtures/train/adapter_gemma4_moe && cp -r runs/peft-check-moe/adapter tests/fixtures/train/adapter_gemma4_moe
    python scripts/check_peft.py --gemma4-moe

`--dora` does the same for a DoRA adapter (`lora.use_dora = true`; PEFT's `use_dora`, with its
`lora_magnitude_vector` tensors) trained on the tiny Gemma 3, written to tests/fixtures/train/peft_check_dora.json:

    cargo run --release -p lapidary -- train configs/tiny-test.toml --set output.dir=runs/peft-check-dora \
        --set lora.use_dora=true --overwrite
    rm -rf tests/fixtures/train/adapter_dora && cp -r runs/peft-check-dora/adapter tests/fixtures/train/adapter_dora
    python scripts/check_peft.py --dora
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import peft
import torch
import transformers
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
MOE = "--gemma4-moe" in sys.argv[1:]
DORA = "--dora" in sys.argv[1:]
SUFFIX = "_gemma4_moe" if MOE else "_dora" if DORA else ""
BASE = ROOT / ("tests/fixtures/tiny/gemma4_moe" if MOE else "tests/fixtures/tiny/gemma3")
ADAPTER = ROOT / f"tests/fixtures/train/adapter{SUFFIX}"
DATA = BASE / "eval.jsonl"
OUT = ROOT / f"tests/fixtures/train/peft_check{SUFFIX}.json"


def rows(tok):
    out = []
    for line in DATA.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        out.append(tok(r["text"])["input_ids"] if "text" in r else r["input_ids"])
    return out


@torch.no_grad()
def eval_loss(model, ids_rows):
    total, count = 0.0, 0
    for ids in ids_rows:
        x = torch.tensor([ids], dtype=torch.long)
        logits = model(input_ids=x).logits[0, :-1].double()
        nll = -torch.log_softmax(logits, dim=-1).gather(1, x[0, 1:, None]).sum().item()
        total += nll
        count += len(ids) - 1
    return total / count, count


def main():
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(BASE))
    extra = {"experts_implementation": "eager"} if MOE else {}
    base = AutoModelForCausalLM.from_pretrained(
        str(BASE), dtype=torch.float32, attn_implementation="eager", device_map="cpu", **extra
    ).eval()
    ids_rows = rows(tok)
    base_loss, n = eval_loss(base, ids_rows)
    model = PeftModel.from_pretrained(base, str(ADAPTER)).eval()
    # Every lapidary tensor must have been picked up: PEFT warns and silently skips unknown keys.
    n_lora = sum(1 for name, _ in model.named_parameters() if "lora_" in name)
    cfg = json.loads((ADAPTER / "adapter_config.json").read_text())
    loss, n2 = eval_loss(model, ids_rows)
    assert n == n2
    assert abs(loss - base_loss) > 1e-3, "the adapter changed nothing: were its keys loaded?"
    report = {
        "base": str(BASE.relative_to(ROOT)),
        "adapter": str(ADAPTER.relative_to(ROOT)),
        "data": str(DATA.relative_to(ROOT)),
        "eval_loss_base": base_loss,
        "eval_loss_peft": loss,
        "eval_tokens": n,
        "lora_parameters": n_lora,
        "adapter_r": cfg["r"],
        "target_parameters": cfg.get("target_parameters"),
        "use_dora": cfg.get("use_dora", False),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    }
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
