#!/usr/bin/env python3
"""Build the tiny random Gemma 4 fixture (tests/fixtures/tiny/gemma4) with transformers' Gemma4ForCausalLM.

    python scripts/make_gemma4_fixtures.py

It reuses the tokenizer and the helpers of scripts/make_fixtures.py (run that first if tests/fixtures/tiny has no
tokenizer). One dense model exercises every part of Gemma 4's text decoder that a published checkpoint uses:
per-layer inputs (PLE), KV sharing (the last two layers reuse the keys/values of the last earlier layer of their
type), `attention_k_eq_v` (global layers have no v_proj: values are the key projection), global layers with their
own head_dim and KV heads (`per_layer_config`), proportional RoPE with partial_rotary_factor on global layers,
the double-wide MLP of the KV-shared layers, `layer_scalar`, final logit softcapping, and Gemma 4's RMSNorm
(`x * w`, not Gemma 1-3's `x * (1 + w)`).

References (f32, eager attention, CPU): logits of two random rows, the eval loss of the same rows the other
fixtures use, cached greedy decoding (checked against uncached), the loss of an NF4 base (bitsandbytes' quant
state, dequantized in plain torch: bitsandbytes' own CPU dequantization is wrong on AVX512-BF16 CPUs), and a PEFT
LoRA adapter on the seven projections with its loss.
"""

import os
import sys

if __name__ == "__main__" and os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402
import torch  # noqa: E402
import bitsandbytes  # noqa: E402
import bitsandbytes.functional as bnbF  # noqa: E402
from peft import PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import Gemma4ForCausalLM, Gemma4TextConfig, PreTrainedTokenizerFast  # noqa: E402

NAME = "gemma4"
IDX = 4
FINAL_CAP = 1.5
EMBED_STD = 0.15
# Lower for the MoE model: with 0.15 its greedy decoding repeats one id.
MOE_EMBED_STD = 0.06


# What the dense and the MoE fixture share.
COMMON = dict(
    vocab_size=mf.TOKENIZER_VOCAB,
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    global_head_dim=32,
    num_global_key_value_heads=1,
    attention_k_eq_v=True,
    sliding_window=6,
    final_logit_softcapping=FINAL_CAP,
    hidden_activation="gelu_pytorch_tanh",
    max_position_embeddings=256,
    initializer_range=0.2,
    rms_norm_eps=1e-6,
    pad_token_id=mf.PAD_ID,
    eos_token_id=mf.EOS_ID,
    bos_token_id=mf.BOS_ID,
    tie_word_embeddings=True,
    attn_implementation="eager",
)


def gemma4_config():
    return Gemma4TextConfig(
        **COMMON,
        intermediate_size=128,
        num_hidden_layers=6,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
        num_kv_shared_layers=2,
        use_double_wide_mlp=True,
        hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=mf.TOKENIZER_VOCAB,
    )


def gemma4_moe_config():
    """Mixture of experts: every layer has the dense MLP and, beside it, 4 experts of which each token uses 2."""
    return Gemma4TextConfig(
        **COMMON,
        intermediate_size=96,
        num_hidden_layers=4,
        layer_types=["sliding_attention", "full_attention"] * 2,
        num_kv_shared_layers=0,
        hidden_size_per_layer_input=0,
        enable_moe_block=True,
        num_experts=4,
        top_k_experts=2,
        moe_intermediate_size=32,
    )


