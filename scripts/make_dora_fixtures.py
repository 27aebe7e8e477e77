#!/usr/bin/env python3
"""DoRA references (tests/fixtures/dora/): PEFT's `use_dora=True` on the tiny Gemma 3 fixture, for tests/dora.rs.

    python scripts/make_dora_fixtures.py

Needs tests/fixtures/tiny/gemma3 (scripts/make_fixtures.py). Each variant is a PEFT DoRA adapter on every
projection with fixed, non-zero weights (A, B random; the magnitude PEFT initialises, ‖W‖ per row, scaled by
1 + 0.1·N(0,1) so that a wrong magnitude shows), saved with `save_pretrained` (`<variant>/adapter`), and:

- `reference.json`: the token batch, the mean next-token loss of that batch with the adapter (PEFT's
  forward), the loss of the base alone, the eval loss of `tiny/gemma3/eval.jsonl` (as `lapidary eval` defines
  it), the adapter's key names for one module, versions;
- `<variant>/grads.safetensors`: the gradients of that mean loss for every `lora_A`, `lora_B` and
  `lora_magnitude_vector`, under the adapter file's key names (one backward, as one training step computes);
- `<variant>/merged.safetensors` (not for dense_dropout, whose merge is dense's): the projection weights of
  layers 0 and 5 after PEFT's `merge_and_unload()`.

| variant | base | scaling | dropout |
|---|---|---|---|
| dense | the f32 checkpoint | α/r | 0 |
| dense_rslora | the f32 checkpoint | α/√r (rsLoRA) | 0 |
| dense_dropout | the f32 checkpoint | α/r | 0.1, with lapidary's masks (below) |
| nf4 | `gemma3_nf4/`: the checkpoint loaded with `load_in_4bit` (NF4, double quantization, f32 compute) and saved by transformers | α/r | 0 |

NF4: PEFT's DoRA on a bitsandbytes base takes the weight norm of `dequantize_module_weight(base_layer)` and the
base output of the 4-bit matmul, i.e. of the dequantized weight; bitsandbytes' own CPU *de*quantization is wrong on
AVX512-BF16 CPUs (its quantization is right), so the quant state is dequantized here in plain torch and PEFT runs
on a dense f32 model holding those values, which is the same computation. The base is saved as a pre-quantized
checkpoint (`gemma3_nf4/`, which lapidary loads byte for byte) rather than quantized again by lapidary: on these
random f32 weights lapidary's NF4 quantizer picks another double-quantized absmax code than bitsandbytes for a
few blocks (whole 64-value blocks off by one absmax step, ~0.7%), which is not what this fixture tests.

Dropout: PEFT's `lora_dropout` modules are replaced by lapidary's mask (crate::ops::dropout: element `i` of the
`[tokens, in]` input is dropped when `lowbias32(lowbias32(i ^ k0) ^ k1) >> 8 < round(p·2²⁴)`, kept ones scaled by
`1/(1-p)`, `k0`/`k1` the halves of `DROPOUT_SEED ^ (16·layer + projection + 1)`), so that PEFT's training-mode
forward (DoRA on the dropped-out input, with a second base product) can be compared value for value.
"""

import os
import sys

if __name__ == "__main__" and os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import bitsandbytes.functional as bnbF  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import BitsAndBytesConfig, PreTrainedTokenizerFast  # noqa: E402

# Relative to tests/fixtures/tiny (the working directory while it runs), so that PEFT records a relative
# base_model_name_or_path, as scripts/make_fixtures.py does.
BASE = Path("gemma3")
OUT = mf.FIX / "dora"
DROPOUT_SEED = 77
# Two rows of 12 tokens (no padding), every next token a target.
IDS = [[2] + [(i * 13 + 7 * r) % 200 + 3 for i in range(11)] for r in range(2)]


def mix(x):
    """lowbias32 on uint32 arrays."""
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x = (x * np.uint32(0x7FEB352D)).astype(np.uint32)
    x ^= x >> np.uint32(15)
    x = (x * np.uint32(0x846CA68B)).astype(np.uint32)
    return x ^ (x >> np.uint32(16))


