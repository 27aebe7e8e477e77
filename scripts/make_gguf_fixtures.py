#!/usr/bin/env python3
"""Regenerate lapidary's GGUF test fixtures. Needs only numpy, gguf (gguf-py), and for part (b) torch +
transformers (see scripts/requirements.txt). Never needed at run time or by the Rust tests themselves.

(a) tests/fixtures/gguf/
    quant_vectors.json  for every ggml type lapidary dequantizes: a few blocks of random bytes (with sane f16/f32
                        scales) and the f32 values gguf-py's `gguf.quants.dequantize` gives for them (as u32 bits).
                        Q8_K is not in gguf-py; its values come from the one-line reference (d * q) below.
    tiny.gguf.bin       a small valid GGUF v3 (gguf.GGUFWriter) with metadata of every value type (nested arrays
                        too) and a few tensors (F32, F16, Q8_0, Q4_K, and an IQ4_NL one lapidary cannot read).
    tiny.json           what that file holds, for the parser test.
    tiny_gemma3.gguf.bin a toy gemma3 model (2 layers, a 300-token vocabulary with Gemma's token types) and
    tiny_gemma3.json    transformers' view of it: tokenizer ids/decodes and HF-named tensors (norm shift).
(b) tests/fixtures/gemma3_270m/reference.json from transformers loading the real Gemma 3 270M Q4_K_M GGUF
    (scripts/fetch_model.sh): tokenizer ids for tricky strings, dequantized values by HF name, config, eval
    loss on eval.jsonl and greedy generations.

Usage: python scripts/make_gguf_fixtures.py [--skip-real] [--gguf PATH]
"""
import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "tests" / "fixtures" / "gguf"
REAL = REPO / "tests" / "fixtures" / "gemma3_270m"


def f32_bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).ravel().tolist()


# ---------------------------------------------------------------------------------------------- (a) quant vectors
# (type, n_blocks, [(byte offset, "f16"|"f16pos"|"f32") of scale fields])
QUANT_CASES = [
    (T.Q4_0, 4, [(0, "f16")]),
    (T.Q4_1, 4, [(0, "f16"), (2, "f16")]),
    (T.Q5_0, 4, [(0, "f16")]),
    (T.Q5_1, 4, [(0, "f16"), (2, "f16")]),
    (T.Q8_0, 4, [(0, "f16")]),
    (T.Q2_K, 2, [(80, "f16"), (82, "f16pos")]),
    (T.Q3_K, 2, [(108, "f16")]),
    (T.Q4_K, 2, [(0, "f16"), (2, "f16pos")]),
    (T.Q5_K, 2, [(0, "f16"), (2, "f16pos")]),
    (T.Q6_K, 2, [(208, "f16")]),
    (T.Q8_K, 2, [(0, "f32")]),
]


