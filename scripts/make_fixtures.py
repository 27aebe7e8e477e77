#!/usr/bin/env python3
"""Build the tiny random Gemma fixtures used by lapidary's Rust tests.

Run from anywhere with a Python that has the packages of scripts/requirements.txt:

    python scripts/make_fixtures.py

Everything is seeded; rerunning gives byte-identical files (on the same library
versions and the same CPU feature class, see tests/fixtures/README.md).
Everything runs on CPU in float32 with eager attention.
"""

import json
import logging
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

# Python's str hashing is randomized per process; PEFT writes target_modules from a set, so pin
# the hash seed (it only takes effect at interpreter start, hence the re-exec).
if __name__ == "__main__" and os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

import bitsandbytes  # noqa: E402
import bitsandbytes.functional as bnbF  # noqa: E402
import peft  # noqa: E402
import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
    GenerationConfig,
    PreTrainedTokenizerFast,
)

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
TINY = FIX / "tiny"
SEED = 20240611
DEV = torch.device("cpu")

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
TOKENIZER_VOCAB = 512  # 6 specials + 256 byte-fallback tokens + 250 learned pieces
TOK_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROJ_PARENT = {p: ("self_attn" if p in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp") for p in PROJ}

CORPUS = [
    "The river ran quietly past the old mill, and the miller's daughter watched the water turn the great wooden wheel.",
    "Every morning she counted the sacks of grain, wrote the numbers in a small book, and carried the book to her father.",
    "Small models are useful for tests because they run quickly, fit in memory, and still exercise every part of the code.",
    "A language model reads a sequence of tokens and predicts the next token; training lowers the loss on held-out text.",
    "When the weights are quantized to four bits, each block of sixty-four values shares one scale, and the scales are "
    "themselves quantized to eight bits.",
    "Attention lets every position look back at earlier positions. A sliding window limits how far back a layer may look, "
    "which saves memory on long inputs.",
    "The cat sat on the warm stone wall and watched the birds in the garden. It did not move until the sun went down.",
    "Low-rank adapters add two thin matrices to a frozen layer. Only the adapters are trained, so the update is small "
    "and cheap to store.",
    "She asked: what is the time? He answered that it was half past seven, and that the train would leave at eight.",
    "Numbers like 1, 2, 3, 10, 42 and 2024 appear in text too, as do dates, prices such as $5.99, and e-mail addresses.",
    "Rain fell on the hills all night. By morning the streams were full, the roads were wet, and the air smelled of earth.",
    "Good software is tested, measured, and documented; the tests should be small, fast, and deterministic.",
]

EVAL_TEXTS = [
    "The cat sat on the wall.",
    "Small models run quickly on a laptop, and the tests stay fast.",
    "A naïve café serves crème brûlée — 100% ✓",
]


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def write_json(path, obj):
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


def build_tokenizer():
    """Gemma-style BPE: spaces -> U+2581, byte fallback, <bos> prepended by the post-processor."""
    meta = "\u2581"
    # Train a plain BPE on the corpus. Words are split before each U+2581 so that pieces look
    # like sentencepiece pieces ("▁the"), never span a word boundary.
    tmp = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tmp.normalizer = normalizers.Replace(" ", meta)
    tmp.pre_tokenizer = pre_tokenizers.Split(meta, behavior="merged_with_next")
    n_learned = TOKENIZER_VOCAB - 256
    trainer = trainers.BpeTrainer(vocab_size=n_learned, special_tokens=SPECIALS, show_progress=False)
    tmp.train_from_iterator(CORPUS, trainer)
    tj = json.loads(tmp.to_str())
    old_vocab = tj["model"]["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in tj["model"]["merges"]]
    assert len(old_vocab) == n_learned, len(old_vocab)

    # Re-number: specials 0..5, byte tokens <0x00>..<0xFF> 6..261 (as Gemma's vocab has them),
    # then the learned pieces in training order.
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(old_vocab.items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    assert len(vocab) == TOKENIZER_VOCAB, len(vocab)

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", meta)
    tok.pre_tokenizer = pre_tokenizers.Split(meta, behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace(meta, " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos>:0 $A:0", pair="<bos>:0 $A:0 <bos>:1 $B:1", special_tokens=[("<bos>", BOS_ID)]
    )
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        padding_side="left",
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )
    TINY.mkdir(parents=True, exist_ok=True)
    for f in TOK_FILES:
        (TINY / f).unlink(missing_ok=True)
    hf.save_pretrained(str(TINY))
    if not (TINY / "special_tokens_map.json").exists():
        # transformers 5 no longer writes it; write the legacy file from the tokenizer's own map.
        stm = dict(hf.special_tokens_map)
        stm["additional_special_tokens"] = ["<start_of_turn>", "<end_of_turn>"]
        write_json(TINY / "special_tokens_map.json", stm)

    # Sanity: reload, BOS is prepended exactly once, every string tokenizes, round trip works.
    hf2 = PreTrainedTokenizerFast.from_pretrained(str(TINY))
    assert len(hf2) == TOKENIZER_VOCAB, len(hf2)
    for t in EVAL_TEXTS + ["<start_of_turn>user\nhi<end_of_turn>"]:
        ids = hf2(t)["input_ids"]
        assert ids[0] == BOS_ID and BOS_ID not in ids[1:], (t, ids)
        assert hf2.decode(ids, skip_special_tokens=True) == t.replace("<start_of_turn>", "").replace(
            "<end_of_turn>", ""
        ), (t, hf2.decode(ids))
    assert hf2("<start_of_turn>user")["input_ids"][:2] == [BOS_ID, 4]
    # the non-ASCII eval text must exercise byte fallback
    assert any(6 <= i < 262 for i in hf2(EVAL_TEXTS[2])["input_ids"])
    return hf2


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def gemma1_config():
    return GemmaConfig(
        vocab_size=TOKENIZER_VOCAB,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        hidden_act="gelu_pytorch_tanh",
        max_position_embeddings=256,
        initializer_range=0.2,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=BOS_ID,
        tie_word_embeddings=True,
        attention_bias=False,
        attn_implementation="eager",
    )


GEMMA2_ATTN_CAP = 2.0
GEMMA2_FINAL_CAP = 1.0


def gemma2_config(attn_cap=GEMMA2_ATTN_CAP, final_cap=GEMMA2_FINAL_CAP):
    return Gemma2Config(
        vocab_size=TOKENIZER_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=256,
        initializer_range=0.2,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        layer_types=["sliding_attention", "full_attention"] * 2,
        query_pre_attn_scalar=24,
        sliding_window=6,
        attn_logit_softcapping=attn_cap,
        final_logit_softcapping=final_cap,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=BOS_ID,
        tie_word_embeddings=True,
        attention_bias=False,
        attn_implementation="eager",
    )


def gemma3_config():
    return Gemma3TextConfig(
        vocab_size=TOKENIZER_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=256,
        initializer_range=0.2,
        rms_norm_eps=1e-6,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
        layer_types=["sliding_attention"] * 5 + ["full_attention"],
        query_pre_attn_scalar=16,
        sliding_window=6,
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=BOS_ID,
        tie_word_embeddings=True,
        attention_bias=False,
        attn_implementation="eager",
    )


def config_v4(gen, cfg):
    """The same model described in the transformers 4.x config dialect of the published checkpoints."""
    common = {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": cfg.attn_logit_softcapping,
        "bos_token_id": BOS_ID,
        "cache_implementation": "hybrid",
        "eos_token_id": EOS_ID,
        "final_logit_softcapping": cfg.final_logit_softcapping,
        "head_dim": cfg.head_dim,
    }
    if gen == "gemma2":
        d = {"architectures": ["Gemma2ForCausalLM"], **common, "hidden_act": "gelu_pytorch_tanh"}
    else:
        d = {"architectures": ["Gemma3ForCausalLM"], **common}
    d.update(
        {
            "hidden_activation": "gelu_pytorch_tanh",
            "hidden_size": cfg.hidden_size,
            "initializer_range": cfg.initializer_range,
            "intermediate_size": cfg.intermediate_size,
            "max_position_embeddings": cfg.max_position_embeddings,
            "model_type": cfg.model_type,
            "num_attention_heads": cfg.num_attention_heads,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_key_value_heads": cfg.num_key_value_heads,
            "pad_token_id": PAD_ID,
            "query_pre_attn_scalar": cfg.query_pre_attn_scalar,
            "rms_norm_eps": cfg.rms_norm_eps,
        }
    )
    if gen == "gemma2":
        d["rope_theta"] = cfg.rope_parameters["rope_theta"]
        d["sliding_window"] = cfg.sliding_window
    else:
        full = cfg.rope_parameters["full_attention"]
        d["rope_local_base_freq"] = cfg.rope_parameters["sliding_attention"]["rope_theta"]
        d["rope_scaling"] = (
            {"factor": full["factor"], "rope_type": full["rope_type"]} if full["rope_type"] != "default" else None
        )
        d["rope_theta"] = full["rope_theta"]
        d["sliding_window"] = cfg.sliding_window
        pattern = cfg.layer_types.index("full_attention") + 1
        assert cfg.layer_types == [
            "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(cfg.num_hidden_layers)
        ]
        d["sliding_window_pattern"] = pattern
    d.update(
        {
            "torch_dtype": "float32",
            "transformers_version": "4.50.0",
            "use_cache": True,
            "vocab_size": cfg.vocab_size,
        }
    )
    return d


# (config, class, dtype written to model.safetensors, std of embed_tokens).
# The embedding std is kept below initializer_range: with tied embeddings a random model otherwise
# just predicts its current token again and greedy decoding degenerates into one repeated id.
MODEL_SPECS = {
    "gemma1": (gemma1_config, GemmaForCausalLM, torch.bfloat16, 0.1),
    "gemma2": (gemma2_config, Gemma2ForCausalLM, torch.float32, 0.05),
    "gemma3": (gemma3_config, Gemma3ForCausalLM, torch.float32, 0.04),
}


@torch.no_grad()
def randomize(model, std, embed_std, seed):
    """Deterministic init independent of transformers' init order: N(0, embed_std) for the (tied)
    embedding, N(0, std) for the other matrices, N(0, 0.1) for RMSNorm weights (Gemma norms scale
    by 1 + w, so a non-zero w is tested)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name == "model.embed_tokens.weight":
            p.copy_(torch.randn(p.shape, generator=g) * embed_std)
        elif p.ndim == 2:
            p.copy_(torch.randn(p.shape, generator=g) * std)
        elif name.endswith("norm.weight"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        else:
            raise AssertionError(f"unexpected parameter {name}")


def load(model_dir, **kw):
    m = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, attn_implementation="eager", device_map="cpu", **kw
    )
    m.eval()
    return m


# ----------------------------------------------------------------------------------------------
# Reference computations
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def eval_loss(model, rows):
    """Mean next-token NLL over all predictions of all rows; each row alone, no padding."""
    total, count = 0.0, 0
    for ids in rows:
        x = torch.tensor([ids], dtype=torch.long)
        out = model(input_ids=x, labels=x)
        logp = torch.log_softmax(out.logits[0, :-1].double(), dim=-1)
        nll = -logp.gather(1, x[0, 1:, None]).sum().item()
        # cross-check against transformers' own loss (mean over the row's predictions)
        assert abs(out.loss.item() - nll / (len(ids) - 1)) < 1e-4, (out.loss.item(), nll / (len(ids) - 1))
        total += nll
        count += len(ids) - 1
    return total / count, count


@torch.no_grad()
def greedy(model, prompt, n_new=12):
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = PAD_ID
    gc = GenerationConfig(
        do_sample=False, max_new_tokens=n_new, eos_token_id=None, pad_token_id=PAD_ID, bos_token_id=BOS_ID
    )
    x = torch.tensor([prompt], dtype=torch.long)
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gc)
    new = out[0, len(prompt) :].tolist()
    assert len(new) == n_new, new
    # uncached greedy: full forward each step
    seq = list(prompt)
    for _ in range(n_new):
        logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
        seq.append(int(logits.argmax()))
    assert seq[len(prompt) :] == new, (seq[len(prompt) :], new)
    assert len(set(new)) >= 4, f"degenerate greedy output {new}"
    return new


def eval_rows(tok, vocab):
    g = torch.Generator().manual_seed(SEED + 7)
    rows, jsonl, text_ids = [], [], []
    lengths = [5, 13, 20]
    for i, t in enumerate(EVAL_TEXTS):
        ids = tok(t)["input_ids"]
        rows.append(ids)
        jsonl.append({"text": t})
        text_ids.append(ids)
        n = lengths[i]
        ids2 = [BOS_ID] + torch.randint(4, vocab, (n - 1,), generator=g).tolist()
        rows.append(ids2)
        jsonl.append({"input_ids": ids2})
    return rows, jsonl, text_ids


def rel_diff(a, b):
    return ((a - b).norm() / a.norm()).item()


# ----------------------------------------------------------------------------------------------
# bitsandbytes helpers
# ----------------------------------------------------------------------------------------------


def bnb4_config():
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )


def bnb8_config():
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)


def quant_state_tensors(prefix, packed, qs):
    """Tensors of a 4-bit quant state under the key names bitsandbytes/transformers use when they
    serialize a pre-quantized checkpoint (QuantState.as_dict(packed=True)), plus readable extras."""
    d = {f"{prefix}.weight": packed.contiguous()}
    for k, v in qs.as_dict(packed=True).items():
        d[f"{prefix}.weight.{k}"] = v.contiguous()
    d[f"{prefix}.weight.nested_offset"] = qs.offset.reshape(1).float().contiguous()
    meta = {
        "shape": list(qs.shape),
        "dtype": str(qs.dtype),
        "blocksize": qs.blocksize,
        "quant_type": qs.quant_type,
        "nested": bool(qs.nested),
        "nested_blocksize": qs.state2.blocksize if qs.nested else None,
        "nested_offset": qs.offset.item() if qs.nested else None,
        "packed_shape": list(packed.shape),
        "absmax_shape": list(qs.absmax.shape),
        "absmax_dtype": str(qs.absmax.dtype),
    }
    return d, meta


def nf4_modules(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, bitsandbytes.nn.Linear4bit))


def int8_modules(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, bitsandbytes.nn.Linear8bitLt))


# ----------------------------------------------------------------------------------------------
# PEFT
# ----------------------------------------------------------------------------------------------


def lora_config(rslora=False):
    return LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=PROJ,
        task_type="CAUSAL_LM",
        use_rslora=rslora,
        bias="none",
    )


@torch.no_grad()
def randomize_lora(pm, seed):
    g = torch.Generator().manual_seed(seed)
    n = 0
    for name, p in pm.named_parameters():
        if "lora_A" in name or "lora_B" in name:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            n += 1
    assert n > 0


# ----------------------------------------------------------------------------------------------
# Per-model driver
# ----------------------------------------------------------------------------------------------


def build_model(gen, idx, tok, vocab):
    cfg_fn, cls, save_dtype, embed_std = MODEL_SPECS[gen]
    d = TINY / gen
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    cfg = cfg_fn()
    seed_all(SEED + 100 * idx)
    model = cls(cfg).eval()
    randomize(model, cfg.initializer_range, embed_std, SEED + 100 * idx + 1)
    model.to(save_dtype)
    model.save_pretrained(str(d), safe_serialization=True)
    for f in TOK_FILES:
        shutil.copy(TINY / f, d / f)
    del model

    # All references come from the checkpoint as saved (gemma1: bf16 weights upcast to f32).
    model = load(d)
    report = {"model": gen, "saved_dtype": str(save_dtype).replace("torch.", "")}

    g = torch.Generator().manual_seed(SEED + 100 * idx + 2)
    input_ids = torch.randint(4, vocab, (2, 20), generator=g, dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits.float().contiguous()
    assert logits.shape == (2, 20, vocab)
    save_file({"input_ids": input_ids, "logits": logits}, str(d / "reference.safetensors"))

    if gen == "gemma2":
        # The caps must be clearly active.
        for kw in ({"attn_cap": None}, {"final_cap": None}):
            m2 = cls(gemma2_config(**{"attn_cap": GEMMA2_ATTN_CAP, "final_cap": GEMMA2_FINAL_CAP, **kw})).eval()
            m2.load_state_dict(model.state_dict())
            with torch.no_grad():
                l2 = m2(input_ids=input_ids).logits
            r = rel_diff(logits, l2)
            print(f"  gemma2: disabling {list(kw)[0]} changes logits by {100 * r:.1f}%")
            assert r > 0.01, (kw, r)
            report[f"softcap_effect_without_{list(kw)[0]}"] = round(r, 4)
        print(f"  gemma2: |logits| max {logits.abs().max():.3f}, std {logits.std():.3f}")

    if gen in ("gemma2", "gemma3"):
        cv4 = config_v4(gen, model.config)
        write_json(d / "config_v4.json", cv4)
        # The v4-dialect config must describe the very same model under this transformers.
        with tempfile.TemporaryDirectory() as td:
            write_json(Path(td) / "config.json", cv4)
            os.symlink(d / "model.safetensors", Path(td) / "model.safetensors")
            mv4 = load(td)
            assert mv4.config.layer_types == model.config.layer_types, (mv4.config.layer_types,)
            assert mv4.config.rope_parameters == model.config.rope_parameters, (
                mv4.config.rope_parameters,
                model.config.rope_parameters,
            )
            with torch.no_grad():
                assert torch.equal(mv4(input_ids=input_ids).logits, logits)

    rows, jsonl, text_ids = eval_rows(tok, vocab)
    with open(d / "eval.jsonl", "w", encoding="utf-8") as f:
        for r in jsonl:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    loss, ntok = eval_loss(model, rows)
    report.update({"eval_loss": loss, "eval_tokens": ntok, "eval_examples": len(rows), "text_ids": text_ids})

    g = torch.Generator().manual_seed(SEED + 100 * idx + 3)
    prompt = [BOS_ID] + torch.randint(4, vocab, (7,), generator=g).tolist()
    report["greedy"] = {"prompt_ids": prompt, "new_ids": greedy(model, prompt)}
    print(f"  {gen}: eval_loss {loss:.6f} over {ntok} tokens; greedy {report['greedy']['new_ids']}")
    write_json(d / "reference.json", report)
    return model, report, rows, cfg


def quant_and_adapters(gen, idx, model, report, rows):
    d = TINY / gen
    cwd = os.getcwd()
    os.chdir(TINY)  # so that PEFT records a relative base_model_name_or_path ("gemma1", ...)
    try:
        _quant_and_adapters(gen, idx, model, report, rows, Path(gen))
    finally:
        os.chdir(cwd)
    write_json(d / "reference.json", report)


def _quant_and_adapters(gen, idx, model, report, rows, rel):
    d = TINY / gen
    layer0 = "model.layers.0"

    # ---------------- NF4 ----------------
    seed_all(SEED + 100 * idx + 10)
    m4 = load(rel, quantization_config=bnb4_config())
    report["nf4_modules"] = nf4_modules(m4)
    report["eval_loss_nf4"], n = eval_loss(m4, rows)
    assert n == report["eval_tokens"]
    print(f"  {gen}: eval_loss_nf4 {report['eval_loss_nf4']:.6f} ({len(report['nf4_modules'])} Linear4bit)")
    if gen == "gemma1":
        tensors, meta = {}, {}
        for p in PROJ:
            name = f"{layer0}.{PROJ_PARENT[p]}.{p}"
            mod = m4.get_submodule(name)
            w = mod.weight
            qs = w.quant_state
            src = model.get_submodule(name).weight.detach().float().contiguous()
            # what transformers stored must equal quantize_4bit of the (bf16-exact) f32 weight
            packed_ref, qs_ref = bnbF.quantize_4bit(
                src, blocksize=qs.blocksize, compress_statistics=True, quant_type="nf4"
            )
            assert torch.equal(packed_ref, w.data), name
            assert torch.equal(qs_ref.absmax, qs.absmax) and torch.equal(qs_ref.state2.absmax, qs.state2.absmax)
            t, mt = quant_state_tensors(name, w.data, qs)
            tensors.update(t)
            tensors[f"{name}.source_f32"] = src
            tensors[f"{name}.dequantized_f32"] = bnbF.dequantize_4bit(w.data, qs).float().contiguous()
            meta[name] = mt
        # Standalone awkward-size tensor.
        g = torch.Generator().manual_seed(SEED + 11)
        x = torch.randn(37, 91, generator=g) * 0.5
        x[3, 5] = 4.0  # an outlier block
        x[36, 90] = -3.0  # the last (partial) block
        packed, qs = bnbF.quantize_4bit(x, blocksize=64, compress_statistics=True, quant_type="nf4")
        t, mt = quant_state_tensors("awkward", packed, qs)
        tensors.update(t)
        tensors["awkward.input"] = x.contiguous()
        tensors["awkward.dequantized"] = bnbF.dequantize_4bit(packed, qs).float().contiguous()
        meta["awkward"] = mt
        # without double quant too (absmax stays f32)
        packed_s, qs_s = bnbF.quantize_4bit(x, blocksize=64, compress_statistics=False, quant_type="nf4")
        tensors["awkward_single.weight"] = packed_s.contiguous()
        tensors["awkward_single.weight.absmax"] = qs_s.absmax.contiguous()
        tensors["awkward_single.dequantized"] = bnbF.dequantize_4bit(packed_s, qs_s).float().contiguous()
        meta["awkward_single"] = {"shape": [37, 91], "blocksize": 64, "quant_type": "nf4", "nested": False}
        save_file(tensors, str(d / "nf4_state.safetensors"))
        report["nf4_state"] = meta

    # ---------------- int8 ----------------
    seed_all(SEED + 100 * idx + 20)
    try:
        m8 = load(rel, quantization_config=bnb8_config())
        report["int8_modules"] = int8_modules(m8)
        report["llm_int8_threshold"] = 6.0
        # Observe (not change) the activation quantization to see whether the llm_int8_threshold
        # outlier decomposition fires: MatMul8bitLt calls bitsandbytes.functional.int8_vectorwise_quant.
        seen = {"calls": 0, "calls_with_outliers": 0, "outlier_cols": 0, "max_abs_input": 0.0}
        orig = bnbF.int8_vectorwise_quant

        def spy(A, threshold=0.0):
            seen["calls"] += 1
            seen["max_abs_input"] = max(seen["max_abs_input"], float(A.abs().max()))
            out = orig(A, threshold)
            if out[2] is not None and out[2].numel():
                seen["calls_with_outliers"] += 1
                seen["outlier_cols"] += int(out[2].numel())
            return out

        bnbF.int8_vectorwise_quant = spy
        try:
            report["eval_loss_int8"], _ = eval_loss(m8, rows)
        finally:
            bnbF.int8_vectorwise_quant = orig
        report["int8_outliers_during_eval"] = seen
        print(f"  {gen}: eval_loss_int8 {report['eval_loss_int8']:.6f}; activation quant {seen}")
        if gen == "gemma1":
            tensors, meta = {}, {}
            for p in PROJ:
                name = f"{layer0}.{PROJ_PARENT[p]}.{p}"
                mod = m8.get_submodule(name)
                w = mod.weight
                cb, scb = w.CB, w.SCB
                if cb is None:
                    cb, scb = w.data, mod.state.SCB
                src = model.get_submodule(name).weight.detach().float().contiguous()
                # bitsandbytes (Int8Params._quantize) casts the weight to float16 first
                cb_ref, scb_ref, _ = bnbF.int8_vectorwise_quant(src.to(torch.float16))
                assert torch.equal(cb_ref, cb) and torch.equal(scb_ref, scb), name
                cb32, scb32, _ = bnbF.int8_vectorwise_quant(src)
                meta[name] = {"shape": list(cb.shape), "same_as_f32_quant": bool(torch.equal(cb32, cb))}
                tensors[f"{name}.CB"] = cb.contiguous()
                tensors[f"{name}.SCB"] = scb.float().contiguous()
                tensors[f"{name}.source_f32"] = src
            save_file(tensors, str(d / "int8_state.safetensors"))
            report["int8_state"] = meta
        del m8
    except Exception as e:  # noqa: BLE001
        report["int8_error"] = f"{type(e).__name__}: {e}"
        print(f"  {gen}: int8 load failed: {report['int8_error']}")

    # ---------------- LoRA / rsLoRA ----------------
    variants = [("adapter", False)] + ([("adapter_rslora", True)] if gen == "gemma3" else [])
    for vi, (sub, rs) in enumerate(variants):
        seed_all(SEED + 100 * idx + 30 + vi)
        base = load(rel)
        pm = get_peft_model(base, lora_config(rs))
        randomize_lora(pm, SEED + 100 * idx + 31 + vi)
        pm.eval()
        out_dir = d / sub
        if out_dir.exists():
            shutil.rmtree(out_dir)
        pm.save_pretrained(str(rel / sub), safe_serialization=True)
        loss_a, _ = eval_loss(pm, rows)
        # reload from disk onto a fresh base: same loss
        pm2 = PeftModel.from_pretrained(load(rel), str(rel / sub)).eval()
        loss_b, _ = eval_loss(pm2, rows)
        assert abs(loss_a - loss_b) < 1e-6, (loss_a, loss_b)
        assert abs(loss_a - report["eval_loss"]) > 1e-3, (loss_a, report["eval_loss"])
        ref = load_file(str(d / "reference.safetensors"))
        with torch.no_grad():
            with pm.disable_adapter():
                l0 = pm(input_ids=ref["input_ids"]).logits
            l1 = pm(input_ids=ref["input_ids"]).logits
        assert torch.allclose(l0, ref["logits"], atol=1e-5)
        r = rel_diff(l0, l1)
        assert r > 0.05, r
        key = "eval_loss_" + sub
        report[key] = loss_a
        report[sub + "_logits_rel_change"] = round(r, 4)
        keys = sorted(load_file(str(out_dir / "adapter_model.safetensors")).keys())
        report[sub + "_keys_example"] = [k for k in keys if ".layers.0." in k and "q_proj" in k]
        report[sub + "_num_tensors"] = len(keys)
        print(f"  {gen}: {key} {loss_a:.6f}")
        if not rs:
            # same adapter on the NF4 base
            seed_all(SEED + 100 * idx + 40)
            try:
                pq = PeftModel.from_pretrained(load(rel, quantization_config=bnb4_config()), str(rel / sub)).eval()
                report["eval_loss_nf4_adapter"], _ = eval_loss(pq, rows)
                print(f"  {gen}: eval_loss_nf4_adapter {report['eval_loss_nf4_adapter']:.6f}")
            except Exception as e:  # noqa: BLE001
                report["nf4_adapter_error"] = f"{type(e).__name__}: {e}"
                print(f"  {gen}: nf4 adapter failed: {report['nf4_adapter_error']}")


def main():
    only = sys.argv[1:] or list(MODEL_SPECS)
    seed_all(SEED)
    tok = build_tokenizer()
    vocab = len(tok)
    print(f"tokenizer: vocab {vocab}")
    versions = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "bitsandbytes": bitsandbytes.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    write_json(FIX / "versions.json", versions)
    for idx, gen in enumerate(MODEL_SPECS):
        if gen not in only:
            continue
        print(gen)
        model, report, rows, _ = build_model(gen, idx, tok, vocab)
        quant_and_adapters(gen, idx, model, report, rows)
    print("done")


if __name__ == "__main__":
    main()