class LapidaryDropout(torch.nn.Module):
    """lapidary's dropout mask for one layer (see the module doc), on `x` `[batch, seq, in]` flattened."""

    def __init__(self, p, seed):
        super().__init__()
        self.p, self.seed = p, seed

    def forward(self, x):
        n = x.numel()
        k0, k1 = np.uint32(self.seed & 0xFFFFFFFF), np.uint32(self.seed >> 32)
        with np.errstate(over="ignore"):
            u = mix(mix(np.arange(n, dtype=np.uint32) ^ k0) ^ k1)
        threshold = np.uint32(round(self.p * (1 << 24)))
        keep = np.float32(1.0 / (1.0 - self.p))
        mask = np.where((u >> np.uint32(8)) < threshold, np.float32(0.0), keep).astype(np.float32)
        return x * torch.from_numpy(mask).reshape(x.shape).to(x.dtype)


def dequant_nf4(packed, qs):
    """bitsandbytes' NF4 dequantization in plain torch (f32): codes two per byte, high nibble first; the absmax
    double-quantized (`state2.code[absmax] · state2.absmax + offset`, the nested absmax per 256 blocks)."""
    b = packed.contiguous().view(torch.uint8).reshape(-1)
    codes = torch.stack([(b >> 4) & 0xF, b & 0xF], dim=1).reshape(-1).long()
    n = qs.shape.numel()
    s2 = qs.state2
    am = s2.code[qs.absmax.long()] * s2.absmax.repeat_interleave(s2.blocksize)[: qs.absmax.numel()] + qs.offset
    vals = qs.code[codes[:n]] * am.repeat_interleave(qs.blocksize)[:n]
    return vals.reshape(qs.shape)


def save_nf4_checkpoint():
    """`gemma3_nf4/`: the tiny model loaded in 4 bits by transformers + bitsandbytes and saved pre-quantized."""
    qcfg = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    m4 = mf.load(BASE, quantization_config=qcfg)
    m4.save_pretrained(str(OUT / "gemma3_nf4"), safe_serialization=True)
    for f in mf.TOK_FILES + ["eval.jsonl"]:
        shutil.copy(BASE / f, OUT / "gemma3_nf4" / f)
    (OUT / "gemma3_nf4" / "generation_config.json").unlink(missing_ok=True)
    return m4


def nf4_dequantized_model(m4):
    """The tiny model with every projection replaced by `m4`'s 4-bit weight dequantized in plain torch."""
    m = mf.load(BASE)
    n = 0
    with torch.no_grad():
        for name, mod in m.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in mf.PROJ:
                w = mod.weight.data.float().contiguous()
                q = m4.get_submodule(name).weight
                # What transformers stored is bitsandbytes' quantize_4bit of the f32 weight.
                packed, qs = bnbF.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
                assert torch.equal(packed, q.data) and torch.equal(qs.absmax, q.quant_state.absmax), name
                mod.weight.data = dequant_nf4(q.data, q.quant_state)
                assert (mod.weight.data - w).abs().max() > 0  # quantization moved the weights
                n += 1
    assert n == 6 * 7
    return m


def peft_name(name):
    """A parameter's name as the adapter file keys it."""
    name = name.replace(".default", "")
    return name[: -len(".weight")] if name.endswith("lora_magnitude_vector.weight") else name


def mean_loss(model):
    x = torch.tensor(IDS, dtype=torch.long)
    logits = model(input_ids=x).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
    return nll / x[:, 1:].numel()


