#!/usr/bin/env python3
"""GGUF model fixtures: the tiny Gemma 1/2/3 checkpoints (tests/fixtures/tiny/gemma1, gemma2, gemma3) written as
GGUF models by llama.cpp's own `convert_hf_to_gguf.py` and by `lapidary convert`, and llama.cpp run on ours.
Never needed at run time or by the Rust tests themselves (tests/gguf_model.rs reads what this writes).

    cargo build --release --locked -p lapidary
    python scripts/make_gguf_model_fixtures.py [--llama-cpp DIR]

Needs numpy, safetensors, sentencepiece (its protobuf module), transformers (5.23) and llama.cpp's source tree
with built libllama (DIR defaults to the one `scripts/llama_cpp.sh` unpacks; see scripts/llama_cpp_ref.py).

The converter needs a `tokenizer.model`, which the tiny checkpoints do not have (only tokenizer.json; without
it the converter refuses: Gemma 1/2 `FileNotFoundError`, Gemma 3 "BPE pre-tokenizer was not recognized").
lapidary then reads the SentencePiece model out of tokenizer.json (model/src/io/gguf/tokenizer_meta.rs), so
this script writes that same model as a real `tokenizer.model` (sentencepiece's protobuf) into a copy of each
checkpoint, written independently below from the rule: pieces in id order; the unk token UNKNOWN, special added
tokens CONTROL, <0xNN> BYTE, the rest NORMAL with score -(rank+1) of the first BPE merge that makes the piece
(else 0). The converter runs on that copy. Whether the rule tokenizes right is checked against transformers by
llama.cpp itself (below), not by this comparison.

Writes tests/fixtures/gguf_model/:
  gemma{1,2,3}.json
    converter: every metadata key of convert_hf_to_gguf.py's f32 file in order ({key, type, value}; arrays as
               lists), and its tensors in order ({name, type, shape}, shape row-major);
    differences: keys whose value in lapidary's file deliberately differs (general.name: the converter's copy
               lives in a directory of the same name, so none is expected here);
    ours: sha256 and size of `lapidary convert --model tests/fixtures/tiny/G --out X.gguf --dtype f32`;
    tokenizer: strings with transformers' ids (AutoTokenizer on the checkpoint, special tokens added) and
               llama.cpp's ids on our file (llama_tokenize, add_bos, special tokens parsed);
    llama_quantize: {TYPE: sha256} of `llama-quantize OUR_F32_FILE X TYPE` for Q4_K_M, Q5_K_M and Q6_K (the
               preset mixes and a single k-quant, whose choice per tensor lapidary follows), which
               `lapidary convert --dtype q4_k_m|q5_k_m|q6_k` must equal byte for byte;
    llama_cpp: what ran; llama_cpp_vs_transformers: max |llama.cpp - transformers| / max |transformers| on
               the rows. transformers runs the checkpoint (f32, eager) as the GGUF describes it: tiny gemma2's
               query_pre_attn_scalar (24) is not its head_dim (16), GGUF has no key for it and llama.cpp
               scales queries by 1/sqrt(head_dim) (as our GGUF reader does), so transformers is given that
               scale too. What remains is llama.cpp's own rounding: its CPU GELU looks its input up in an f16
               table (ggml-cpu vec.h, GGML_GELU_FP16), ~1e-3 of the logits' scale on these random models.
  merged_gemma3.json / merged_gemma3_llama_cpp.safetensors: `lapidary merge --model tests/fixtures/tiny/gemma3
               --adapter tests/fixtures/tiny/gemma3/adapter --out X.gguf --dtype f32`: its sha256, llama.cpp's
               logits on it (logits_llama_cpp) and PEFT's (transformers + PeftModel.merge_and_unload, f32,
               eager) on the same rows (logits_peft), with llama.cpp's distance from PEFT's.
  tiny_tokenizer.model: the tokenizer.model written for the converter (the same for the three: they share
               tokenizer.json), so a test reads a real sentencepiece protobuf.
  gemma{1,2,3}_llama_cpp.safetensors: input_ids (tiny/G/reference.safetensors' rows), logits_llama_cpp
               (llama.cpp's logits on our f32 file) and logits_transformers (the same rows, as above).

Checks (asserts): the converter's file and ours hold the same tensors in the same order with the same bytes;
their metadata differ only in the listed keys.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_cpp_ref import DEFAULT_LLAMA, llama_cpp_commit, llama_logits, llama_tokenize  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "fixtures" / "tiny"
OUT = REPO / "tests" / "fixtures" / "gguf_model"
LAPIDARY = REPO / "target" / "release" / "lapidary"
MODELS = ["gemma1", "gemma2", "gemma3"]
STRINGS = ["", "hello world", " hello  world", "The quick brown fox jumps over the lazy dog.",
           "hello\n\nworld", "<start_of_turn>user\nhello<end_of_turn>", "héllo ünïcode Ω", "1, 2, 3, 4, 5",
           "tab\tand  spaces  ", "She said: 'Numbers are small.'"]


def sentencepiece_model(tokenizer_json):
    import sentencepiece.sentencepiece_model_pb2 as pb
    model = tokenizer_json["model"]
    rank = {}
    for r, m in enumerate(model["merges"]):
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        rank.setdefault(a + b, r)
    special = {t["id"] for t in tokenizer_json["added_tokens"] if t.get("special")}
    sp = pb.ModelProto()
    P = pb.ModelProto.SentencePiece
    for piece, i in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
        p = sp.pieces.add()
        p.piece = piece
        if piece == model.get("unk_token"):
            p.type, p.score = P.UNKNOWN, 0.0
        elif i in special:
            p.type, p.score = P.CONTROL, 0.0
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            p.type, p.score = P.BYTE, 0.0
        else:
            p.type, p.score = P.NORMAL, -float(rank[piece] + 1) if piece in rank else 0.0
    sp.trainer_spec.model_type = pb.TrainerSpec.BPE
    sp.trainer_spec.byte_fallback = True
    sp.normalizer_spec.name = "identity"
    sp.normalizer_spec.add_dummy_prefix = False
    return sp.SerializeToString()


def run(cmd):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{r.stderr[-4000:]}")


def field_value(f):
    v = f.contents()
    if isinstance(v, bytes):
        v = v.decode("utf-8")
    return v


def metadata(reader):
    out = []
    for k, f in reader.fields.items():
        if k.startswith("GGUF."):
            continue
        types = [t.name for t in f.types]
        out.append({"key": k, "type": types[0] if len(types) == 1 else f"{types[0]}[{types[1]}]",
                    "value": field_value(f)})
    return out


def tensors(reader):
    return [{"name": t.name, "type": t.tensor_type.name, "shape": [int(x) for x in reversed(t.shape)]}
            for t in reader.tensors]


def transformers_logits(src, input_ids):
    """The checkpoint in transformers (f32, eager) with the query scale GGUF implies (1/sqrt(head_dim))."""
    import torch
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32, attn_implementation="eager").eval()
    head_dim = m.config.head_dim
    if getattr(m.config, "query_pre_attn_scalar", head_dim) != head_dim:
        for layer in m.model.layers:
            layer.self_attn.scaling = head_dim ** -0.5
    with torch.no_grad():
        return m(input_ids=torch.from_numpy(input_ids)).logits.float().numpy()


def sha256(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def versions(llama):
    import importlib.metadata as md
    v = {"python": sys.version.split()[0]}
    for p in ["numpy", "torch", "transformers", "tokenizers", "safetensors", "sentencepiece"]:
        try:
            v[p] = md.version(p)
        except md.PackageNotFoundError:
            v[p] = None
    v["llama.cpp"] = {"commit": llama_cpp_commit(llama)}
    return v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", type=Path, default=DEFAULT_LLAMA)
    args = ap.parse_args()
    llama = args.llama_cpp.absolute()
    if not (llama / "convert_hf_to_gguf.py").exists():
        sys.exit(f"{llama} has no convert_hf_to_gguf.py: run `bash scripts/llama_cpp.sh` or pass --llama-cpp")
    if not LAPIDARY.exists():
        sys.exit(f"{LAPIDARY} is missing: cargo build --release --locked -p lapidary")
    sys.path.insert(0, str(llama / "gguf-py"))
    import gguf
    import numpy as np
    from safetensors.numpy import load_file, save_file
    from transformers import AutoTokenizer

    OUT.mkdir(parents=True, exist_ok=True)
    for name in MODELS:
        src = TINY / name
        with tempfile.TemporaryDirectory() as td:
            # The copy keeps the directory's name: the converter's general.name comes from it.
            copy = Path(td) / "src" / name
            shutil.copytree(src, copy)
            spm = sentencepiece_model(json.loads((src / "tokenizer.json").read_text()))
            (copy / "tokenizer.model").write_bytes(spm)
            (OUT / "tiny_tokenizer.model").write_bytes(spm)
            theirs, ours = Path(td) / "converter.gguf", Path(td) / "ours.gguf"
            run([sys.executable, llama / "convert_hf_to_gguf.py", copy, "--outfile", theirs, "--outtype", "f32"])
            run([LAPIDARY, "convert", "--model", src, "--out", ours, "--dtype", "f32"])
            rt, ro = gguf.GGUFReader(str(theirs)), gguf.GGUFReader(str(ours))
            meta_t, meta_o = metadata(rt), metadata(ro)
            differences = {}
            assert [m["key"] for m in meta_t] == [m["key"] for m in meta_o], (name, "key order")
            for a, b in zip(meta_t, meta_o):
                if a != b:
                    differences[a["key"]] = {"converter": a["value"], "lapidary": b["value"]}
            assert not differences, (name, differences)
            assert tensors(rt) == tensors(ro), (name, "tensors")
            for a, b in zip(rt.tensors, ro.tensors):
                assert np.array_equal(np.asarray(a.data), np.asarray(b.data)), (name, a.name)

            ref = load_file(str(src / "reference.safetensors"))
            input_ids = ref["input_ids"]
            logits, note = llama_logits(llama, ours, input_ids)
            assert logits is not None, (name, note)
            tf = transformers_logits(src, input_ids)
            vs_tf = float(np.abs(logits - tf).max()) / float(np.abs(tf).max())

            tok = AutoTokenizer.from_pretrained(str(src))
            hf_ids = [tok(s, add_special_tokens=True)["input_ids"] for s in STRINGS]
            ll_ids, tnote = llama_tokenize(llama, ours, STRINGS)
            assert ll_ids is not None, (name, tnote)
            quantized = {}
            bin_dir = llama / "build" / "bin"
            for qt in ["Q4_K_M", "Q5_K_M", "Q6_K"]:
                q = Path(td) / f"{qt}.gguf"
                r = subprocess.run([str(bin_dir / "llama-quantize"), str(ours), str(q), qt, "2"],
                                   capture_output=True, text=True, env={**os.environ, "LD_LIBRARY_PATH": str(bin_dir)})
                assert r.returncode == 0, r.stderr[-2000:]
                quantized[qt] = sha256(q)
            record = {
                "source": f"tests/fixtures/tiny/{name}",
                "versions": versions(llama),
                "converter": {"outtype": "f32", "metadata": meta_t, "tensors": tensors(rt)},
                "differences": differences,
                "ours": {"command": f"lapidary convert --model tests/fixtures/tiny/{name} --out X.gguf --dtype f32",
                         "sha256": sha256(ours), "size": ours.stat().st_size},
                "llama_quantize": quantized,
                "llama_cpp": note,
                "llama_cpp_vs_transformers": vs_tf,
                "tokenizer": {"note": tnote, "rows": [{"text": s, "transformers": h, "llama_cpp": l}
                                                      for s, h, l in zip(STRINGS, hf_ids, ll_ids)]},
            }
            (OUT / f"{name}.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
            save_file({"input_ids": input_ids, "logits_llama_cpp": logits.astype(np.float32), "logits_transformers": tf},
                      str(OUT / f"{name}_llama_cpp.safetensors"))
            same_tok = sum(h == l for h, l in zip(hf_ids, ll_ids))
            print(f"{name}: metadata and tensors equal to the converter's; llama.cpp vs transformers logits "
                  f"{vs_tf:.2e} of scale; tokenization equal on {same_tok}/{len(STRINGS)} strings")
    merged(llama)
    print("wrote", OUT)


def merged(llama):
    """The adapter merged into tiny gemma3 as a GGUF: does llama.cpp run what PEFT's merge computes?"""
    import numpy as np
    import torch
    from peft import PeftModel
    from safetensors.numpy import load_file, save_file
    from transformers import AutoModelForCausalLM
    src, adapter = TINY / "gemma3", TINY / "gemma3" / "adapter"
    input_ids = load_file(str(src / "reference.safetensors"))["input_ids"]
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "merged.gguf"
        run([LAPIDARY, "merge", "--model", src, "--adapter", adapter, "--out", out, "--dtype", "f32"])
        logits, note = llama_logits(llama, out, input_ids)
        assert logits is not None, note
        base = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32, attn_implementation="eager")
        m = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().eval()
        with torch.no_grad():
            peft_logits = m(input_ids=torch.from_numpy(input_ids)).logits.float().numpy()
        dist = float(np.abs(logits - peft_logits).max() / np.abs(peft_logits).max())
        record = {"command": "lapidary merge --model tests/fixtures/tiny/gemma3 --adapter "
                             "tests/fixtures/tiny/gemma3/adapter --out X.gguf --dtype f32",
                  "sha256": sha256(out), "llama_cpp": note, "llama_cpp_vs_peft": dist}
        (OUT / "merged_gemma3.json").write_text(json.dumps(record, indent=1) + "\n")
        save_file({"input_ids": input_ids, "logits_llama_cpp": logits.astype(np.float32),
                   "logits_peft": peft_logits}, str(OUT / "merged_gemma3_llama_cpp.safetensors"))
        print(f"merged gemma3: llama.cpp on our merged GGUF vs PEFT's merged model {dist:.2e} of scale")


if __name__ == "__main__":
    main()