def quant_vectors(rng):
    out = {}
    for qt, n_blocks, scales in QUANT_CASES:
        block, size = gguf.GGML_QUANT_SIZES[qt]
        raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
        for off, kind in scales:
            for b in range(n_blocks):
                if kind == "f32":
                    v = np.array([rng.uniform(-0.05, 0.05)], dtype=np.float32)
                else:
                    lo = 0.0 if kind == "f16pos" else -0.1
                    v = np.array([rng.uniform(lo, 0.1)], dtype=np.float16)
                raw[b, off:off + v.nbytes] = v.view(np.uint8)
        if qt == T.Q8_K:
            d = raw[:, 0:4].copy().view(np.float32)  # (n, 1)
            q = raw[:, 4:260].copy().view(np.int8).astype(np.float32)
            values = (d * q).astype(np.float32)
            source = "reference d * q (gguf-py has no Q8_K)"
        else:
            values = gguf.quants.dequantize(raw, qt)
            source = "gguf.quants.dequantize"
        out[qt.name] = {
            "type_id": int(qt),
            "block_size": block,
            "type_size": size,
            "n_blocks": n_blocks,
            "bytes_hex": raw.tobytes().hex(),
            "values_f32_bits": f32_bits(values),
            "source": source,
        }
    # plain float types
    vals = rng.standard_normal(64).astype(np.float32)
    out["F32"] = {"type_id": 0, "block_size": 1, "type_size": 4, "n_blocks": 64,
                  "bytes_hex": vals.tobytes().hex(), "values_f32_bits": f32_bits(vals), "source": "identity"}
    h = rng.standard_normal(64).astype(np.float16)
    out["F16"] = {"type_id": 1, "block_size": 1, "type_size": 2, "n_blocks": 64,
                  "bytes_hex": h.tobytes().hex(),
                  "values_f32_bits": f32_bits(gguf.quants.dequantize(h.view(np.uint8), T.F16)),
                  "source": "gguf.quants.dequantize"}
    bf = gguf.quants.quantize(rng.standard_normal(64).astype(np.float32), T.BF16)
    out["BF16"] = {"type_id": 30, "block_size": 1, "type_size": 2, "n_blocks": 64,
                   "bytes_hex": bf.tobytes().hex(),
                   "values_f32_bits": f32_bits(gguf.quants.dequantize(bf, T.BF16)),
                   "source": "gguf.quants.dequantize"}
    return out


# ------------------------------------------------------------------------------------------------- (a) tiny.gguf
def write_tiny(rng, path):
    w = gguf.GGUFWriter(str(path), arch="tinyarch")
    meta = {}
    w.add_uint8("test.u8", 200); meta["test.u8"] = ["u8", 200]
    w.add_int8("test.i8", -100); meta["test.i8"] = ["i8", -100]
    w.add_uint16("test.u16", 60000); meta["test.u16"] = ["u16", 60000]
    w.add_int16("test.i16", -30000); meta["test.i16"] = ["i16", -30000]
    w.add_uint32("test.u32", 4000000000); meta["test.u32"] = ["u32", 4000000000]
    w.add_int32("test.i32", -2000000000); meta["test.i32"] = ["i32", -2000000000]
    w.add_float32("test.f32", 0.15625); meta["test.f32"] = ["f32", 0.15625]
    w.add_uint64("test.u64", 2**63 + 5); meta["test.u64"] = ["u64", 2**63 + 5]
    w.add_int64("test.i64", -(2**62)); meta["test.i64"] = ["i64", -(2**62)]
    w.add_float64("test.f64", 2.718281828459045); meta["test.f64"] = ["f64", 2.718281828459045]
    w.add_bool("test.bool", True); meta["test.bool"] = ["bool", True]
    w.add_string("test.string", "héllo ✓ <start_of_turn>"); meta["test.string"] = ["string", "héllo ✓ <start_of_turn>"]
    w.add_array("test.arr_str", ["a", "", "ü"]); meta["test.arr_str"] = ["array", ["a", "", "ü"]]
    w.add_array("test.arr_i32", [1, -2, 3]); meta["test.arr_i32"] = ["array", [1, -2, 3]]
    w.add_array("test.arr_f32", [0.5, -1.25]); meta["test.arr_f32"] = ["array", [0.5, -1.25]]
    w.add_key_value("test.arr_u64", [1, 2**40], V.ARRAY, sub_type=V.UINT64); meta["test.arr_u64"] = ["array", [1, 2**40]]
    w.add_array("test.arr_nested", [[1, 2], [3], [4, 5, 6]]); meta["test.arr_nested"] = ["array", [[1, 2], [3], [4, 5, 6]]]
    w.add_array("test.arr_bool", [True, False]); meta["test.arr_bool"] = ["array", [True, False]]
    w.add_uint32("general.alignment", 64); meta["general.alignment"] = ["u32", 64]
    w.data_alignment = 64

    tensors = {}
    a = rng.standard_normal((3, 4)).astype(np.float32)
    w.add_tensor("t.f32", a)
    tensors["t.f32"] = {"type": "F32", "shape": [3, 4], "values_f32_bits": f32_bits(a)}
    b = rng.standard_normal((2, 3, 5)).astype(np.float16)
    w.add_tensor("t.f16", b)
    tensors["t.f16"] = {"type": "F16", "shape": [2, 3, 5], "values_f32_bits": f32_bits(b.astype(np.float32))}
    c = rng.standard_normal((2, 64)).astype(np.float32)
    cq = gguf.quants.quantize(c, T.Q8_0)
    w.add_tensor("t.q8_0", cq, raw_shape=cq.shape, raw_dtype=T.Q8_0)
    tensors["t.q8_0"] = {"type": "Q8_0", "shape": [2, 64],
                         "values_f32_bits": f32_bits(gguf.quants.dequantize(cq, T.Q8_0))}
    d = rng.integers(0, 256, size=(3, 144), dtype=np.uint8)
    for r in range(3):
        d[r, 0:2] = np.array([0.01 * (r + 1)], dtype=np.float16).view(np.uint8)
        d[r, 2:4] = np.array([0.002], dtype=np.float16).view(np.uint8)
    w.add_tensor("t.q4_k", d, raw_shape=d.shape, raw_dtype=T.Q4_K)
    tensors["t.q4_k"] = {"type": "Q4_K", "shape": [3, 256],
                         "values_f32_bits": f32_bits(gguf.quants.dequantize(d, T.Q4_K))}
    e = rng.integers(0, 256, size=(1, 18), dtype=np.uint8)
    w.add_tensor("t.iq4_nl", e, raw_shape=e.shape, raw_dtype=T.IQ4_NL)
    tensors["t.iq4_nl"] = {"type": "IQ4_NL", "shape": [1, 32]}

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # What gguf-py reads back (a cross-check of this writer and the record above).
    r = gguf.GGUFReader(str(path))
    order = list(r.fields.keys())
    info = [{"name": t.name, "type": t.tensor_type.name, "gguf_dims": [int(x) for x in t.shape],
             "offset": int(t.data_offset)} for t in r.tensors]
    return {"version": 3, "alignment": 64, "metadata": meta, "metadata_order": order,
            "tensor_infos": info, "tensors": tensors, "file_size": os.path.getsize(path)}


