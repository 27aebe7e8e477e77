#!/usr/bin/env python3
"""Build pre-quantized bitsandbytes checkpoints (tests/fixtures/bnb/) from the tiny Gemma 3 fixture, the way
`unsloth/gemma-...-bnb-4bit` style directories are made: transformers loads the model with a BitsAndBytesConfig and
`save_pretrained` writes the packed weights with their quant states (`weight.absmax`, `weight.quant_map`,
`weight.nested_absmax`, `weight.nested_quant_map`, `weight.quant_state.bitsandbytes__nf4`) and a
`quantization_config` in config.json.

    python scripts/make_bnb_fixtures.py

Needs tests/fixtures/tiny/gemma3 (scripts/make_fixtures.py) and tiny/gemma4_moe (scripts/make_gemma4_fixtures.py). Loaded in bfloat16 as published checkpoints are, so
norms and the embedding are stored in bf16 and each quant state records `"dtype": "bfloat16"`.

| directory | what |
|---|---|
| gemma3_nf4 | nf4, double quantization, uint8 storage, bf16 compute (unsloth's settings); `model.layers.5.mlp` in `llm_int8_skip_modules`, so three linears stay bf16 (as unsloth's dynamic quants keep some) |
| gemma3_nf4_single | nf4 without double quantization (plain f32 absmax), bfloat16 quant_storage |
| gemma3_int8 | `load_in_8bit` (LLM.int8: int8 `weight` + f32 `SCB`) |
| gemma3_fp4 | fp4 (lapidary refuses it: only the checkpoint, no reference) |
| gemma4_moe_nf4 | tests/fixtures/tiny/gemma4_moe as gemma3_nf4 (no skipped modules): a `gemma4_text` config; the router's linear is quantized, the 3-D experts stay bf16 (bitsandbytes replaces nn.Linear only) |

References (`reference.json`, `reference_state.safetensors` in each directory): the eval loss of the rows in
`eval.jsonl` computed in f32 with every quantized weight dequantized from the file *in plain torch* (bitsandbytes'
own CPU dequantization is wrong on AVX512-BF16 CPUs; its quantization is right, which is asserted), the dequantized
values of two weights, and each 4-bit weight's offset. For int8 also transformers' own LLM.int8 loss (which rounds
activations to int8 too). The stored bytes are asserted equal to bitsandbytes' `quantize_4bit` / `int8_vectorwise_quant`
of the bf16 weights, i.e. the standard layout, not a CPU repacking.
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
import torch  # noqa: E402
import bitsandbytes.functional as bnbF  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import BitsAndBytesConfig, PreTrainedTokenizerFast  # noqa: E402

OUT = mf.FIX / "bnb"
IDX = 9


def variants():
    """name -> (source fixture, config)."""
    common = dict(bnb_4bit_compute_dtype=torch.bfloat16)
    nf4 = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, **common)
    g3 = mf.TINY / "gemma3"
    return {
        "gemma3_nf4": (g3, BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            llm_int8_skip_modules=["lm_head", "model.layers.5.mlp"],
            **common,
        )),
        "gemma3_nf4_single": (g3, BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=False,
            bnb_4bit_quant_storage=torch.bfloat16,
            **common,
        )),
        "gemma3_int8": (g3, BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)),
        "gemma3_fp4": (g3, BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True, **common
        )),
        "gemma4_moe_nf4": (mf.TINY / "gemma4_moe", BitsAndBytesConfig(**nf4)),
    }


def read_file(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def dequant_4bit(t, w):
    """A 4-bit weight dequantized from the file's tensors in plain torch (f32): codes two per byte, high nibble
    first; the absmax either f32 or double-quantized (`nested_quant_map[absmax] * nested_absmax + offset`, the
    nested absmax per 256 blocks)."""
    keys = [k for k in t if k.startswith(w + ".quant_state.bitsandbytes__")]
    qs = json.loads(bytes(t[keys[0]].tolist()).decode())
    b = t[w].contiguous().view(torch.uint8).reshape(-1)
    codes = torch.stack([(b >> 4) & 0xF, b & 0xF], dim=1).reshape(-1).long()
    n = 1
    for s in qs["shape"]:
        n *= s
    if "nested_blocksize" in qs:
        am = t[w + ".nested_quant_map"][t[w + ".absmax"].long()]
        nb = qs["nested_blocksize"]
        am = am * t[w + ".nested_absmax"].repeat_interleave(nb)[: am.numel()]
        am = am + torch.tensor(qs["nested_offset"], dtype=torch.float32)
    else:
        am = t[w + ".absmax"].float()
    vals = t[w + ".quant_map"][codes[:n]] * am.repeat_interleave(qs["blocksize"])[:n]
    return vals.reshape(qs["shape"]), qs


def dequant_int8(t, w):
    """bitsandbytes' int8 dequantization `CB * SCB * (1/127)`, f32, with its constant."""
    scb = t[w[: -len(".weight")] + ".SCB"]
    return t[w].float() * scb.float().unsqueeze(1) * 7.874015718698502e-3