@torch.no_grad()
def randomize(model, std, embed_std, seed):
    """N(0, embed_std) for the tied embedding, N(0, std) for the other matrices (the per-layer table included),
    1 + N(0, 0.1) for RMSNorm weights (Gemma 4 multiplies by w itself) and 1 + U(-0.3, 0.3) for each layer's
    `layer_scalar` (a buffer: ones would not test that it is applied)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name == "model.embed_tokens.weight":
            p.copy_(torch.randn(p.shape, generator=g) * embed_std)
        elif p.ndim == 2:
            p.copy_(torch.randn(p.shape, generator=g) * std)
        elif (p.ndim == 1 and "norm" in name) or name.endswith("router.scale"):
            p.copy_(1.0 + torch.randn(p.shape, generator=g) * 0.1)
        elif name.endswith("per_expert_scale"):
            p.copy_(1.0 + torch.randn(p.shape, generator=g) * 0.3)
        elif p.ndim == 3:  # experts.gate_up_proj / experts.down_proj, [experts, out, in]
            p.copy_(torch.randn(p.shape, generator=g) * std)
        else:
            raise AssertionError(f"unexpected parameter {name}")
    for name, b in model.named_buffers():
        if name.endswith("layer_scalar"):
            b.copy_(1.0 + (torch.rand(b.shape, generator=g) - 0.5) * 0.6)


def nf4_dequantize(packed, qs):
    """bitsandbytes' NF4 quant state dequantized in plain torch: two codes per byte, high nibble first; absmax
    double-quantized (8-bit dynamic codes × second-level absmax per 256, plus the offset)."""
    b = packed.reshape(-1)
    codes = torch.stack([(b >> 4) & 0xF, b & 0xF], dim=1).reshape(-1).long()
    if qs.nested:
        s2 = qs.state2
        am = s2.code[qs.absmax.long()].float()
        am = am.reshape(-1)
        am = am * s2.absmax.float().repeat_interleave(s2.blocksize)[: am.numel()] + qs.offset.float()
    else:
        am = qs.absmax.float()
    n = qs.shape.numel()
    vals = qs.code.float()[codes[:n]] * am.repeat_interleave(qs.blocksize)[:n]
    return vals.reshape(qs.shape)


def nf4_model(model_dir, rel):
    """The f32 model with every linear the way transformers + bitsandbytes (NF4, double quant, f32 compute) load
    it: quantized by bitsandbytes, dequantized in plain torch. Returns (model, names of the quantized linears)."""
    mf.seed_all(mf.SEED + 100 * IDX + 10)
    m4 = mf.load(rel, quantization_config=mf.bnb4_config())
    names = mf.nf4_modules(m4)
    m = mf.load(model_dir)
    sd = m.state_dict()
    with torch.no_grad():
        for n in names:
            w = m4.get_submodule(n).weight
            packed_ref, _ = bnbF.quantize_4bit(
                sd[n + ".weight"].float().contiguous(), blocksize=w.quant_state.blocksize,
                compress_statistics=True, quant_type="nf4",
            )
            # The stored bytes are bitsandbytes' own quantization of the weight (not a CPU repacking).
            assert torch.equal(packed_ref.reshape(-1), w.data.reshape(-1)), n
            m.get_submodule(n).weight.copy_(nf4_dequantize(w.data, w.quant_state))
    return m, names


def build(tok, name, idx, cfg, embed_std, **load_kw):
    """Saves the random model, then records from the checkpoint as saved: logits of two random rows (and the
    same model's in f64), the eval rows' loss and cached greedy decoding. Returns (dir, model, report, input_ids,
    logits, rows, loss)."""
    vocab = len(tok)
    d = mf.TINY / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    mf.seed_all(mf.SEED + 100 * idx)
    model = Gemma4ForCausalLM(cfg).eval()
    randomize(model, cfg.initializer_range, embed_std, mf.SEED + 100 * idx + 1)
    model.save_pretrained(str(d), safe_serialization=True)
    for f in mf.TOK_FILES:
        shutil.copy(mf.TINY / f, d / f)
    del model
    model = mf.load(d, **load_kw)
    # What `lapidary inspect` reports as the total (parameters only: layer_scalar is a buffer).
    report = {"model": name, "saved_dtype": "float32", "num_parameters": sum(p.numel() for p in model.parameters())}
    g = torch.Generator().manual_seed(mf.SEED + 100 * idx + 2)
    input_ids = torch.randint(4, vocab, (2, 20), generator=g, dtype=torch.long)
    # The same model in f64: on the dense fixture (scores up to ~30 with Gemma 4's unit attention scale) f32
    # rounding alone moves transformers' logits by ~2e-5 of their scale, so the tests can tell noise from error.
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits.float().contiguous()
        m64 = mf.load(d, **load_kw).double()
        logits64 = m64(input_ids=input_ids).logits.contiguous()
        del m64
    assert logits.shape == (2, 20, vocab)
    save_file({"input_ids": input_ids, "logits": logits, "logits_f64": logits64}, str(d / "reference.safetensors"))
    rows, jsonl, text_ids = mf.eval_rows(tok, vocab)
    with open(d / "eval.jsonl", "w", encoding="utf-8") as f:
        for row in jsonl:
            f.write(mf.json.dumps(row, ensure_ascii=False) + "\n")
    loss, ntok = mf.eval_loss(model, rows)
    report.update({"eval_loss": loss, "eval_tokens": ntok, "eval_examples": len(rows), "text_ids": text_ids})
    g = torch.Generator().manual_seed(mf.SEED + 100 * idx + 3)
    # Longer than the window (6) so that cached decoding crosses it on the sliding and KV-shared layers.
    prompt = [mf.BOS_ID] + torch.randint(4, vocab, (9,), generator=g).tolist()
    report["greedy"] = {"prompt_ids": prompt, "new_ids": mf.greedy(model, prompt)}
    print(f"  {name}: eval_loss {loss:.6f} over {ntok} tokens; greedy {report['greedy']['new_ids']}")
    return d, model, report, input_ids, logits, rows, loss


def peft_adapter(name, idx, lc, rows, base_loss, **load_kw):
    """A PEFT LoRA adapter (random A and B) saved under NAME/adapter; its loss, checked to survive a reload and to
    differ from the base's. Runs from tests/fixtures/tiny so PEFT records a relative base path."""
    rel = Path(name)
    mf.seed_all(mf.SEED + 100 * idx + 30)
    pm = get_peft_model(mf.load(rel, **load_kw), lc)
    mf.randomize_lora(pm, mf.SEED + 100 * idx + 31)
    pm.eval()
    pm.save_pretrained(str(rel / "adapter"), safe_serialization=True)
    loss_a, _ = mf.eval_loss(pm, rows)
    pm2 = PeftModel.from_pretrained(mf.load(rel, **load_kw), str(rel / "adapter")).eval()
    loss_b, _ = mf.eval_loss(pm2, rows)
    assert abs(loss_a - loss_b) < 1e-6, (loss_a, loss_b)
    assert abs(loss_a - base_loss) > 1e-3, (loss_a, base_loss)
    tensors = load_file(str(mf.TINY / name / "adapter" / "adapter_model.safetensors"))
    return loss_a, tensors, pm2


def main():
    mf.seed_all(mf.SEED)
    tok = PreTrainedTokenizerFast.from_pretrained(str(mf.TINY))
    cfg = gemma4_config()
    assert cfg.kv_sharing_modes == [None, None, "store", "store", "reuse", "reuse"], cfg.kv_sharing_modes
    d, model, report, input_ids, logits, rows, loss = build(tok, NAME, IDX, cfg, EMBED_STD)
    # Each feature must change the logits (else the fixture would not test it).
    sd = model.state_dict()
    for what, kw in [
        ("final_logit_softcapping", {"final_logit_softcapping": None}),
        ("per-layer inputs (PLE scale 0)", None),
    ]:
        if kw is None:
            m2 = mf.load(d)
            with torch.no_grad():
                m2.model.embed_tokens_per_layer.weight.zero_()
        else:
            c2 = gemma4_config()
            for k, v in kw.items():
                setattr(c2, k, v)
            m2 = Gemma4ForCausalLM(c2).eval()
            m2.load_state_dict(sd)
        with torch.no_grad():
            r = mf.rel_diff(logits, m2(input_ids=input_ids).logits)
        print(f"  gemma4: without {what} the logits change by {100 * r:.1f}%")
        assert r > 0.01, (what, r)

    cwd = os.getcwd()
    os.chdir(mf.TINY)
    try:
        rel = Path(NAME)
        m4, names = nf4_model(rel, rel)
        report["nf4_modules"] = names
        report["eval_loss_nf4"], _ = mf.eval_loss(m4, rows)
        print(f"  gemma4: eval_loss_nf4 {report['eval_loss_nf4']:.6f} ({len(names)} Linear4bit)")
        loss_a, tensors, _ = peft_adapter(NAME, IDX, mf.lora_config(), rows, loss)
        report["eval_loss_adapter"] = loss_a
        report["adapter_num_tensors"] = len(tensors)
        report["adapter_modules"] = sorted({k.split(".lora_")[0] for k in tensors})
        print(f"  gemma4: eval_loss_adapter {loss_a:.6f} ({len(tensors)} tensors)")
    finally:
        os.chdir(cwd)
    mf.write_json(d / "reference.json", report)
    build_moe(tok)
    print("done")


def build_moe(tok):
    """The MoE fixture: logits, eval loss, cached greedy, and a PEFT adapter with LoRA on the seven projections and
    on the routed experts (`target_parameters`), with its loss."""
    name, idx, eager = "gemma4_moe", IDX + 1, {"experts_implementation": "eager"}
    d, model, report, input_ids, logits, rows, loss = build(tok, name, idx, gemma4_moe_config(), MOE_EMBED_STD, **eager)
    # The experts must matter.
    m2 = mf.load(d, **eager)
    with torch.no_grad():
        for layer in m2.model.layers:
            layer.experts.down_proj.zero_()
        r = mf.rel_diff(logits, m2(input_ids=input_ids).logits)
    print(f"  gemma4_moe: without the experts the logits change by {100 * r:.1f}%")
    assert r > 0.01, r
    cwd = os.getcwd()
    os.chdir(mf.TINY)
    try:
        lc = mf.lora_config()
        lc.target_parameters = ["experts.gate_up_proj", "experts.down_proj"]
        loss_a, tensors, pm2 = peft_adapter(name, idx, lc, rows, loss, **eager)
        report["eval_loss_adapter"] = loss_a
        report["adapter_num_tensors"] = len(tensors)
        report["adapter_expert_keys"] = [(k, list(v.shape)) for k, v in sorted(tensors.items()) if "experts" in k and ".layers.0." in k]
        # The expert LoRA alone must matter too.
        with torch.no_grad():
            for n, p in pm2.named_parameters():
                if "experts" in n and "lora_B" in n:
                    p.zero_()
        report["eval_loss_adapter_without_experts"], _ = mf.eval_loss(pm2, rows)
        assert abs(report["eval_loss_adapter_without_experts"] - loss_a) > 1e-4
        print(f"  gemma4_moe: eval_loss_adapter {loss_a:.6f} ({len(tensors)} tensors), expert keys {report['adapter_expert_keys']}")
    finally:
        os.chdir(cwd)
    mf.write_json(d / "reference.json", report)


if __name__ == "__main__":
    main()