# ----------------------------------------------------------------------------------------- (a) tiny_gemma3.gguf
def tiny_vocab():
    toks, types = [], []
    def add(t, ty):
        toks.append(t); types.append(ty)
    for t in ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]:
        add(t, 3)
    add("[multimodal]", 4)
    add("<start_of_turn>", 3)
    add("<end_of_turn>", 3)
    add("\n", 4)
    add("\n\n", 4)
    add("  ", 4)   # space runs: stored with real spaces, respelled by transformers
    add("   ", 4)
    add("<unused0>", 3)
    for i in range(256):
        add(f"<0x{i:02X}>", 6)
    words = ["▁", "h", "e", "l", "o", "w", "r", "d", "i", "t", "s", "a", "n", "u", "▁▁", "he", "ll", "lo", "llo",
             "hello", "▁h", "▁hello", "wo", "or", "ld", "world", "▁w", "▁world", "▁t", "th", "the", "▁the", "is",
             "▁is", "it", "▁it", "an", "▁a", "un", "ur", "tu", "rn", "tur", "turn", "us", "er", "use", "user",
             "▁u", "▁us"]
    for t in words:
        add(t, 1)
    return toks, types


def write_tiny_gemma3(rng, path):
    toks, types = tiny_vocab()
    n_vocab, hidden, heads, kv, head_dim, ffn, layers = len(toks), 32, 2, 1, 16, 64, 2
    w = gguf.GGUFWriter(str(path), arch="gemma3")
    w.add_name("tiny gemma3")
    w.add_context_length(512)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(1_000_000.0)
    w.add_sliding_window(128)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_scores([-1000.0 if ty != 1 else -float(i) for i, ty in enumerate(types)])
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.add_chat_template("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}")

    def q8(name, shape):  # HF shape [out, in]
        x = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        q = gguf.quants.quantize(x, T.Q8_0)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=T.Q8_0)

    def norm(name, n):
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    q8("token_embd.weight", (n_vocab, hidden))
    norm("output_norm.weight", hidden)
    for i in range(layers):
        q8(f"blk.{i}.attn_q.weight", (heads * head_dim, hidden))
        q8(f"blk.{i}.attn_k.weight", (kv * head_dim, hidden))
        w.add_tensor(f"blk.{i}.attn_v.weight", (rng.standard_normal((kv * head_dim, hidden)) * 0.05).astype(np.float16))
        q8(f"blk.{i}.attn_output.weight", (hidden, heads * head_dim))
        q8(f"blk.{i}.ffn_gate.weight", (ffn, hidden))
        q8(f"blk.{i}.ffn_up.weight", (ffn, hidden))
        q8(f"blk.{i}.ffn_down.weight", (hidden, ffn))
        for n in ["attn_norm", "ffn_norm", "post_attention_norm", "post_ffw_norm"]:
            norm(f"blk.{i}.{n}.weight", hidden)
        norm(f"blk.{i}.attn_q_norm.weight", head_dim)
        norm(f"blk.{i}.attn_k_norm.weight", head_dim)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ----------------------------------------------------------------------------------------------- shared helpers