def build(name, src_dir, qcfg):
    tok = PreTrainedTokenizerFast.from_pretrained(str(src_dir))
    rows = []
    for line in (src_dir / "eval.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows.append(r["input_ids"] if "input_ids" in r else tok(r["text"])["input_ids"])
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    mf.seed_all(mf.SEED + 100 * IDX)
    m = mf.AutoModelForCausalLM.from_pretrained(
        str(src_dir), dtype=torch.bfloat16, quantization_config=qcfg, device_map="cpu", attn_implementation="eager"
    ).eval()
    m.save_pretrained(str(d), safe_serialization=True)
    del m
    for f in mf.TOK_FILES + ["eval.jsonl"]:
        shutil.copy(src_dir / f, d / f)
    (d / "generation_config.json").unlink(missing_ok=True)
    shutil.copy(src_dir / "generation_config.json", d / "generation_config.json")

    t = read_file(d / "model.safetensors")
    cfg = json.loads((d / "config.json").read_text())["quantization_config"]
    src = mf.load(src_dir)  # the f32 source weights, rounded to bf16 below as transformers loaded them
    sd = {k: v.to(torch.bfloat16) for k, v in src.state_dict().items()}
    four = cfg.get("load_in_4bit", False)
    quantized = sorted(k[: -len(".absmax")] for k in t if k.endswith(".weight.absmax"))
    if not four:
        quantized = sorted(k[: -len(".SCB")] + ".weight" for k in t if k.endswith(".SCB"))
    dense_linears = sorted(
        k for k in t if t[k].ndim == 2 and "layers." in k and k.endswith("proj.weight") and k not in quantized
    )
    report = {
        "variant": name,
        "quantization_config": cfg,
        "quantized": quantized,
        "dense_linears": dense_linears,
        "eval_tokens": sum(len(r) - 1 for r in rows),
    }
    print(f"{name}: {len(quantized)} quantized, 16-bit linears {dense_linears}")
    assert quantized
    if name == "gemma3_fp4":
        (d / "reference.json").write_text(json.dumps(report, indent=2) + "\n")
        return

    # The stored bytes are bitsandbytes' own quantization of the bf16 weight (the standard layout).
    for w in quantized:
        if four:
            packed, qs = bnbF.quantize_4bit(
                sd[w].contiguous(), blocksize=64, compress_statistics=cfg["bnb_4bit_use_double_quant"],
                quant_type="nf4",
            )
            assert torch.equal(packed.view(torch.uint8).reshape(-1), t[w].contiguous().view(torch.uint8).reshape(-1)), w
            if qs.nested:
                assert torch.equal(qs.absmax, t[w + ".absmax"]) and torch.equal(qs.state2.absmax, t[w + ".nested_absmax"])
            else:
                assert torch.equal(qs.absmax, t[w + ".absmax"]), w
        else:
            cb, scb, _ = bnbF.int8_vectorwise_quant(sd[w].to(torch.float16))
            assert torch.equal(cb, t[w]) and torch.equal(scb, t[w[: -len(".weight")] + ".SCB"]), w

    # The reference model: f32, every quantized weight dequantized from the file in plain torch, the rest
    # (parameters and buffers, e.g. Gemma 4's layer_scalar) upcast from the file.
    ref = mf.load(src_dir)
    # Weights whose dequantized values are recorded: the first and a middle one.
    probe = [quantized[0], quantized[len(quantized) // 2]]
    state, offsets = {}, {}
    used = set()
    with torch.no_grad():
        for k, p in ref.state_dict(keep_vars=True).items():
            if k not in t:
                assert k.endswith("inv_freq") or k == "lm_head.weight", k  # computed / tied, not stored
                continue
            used.add(k)
            if k in quantized:
                if four:
                    v, qs = dequant_4bit(t, k)
                    assert qs["quant_type"] == "nf4" and qs["dtype"] == "bfloat16", qs
                    offsets[k] = qs.get("nested_offset")
                else:
                    v = dequant_int8(t, k)
                if k in probe:
                    state[k + ".dequantized"] = v.contiguous()
            else:
                v = t[k].float()
            assert v.shape == p.shape, (k, v.shape, p.shape)
            p.data.copy_(v)
    state_suffixes = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".SCB", ".weight_format")
    rest = [k for k in t if k not in used and not k.endswith(state_suffixes) and ".quant_state." not in k]
    assert not rest, rest
    report["probe"] = probe
    report["eval_loss_dequantized_f32"], n = mf.eval_loss(ref, rows)
    assert n == report["eval_tokens"]
    if offsets and any(o is not None for o in offsets.values()):
        report["nested_offsets"] = offsets
    # The dequantized model differs from the unquantized one: the quantization is there to be tested.
    report["eval_loss_unquantized_f32"], _ = mf.eval_loss(src, rows)
    assert abs(report["eval_loss_dequantized_f32"] - report["eval_loss_unquantized_f32"]) > 1e-3
    if not four:
        # transformers' own LLM.int8 forward (also rounds activations to int8), on the checkpoint as saved.
        m8 = mf.load(d)
        report["eval_loss_transformers_int8"], _ = mf.eval_loss(m8, rows)
        del m8
    save_file(state, str(d / "reference_state.safetensors"))
    (d / "reference.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"  eval loss (dequantized, f32) {report['eval_loss_dequantized_f32']:.6f}")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (src_dir, qcfg) in variants().items():
        if sys.argv[1:] and name not in sys.argv[1:]:
            continue
        build(name, src_dir, qcfg)
    print("done")


if __name__ == "__main__":
    main()