def build(variant, idx, tok, rows, m4):
    rslora = variant == "dense_rslora"
    dropout = 0.1 if variant == "dense_dropout" else 0.0
    mf.seed_all(mf.SEED + 500 + idx)
    base = nf4_dequantized_model(m4) if variant == "nf4" else mf.load(BASE)
    with torch.no_grad():
        base_loss = mean_loss(base).item()
    cfg = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=dropout, target_modules=mf.PROJ, task_type="CAUSAL_LM",
        use_rslora=rslora, use_dora=True, bias="none",
    )
    pm = get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(mf.SEED + 510 + idx)
    n_mag = 0
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif "lora_magnitude_vector" in name:
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g))
                n_mag += 1
    assert n_mag == 6 * 7
    if dropout:
        for name, mod in pm.named_modules():
            if hasattr(mod, "lora_dropout") and "default" in mod.lora_dropout:
                layer = int(name.split(".layers.")[1].split(".")[0])
                key = 16 * layer + mf.PROJ.index(name.rsplit(".", 1)[-1]) + 1
                mod.lora_dropout["default"] = LapidaryDropout(dropout, DROPOUT_SEED ^ key)
        pm.train()
    else:
        pm.eval()
    d = OUT / variant
    d.mkdir(parents=True)
    # A fresh save of the adapter (dropout modules are not part of it).
    pm.save_pretrained(str(d / "adapter"), safe_serialization=True)
    keys = sorted(load_file(str(d / "adapter" / "adapter_model.safetensors")).keys())
    assert sum(k.endswith("lora_magnitude_vector") for k in keys) == 6 * 7, keys[:5]

    loss = mean_loss(pm)
    if dropout:
        pm.eval()
        with torch.no_grad():
            assert abs(mean_loss(pm).item() - loss.item()) > 1e-4, "dropout changed nothing"
        pm.train()
    pm.zero_grad()
    loss.backward()
    grads = {peft_name(n): p.grad.detach().clone().contiguous() for n, p in pm.named_parameters() if p.requires_grad}
    assert sorted(grads) == keys, (sorted(grads)[:4], keys[:4])
    assert all(g.abs().max() > 0 for g in grads.values())
    save_file(grads, str(d / "grads.safetensors"))

    pm.eval()
    with torch.no_grad():
        eval_loss, n_eval = mf.eval_loss(pm, rows)
        # The magnitude and B matter: DoRA with them changes the loss.
        assert abs(loss.item() - base_loss) > 1e-3
        merged = pm.merge_and_unload()
        merged_loss, _ = mf.eval_loss(merged, rows)
    # PEFT's own merge keeps the model's output (to f32 rounding).
    assert abs(merged_loss - eval_loss) < 1e-4, (merged_loss, eval_loss)
    proj = {n: p.detach().clone().contiguous() for n, p in merged.named_parameters()
            if n.rsplit(".", 2)[-2] in mf.PROJ and n.split(".")[2] in ("0", "5")}
    assert len(proj) == 2 * 7
    if not dropout:
        save_file(proj, str(d / "merged.safetensors"))
    return {
        "adapter": f"dora/{variant}/adapter",
        "model": "dora/gemma3_nf4" if variant == "nf4" else "tiny/gemma3",
        "use_rslora": rslora,
        "lora_dropout": dropout,
        "dropout_seed": DROPOUT_SEED if dropout else None,
        "train_mode": bool(dropout),
        "loss": loss.item(),
        "loss_base": base_loss,
        "eval_loss": eval_loss,
        "eval_loss_merged": merged_loss,
        "eval_tokens": n_eval,
        "keys_layer0_q_proj": [k for k in keys if ".layers.0.self_attn.q_proj." in k],
    }


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    os.chdir(mf.TINY)
    tok = PreTrainedTokenizerFast.from_pretrained(str(BASE))
    rows = []
    for line in (BASE / "eval.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows.append(r["input_ids"] if "input_ids" in r else tok(r["text"])["input_ids"])
    report = {
        "base": "tiny/gemma3",
        "ids": IDS,
        "r": 4,
        "lora_alpha": 8,
        "versions": {
            "torch": torch.__version__,
            "transformers": mf.transformers.__version__,
            "peft": mf.peft.__version__,
            "bitsandbytes": mf.bitsandbytes.__version__,
        },
        "variants": {},
    }
    m4 = save_nf4_checkpoint()
    for idx, v in enumerate(["dense", "dense_rslora", "dense_dropout", "nf4"]):
        report["variants"][v] = build(v, idx, tok, rows, m4)
        r = report["variants"][v]
        print(f"{v}: loss {r['loss']:.6f} (base {r['loss_base']:.6f}), eval {r['eval_loss']:.6f}")
    (OUT / "reference.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