TRICKY = [
    "",
    "hello world",
    " hello world",
    "hello world ",
    "  two leading spaces",
    "trailing spaces   ",
    "tab\tseparated\tvalues",
    "\ttab first",
    "line one\nline two\n\nline four\n",
    "\n\nleading newlines",
    "Emoji: 😀👍🏽 and 🇫🇷 flags",
    "CJK: 你好，世界。日本語のテキスト。한국어",
    "<start_of_turn>user\nhi<end_of_turn>",
    "<start_of_turn>user\nWrite a haiku.<end_of_turn>\n<start_of_turn>model\n",
    "digits 1234567 and 3.14159",
    "1234567",
    "non\u00a0breaking\u00a0space",
    "zero\u200bwidth\u200bspace",
    "Mixed: English, русский, العربية, हिन्दी, ελληνικά",
    "code: def f(x):\n    return x**2  # square",
    "<bos>literal bos<eos> and <unk> and <mask>",
    "a<unused0>b [multimodal] <pad>",
    "caf\u00e9 vs cafe\u0301",
    "   ",
    "\u2581already metaspace",
]

TINY_STRINGS = ["", "hello world", " hello  world", "the user is it", "hello\n\nworld", "  hello   ",
                "<start_of_turn>user\nhello<end_of_turn>", "xyz unknown Ω", "a<unused0>b[multimodal]",
                "hello\tworld", "héllo", "<bos><eos>"]


def tokenizer_record(tok, strings):
    out = []
    for s in strings:
        ids = tok(s, add_special_tokens=True)["input_ids"]
        out.append({"text": s, "ids": ids,
                    "decoded": tok.decode(ids, skip_special_tokens=False),
                    "decoded_skip_special": tok.decode(ids, skip_special_tokens=True)})
    return out


def fnv1a64(s):
    h = 0xcbf29ce484222325
    for b in s.encode("utf-8"):
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def merges_digest(tok):
    j = json.loads(tok.backend_tokenizer.to_str())
    merges = j["model"]["merges"]
    merges = [m if isinstance(m, list) else m.split(" ", 1) for m in merges]
    # FNV-1a 64 of "left\0right\n..." and of "id\0content\0special\0normalized\n..." (ids ascending), so the
    # Rust tests can check the whole merge list and added-token table without shipping them.
    h = fnv1a64("".join(f"{a}\u0000{b}\n" for a, b in merges))
    added = j["added_tokens"]
    ha = fnv1a64("".join(f"{a['id']}\u0000{a['content']}\u0000{int(a['special'])}\u0000{int(a['normalized'])}\n"
                         for a in sorted(added, key=lambda a: a["id"])))
    return {"n_merges": len(merges), "merges_fnv1a64": h, "first_merges": merges[:5],
            "n_added_tokens": len(added), "n_special_added": sum(1 for a in added if a["special"]),
            "added_tokens_fnv1a64": ha,
            "normalizer": j["normalizer"], "pre_tokenizer": j["pre_tokenizer"], "decoder": j["decoder"],
            "post_processor": j["post_processor"],
            "model_options": {k: v for k, v in j["model"].items() if k not in ("vocab", "merges")}}


def versions():
    import importlib.metadata as md
    v = {"python": platform.python_version()}
    for p in ["numpy", "gguf", "torch", "transformers", "tokenizers"]:
        try:
            v[p] = md.version(p)
        except md.PackageNotFoundError:
            v[p] = None
    return v


def sample_tensor(t):
    t = t.detach().float().contiguous()
    flat = t.reshape(-1)
    rec = {"shape": list(t.shape), "first8": flat[:8].tolist(), "last8": flat[-8:].tolist(),
           "sum": float(flat.double().sum()), "abs_sum": float(flat.double().abs().sum())}
    if t.dim() == 2:
        rec["row1_first8"] = t[1, :8].tolist()
    return rec


# ---------------------------------------------------------------------------------------- tiny gemma3 reference
def tiny_gemma3_reference(path):
    from transformers import AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    import torch  # noqa: F401
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    rec = {"tokenizer": tokenizer_record(tok, TINY_STRINGS), "tokenizer_digest": merges_digest(tok)}
    # tensors the way transformers maps and shifts them (load_gguf_checkpoint without a model gives no names,
    # so do the documented mapping here: subtract 1 from every "norm.weight").
    r = gguf.GGUFReader(str(path))
    tens = {}
    for t in r.tensors:
        vals = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        if "norm.weight" in t.name:
            vals = vals - np.float32(1.0)
        tens[t.name] = {"shape": [int(x) for x in reversed(t.shape)], "first8": vals.ravel()[:8].tolist()}
    rec["tensors_by_gguf_name"] = tens
    cfg = load_gguf_checkpoint(str(path), return_tensors=False)["config"]
    rec["hf_gguf_config"] = {k: v for k, v in cfg.items() if isinstance(v, (int, float, str, bool, type(None)))}
    return rec


# ------------------------------------------------------------------------------------------- (b) real reference
EVAL_ROWS = [
    "The quick brown fox jumps over the lazy dog.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "In 1969, astronauts landed on the Moon for the first time.",
    "Please remember to bring an umbrella, because it might rain this afternoon.",
    "Rust is a systems programming language focused on safety and speed.",
]

GEN_PROMPTS = [
    "The capital of France is",
    "<start_of_turn>user\nWrite one sentence about the sea.<end_of_turn>\n<start_of_turn>model\n",
]

HF_TENSORS = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.v_proj.weight",
    "model.layers.0.self_attn.o_proj.weight",
    "model.layers.0.mlp.gate_proj.weight",
    "model.layers.0.mlp.up_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.0.post_attention_layernorm.weight",
    "model.layers.0.pre_feedforward_layernorm.weight",
    "model.layers.0.post_feedforward_layernorm.weight",
    "model.layers.0.self_attn.q_norm.weight",
    "model.layers.0.self_attn.k_norm.weight",
    "model.layers.17.mlp.down_proj.weight",
    "model.norm.weight",
]


def repo_relative_name(hf_config):
    """transformers records the folder the GGUF was loaded from as `_name_or_path`, an absolute path of this
    machine: store it relative to the repository (`.cache/models`), or as the folder's name outside it."""
    p = hf_config.get("_name_or_path")
    if p and os.path.isabs(p):
        path = Path(p).resolve()
        hf_config["_name_or_path"] = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name
    return hf_config


def real_reference(gguf_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, AutoConfig

    torch.manual_seed(0)
    d, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    cfg = AutoConfig.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    sd = model.state_dict()
    rec = {
        "versions": versions(),
        "gguf_file": name,
        "gguf_sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "notes": "transformers loaded the GGUF with dtype=float32, attn_implementation=eager; tokenizer ids with "
                 "add_special_tokens=True; eval loss = sum of next-token NLL over all predicted tokens of all rows "
                 "(each row alone, with BOS) / their count; greedy = generate(do_sample=False, max_new_tokens=16).",
        "hf_config": repo_relative_name(json.loads(cfg.to_json_string(use_diff=False))),
        "tokenizer": tokenizer_record(tok, TRICKY),
        "tokenizer_digest": merges_digest(tok),
        "tensors": {n: sample_tensor(sd[n]) for n in HF_TENSORS},
        "lm_head_tied": bool(model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()),
    }

    rows = [json.loads(l)["text"] for l in (REAL / "eval.jsonl").read_text().splitlines() if l.strip()]
    total, count, per_row = 0.0, 0, []
    with torch.no_grad():
        for text in rows:
            ids = tok(text, return_tensors="pt", add_special_tokens=True)["input_ids"]
            logits = model(ids).logits.float()
            logp = torch.log_softmax(logits[0, :-1], dim=-1)
            nll = -logp.gather(1, ids[0, 1:, None])[:, 0]
            total += float(nll.double().sum())
            count += nll.numel()
            per_row.append({"ids": ids[0].tolist(), "mean_nll": float(nll.double().mean()),
                            "n_predicted": nll.numel(), "first_logits8": logits[0, 0, :8].tolist()})
    rec["eval"] = {"file": "eval.jsonl", "mean_nll": total / count, "n_predicted": count, "rows": per_row}

    gens = []
    with torch.no_grad():
        for p in GEN_PROMPTS:
            ids = tok(p, return_tensors="pt", add_special_tokens=True)["input_ids"]
            out = model.generate(ids, max_new_tokens=16, do_sample=False, attention_mask=torch.ones_like(ids))
            new = out[0, ids.shape[1]:].tolist()
            gens.append({"prompt": p, "prompt_ids": ids[0].tolist(), "new_ids": new,
                         "new_text": tok.decode(new, skip_special_tokens=False),
                         "stopped_at_eos": len(new) < 16})
    rec["greedy"] = gens
    rec["generation_config"] = model.generation_config.to_dict()
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--gguf", default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(1234)
    FIX.mkdir(parents=True, exist_ok=True)

    qv = {"versions": versions(), "types": quant_vectors(rng)}
    (FIX / "quant_vectors.json").write_text(json.dumps(qv, separators=(",", ":")) + "\n")
    tiny = write_tiny(rng, FIX / "tiny.gguf.bin")
    (FIX / "tiny.json").write_text(json.dumps(tiny, indent=1, ensure_ascii=False) + "\n")
    write_tiny_gemma3(rng, FIX / "tiny_gemma3.gguf.bin")
    tg = tiny_gemma3_reference(FIX / "tiny_gemma3.gguf.bin")
    tg["versions"] = versions()
    (FIX / "tiny_gemma3.json").write_text(json.dumps(tg, indent=1, ensure_ascii=False) + "\n")
    print("wrote", FIX)

    if args.skip_real:
        return
    REAL.mkdir(parents=True, exist_ok=True)
    (REAL / "eval.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in EVAL_ROWS))
    cache = Path(os.environ.get("LAPIDARY_CACHE", REPO / ".cache"))
    path = Path(args.gguf) if args.gguf else cache / "models" / "gemma-3-270m-q4_k_m.gguf"
    if not path.exists():
        sys.exit(f"{path} is missing: run scripts/fetch_model.sh first (or pass --skip-real)")
    rec = real_reference(path)
    (REAL / "reference.json").write_text(json.dumps(rec, indent=1, ensure_ascii=False) + "\n")
    print("wrote", REAL / "reference.json")


if __name__ == "__main__":
    main()
