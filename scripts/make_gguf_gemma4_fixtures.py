#!/usr/bin/env python3
"""Gemma 4 GGUF fixtures: the tiny Gemma 4 checkpoints (tests/fixtures/tiny/gemma4, gemma4_moe, made by
scripts/make_gemma4_fixtures.py) converted by llama.cpp's own `convert_hf_to_gguf.py`, with references.
Never needed at run time or by the Rust tests themselves.

    python scripts/make_gguf_gemma4_fixtures.py [--llama-cpp DIR] [--no-llama-cpp-logits]

Needs torch, transformers (5.23), numpy, safetensors, and llama.cpp's source tree: DIR defaults to the one
vendored in llama-cpp-python 0.3.36 that `scripts/llama_cpp.sh` unpacks and builds
(.cache/llama.cpp/llama_cpp_python-0.3.36/vendor/llama.cpp, commit 0c1e570). Its converter and gguf-py (which
has MODEL_ARCH.GEMMA4; the gguf package on PyPI may not) write the files. llama.cpp's own logits come from
that package's ctypes binding (its Python sources next to vendor/, plus `diskcache`) on the built libllama,
in a subprocess.

Writes tests/fixtures/gguf/:
  tiny_gemma4_f32.gguf.bin        tiny/gemma4 (dense: per-layer inputs, KV sharing, double-wide MLP,
                                  attention_k_eq_v, proportional RoPE), --outtype f32: every tensor as saved.
  tiny_gemma4_q8_0.gguf.bin       the same, --outtype q8_0 (the converter keeps norms f32 and writes rows it
                                  cannot block as f16: per_layer_token_embd, blk.N.proj).
  tiny_gemma4_moe_q8_0.gguf.bin   tiny/gemma4_moe (4 experts, top-2), --outtype q8_0 (3-D expert tensors).
  tiny_gemma4_reference.safetensors
      <stem>.input_ids / <stem>.logits: transformers (f32, eager) on the model with every weight replaced by the
      file's dequantized tensor (for the f32 file: equal to tiny/gemma4/reference.safetensors, not stored);
      <stem>.logits_llama_cpp: llama.cpp's logits for the same rows, where llama.cpp runs the file.
  tiny_gemma4.json                per file: tensor types/shapes, metadata, the check of every tensor against the
                                  checkpoint under the converter's own name map (gguf-py TensorNameMap + its
                                  Gemma 4 special cases), transformers' own f32-vs-f64 spread, llama.cpp's
                                  outcome and its distance from transformers by position (also for an f32
                                  conversion of tiny/gemma4_moe, not stored); transformers' tokenizer for the
                                  file (GemmaTokenizer(gguf_file=...): ids for a few strings, no BOS).

Checks (asserts): the converter is deterministic (two runs, same bytes); every GGUF tensor but rope_freqs is
one checkpoint tensor (f32: bit-equal; q8_0/f16: within the type's rounding), and every checkpoint tensor
is in the file.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_cpp_ref import llama_cpp_commit  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "tests" / "fixtures" / "gguf"
TINY = REPO / "tests" / "fixtures" / "tiny"
DEFAULT_LLAMA = REPO / ".cache" / "llama.cpp" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"

FILES = [
    # (stem, checkpoint dir, converter --outtype, stored)
    ("tiny_gemma4_f32", "gemma4", "f32", True),
    ("tiny_gemma4_q8_0", "gemma4", "q8_0", True),
    ("tiny_gemma4_moe_q8_0", "gemma4_moe", "q8_0", True),
    # Not stored (1.1 MB): only to record how closely llama.cpp follows transformers without q8 rounding.
    ("tiny_gemma4_moe_f32", "gemma4_moe", "f32", False),
]

STRINGS = ["", "hello world", " hello  world", "the user is it", "hello\n\nworld",
           "<start_of_turn>user\nhello<end_of_turn>", "héllo ünïcode Ω", "<bos><eos>", "tab\tand  spaces  "]


def sha256(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def convert(llama, model_dir, outtype, out):
    cmd = [sys.executable, str(llama / "convert_hf_to_gguf.py"), str(model_dir), "--outfile", str(out),
           "--outtype", outtype]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-4000:]}")


def llama_logits_child(gguf_path, ids_path, out_path, lib_dir, py_dir):
    """Runs in a subprocess: llama.cpp's logits (logits_all) for each row, each row in a fresh context."""
    import numpy as np
    os.environ["LLAMA_CPP_LIB_PATH"] = lib_dir
    sys.path.insert(0, py_dir)
    import llama_cpp
    ids = np.load(ids_path)
    rows = []
    for r in ids:
        m = llama_cpp.Llama(model_path=gguf_path, n_ctx=64, n_batch=64, n_ubatch=64, logits_all=True,
                            verbose=False, n_threads=2)
        m.eval([int(x) for x in r])
        rows.append(np.array(m.scores[:len(r)], dtype=np.float32))
        del m
    np.save(out_path, np.stack(rows))


def llama_logits(llama, gguf_path, input_ids):
    """(logits or None, a note)."""
    import numpy as np
    lib = llama / "build" / "bin"
    py = llama.parent.parent  # llama_cpp_python-0.3.36/ holds the llama_cpp package
    if not (lib / "libllama.so").exists() or not (py / "llama_cpp").is_dir():
        return None, f"not run: no built libllama in {lib} or no llama_cpp package in {py} (scripts/llama_cpp.sh)"
    with tempfile.TemporaryDirectory() as td:
        ids_path, out_path = Path(td) / "ids.npy", Path(td) / "logits.npy"
        np.save(ids_path, input_ids)
        r = subprocess.run([sys.executable, __file__, "--llama-child", str(gguf_path), str(ids_path), str(out_path),
                            str(lib), str(py)], capture_output=True, text=True)
        if r.returncode != 0:
            err = [l for l in (r.stdout + r.stderr).splitlines() if "GGML_ASSERT" in l or "error" in l.lower()]
            msg = err[0] if err else f"exit status {r.returncode}"
            msg = re.sub(r"^.*?/vendor/llama\.cpp/", "", msg)
            return None, f"llama.cpp failed: {msg}"
        return np.load(out_path), "ran (llama-cpp-python's binding, CPU, 2 threads, one context per row)"


# ----------------------------------------------------------------------------------- the converter's name map
def converter_name(tmap, hf):
    """The GGUF name llama.cpp's Gemma4Model gives an HF tensor (filter_tensors + modify_tensors + the map)."""
    m = re.search(r"\.layers\.(\d+)\.", hf)
    bid = int(m.group(1)) if m else None
    if hf.endswith("router.scale"):
        return f"blk.{bid}.ffn_gate_inp.scale"
    if hf.endswith(".per_expert_scale"):
        return f"blk.{bid}.ffn_down_exps.scale"
    name = hf
    if name.endswith("per_dim_scale") or name.endswith("layer_scalar"):
        name += ".weight"
    if ".experts." in name and not name.endswith(".weight"):
        name += ".weight"
    g = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
    if g is None:
        raise AssertionError(f"the converter's map has no name for {hf}")
    return g


def check_tensors(gguf, reader, hf_tensors, n_layers):
    """Every GGUF tensor (but the generated rope_freqs) against the checkpoint tensor the converter wrote it
    from. Returns {gguf name: record} and the dequantized tensors by HF name."""
    import numpy as np
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA4, n_layers)
    to_hf = {}
    for hf in hf_tensors:
        g = converter_name(tmap, hf)
        assert g not in to_hf, (g, hf, to_hf.get(g))
        to_hf[g] = hf
    records, by_hf = {}, {}
    for t in reader.tensors:
        shape = [int(x) for x in reversed(t.shape)]
        rec = {"type": t.tensor_type.name, "shape": shape}
        if t.name == "rope_freqs.weight":
            vals = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).ravel()
            rec["values"] = vals.tolist()
            records[t.name] = rec
            continue
        hf = to_hf.pop(t.name, None)
        assert hf is not None, f"{t.name} is no checkpoint tensor"
        want = hf_tensors[hf].astype(np.float32)
        got = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(want.shape)
        err = float(np.abs(got - want).max())
        scale = float(np.abs(want).max())
        # f16 rounds to 2^-11 relative; q8_0 to half a step d = amax/127 per 32-block, plus d's own f16 rounding
        # times up to 127 steps.
        bound = {"F32": 0.0, "F16": scale * 2 ** -11, "Q8_0": scale / 127 * (0.5 + 127 * 2 ** -11)}[t.tensor_type.name]
        assert err <= bound, f"{t.name} ({hf}): max error {err} > {bound}"
        rec.update({"hf": hf, "max_abs_err": err, "max_abs": scale})
        records[t.name] = rec
        by_hf[hf] = got
    assert not to_hf, f"checkpoint tensors missing from the file: {sorted(to_hf.values())}"
    return records, by_hf


def metadata(gguf, reader):
    out = {}
    for k, f in reader.fields.items():
        if k.startswith("tokenizer.ggml.") and k.split(".")[-1] in ("tokens", "scores", "token_type", "merges"):
            out[k] = f"[{len(f.data)} items]"
            continue
        if k.startswith("GGUF."):
            continue
        v = f.contents()
        out[k] = v
    return out


def transformers_logits(model_dir, by_hf, input_ids, f64=False):
    import torch
    from transformers import AutoModelForCausalLM
    kw = {"experts_implementation": "eager"} if "moe" in model_dir.name else {}
    m = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager",
                                             device_map="cpu", **kw).eval()
    if f64:
        m = m.double()
    sd = m.state_dict()
    with torch.no_grad():
        for hf, v in by_hf.items():
            sd[hf].copy_(torch.from_numpy(v).to(sd[hf].dtype))
        out = m(input_ids=torch.from_numpy(input_ids)).logits
        return out.contiguous().numpy() if f64 else out.float().contiguous().numpy()


def f32_noise(model_dir, by_hf, input_ids, logits):
    """How far transformers' f32 logits are from the same model in f64, relative to the logit scale (these random
    models amplify rounding: the yardstick for the 1e-4 the tests allow)."""
    import numpy as np
    l64 = transformers_logits(model_dir, by_hf, input_ids, f64=True)
    return float(np.abs(logits - l64).max() / np.abs(l64).max())


def tokenizer_records(path):
    from transformers import GemmaTokenizer
    tok = GemmaTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    out = []
    for s in STRINGS:
        ids = tok(s, add_special_tokens=True)["input_ids"]
        out.append({"text": s, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})
    return out


def versions(llama):
    import importlib.metadata as md
    v = {"python": sys.version.split()[0]}
    for p in ["numpy", "torch", "transformers", "tokenizers", "safetensors"]:
        try:
            v[p] = md.version(p)
        except md.PackageNotFoundError:
            v[p] = None
    v["llama.cpp"] = {"source": str(llama.relative_to(REPO)) if llama.is_relative_to(REPO) else str(llama),
                      "commit": llama_cpp_commit(llama)}
    return v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", type=Path, default=DEFAULT_LLAMA)
    ap.add_argument("--no-llama-cpp-logits", action="store_true")
    ap.add_argument("--llama-child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.llama_child:
        llama_logits_child(*args.llama_child)
        return
    llama = args.llama_cpp.absolute()
    if not (llama / "convert_hf_to_gguf.py").exists():
        sys.exit(f"{llama} has no convert_hf_to_gguf.py: run `bash scripts/llama_cpp.sh` or pass --llama-cpp")
    # The converter's own gguf-py (MODEL_ARCH.GEMMA4), ahead of any installed one.
    sys.path.insert(0, str(llama / "gguf-py"))
    import gguf
    import numpy as np
    from safetensors.numpy import load_file, save_file

    FIX.mkdir(parents=True, exist_ok=True)
    report = {"versions": versions(llama), "files": {}}
    refs = {}
    with tempfile.TemporaryDirectory() as td:
        for stem, model, outtype, stored in FILES:
            src = TINY / model
            a, b = Path(td) / f"{stem}.a.gguf", Path(td) / f"{stem}.b.gguf"
            convert(llama, src, outtype, a)
            convert(llama, src, outtype, b)
            assert a.read_bytes() == b.read_bytes(), f"{stem}: the converter is not deterministic"
            out = FIX / f"{stem}.gguf.bin" if stored else a
            if stored:
                shutil.copyfile(a, out)
            reader = gguf.GGUFReader(str(out))
            hf_tensors = load_file(str(src / "model.safetensors"))
            cfg = json.loads((src / "config.json").read_text())
            records, by_hf = check_tensors(gguf, reader, hf_tensors, cfg["num_hidden_layers"])
            ref = load_file(str(src / "reference.safetensors"))
            input_ids = ref["input_ids"]
            logits = transformers_logits(src, by_hf, input_ids)
            scale = float(np.abs(ref["logits"]).max())
            moved = float(np.abs(logits - ref["logits"]).max()) / scale
            rec = {"source": f"tests/fixtures/tiny/{model}", "outtype": outtype, "sha256": sha256(out),
                   "size": out.stat().st_size, "metadata": metadata(gguf, reader), "tensors": records,
                   "logits_vs_checkpoint_reference": moved,
                   "transformers_f32_vs_f64": f32_noise(src, by_hf, input_ids, logits)}
            if not stored:
                rec = {k: v for k, v in rec.items() if k not in ("metadata", "tensors")}
                rec["stored"] = False
            if outtype == "f32":
                # Bit-equal weights: transformers gives the checkpoint's own reference.
                assert moved < 1e-6, (stem, moved)
                rec["reference"] = f"tests/fixtures/tiny/{model}/reference.safetensors"
            elif stored:
                refs[f"{stem}.input_ids"] = input_ids
                refs[f"{stem}.logits"] = logits
                rec["reference"] = f"tiny_gemma4_reference.safetensors ({stem}.logits)"
            if not args.no_llama_cpp_logits:
                ll, note = llama_logits(llama, out, input_ids)
                rec["llama_cpp"] = note
                if ll is not None and stored:
                    refs[f"{stem}.logits_llama_cpp"] = ll
                    if f"{stem}.input_ids" not in refs:
                        refs[f"{stem}.input_ids"] = input_ids
                if ll is not None:
                    s = float(np.abs(logits).max())
                    per_pos = np.abs(ll - logits).max(axis=-1) / s
                    rec["llama_cpp_vs_transformers"] = {"per_position": np.round(per_pos, 5).tolist(),
                                                        "median": float(np.median(per_pos))}
            if stem == "tiny_gemma4_f32":
                report["tokenizer"] = tokenizer_records(out)
            report["files"][stem] = rec
            print(f"{stem}: {'' if stored else '(not stored) '}{out.stat().st_size} bytes, {len(reader.tensors)} tensors; transformers on its "
                  f"weights moves the logits by {moved:.2e} of scale; llama.cpp: {rec.get('llama_cpp')}")
    save_file(refs, str(FIX / "tiny_gemma4_reference.safetensors"))
    report["notes"] = (
        "llama.cpp (this commit) cannot run tiny_gemma4_*: its KV-sharing map (llama-model.cpp, reuse callback "
        "for GEMMA3N/GEMMA4) takes the last unshared layer as the global source and the one before as the "
        "sliding one (true of E2B/E4B), but tiny/gemma4's last unshared layers are sliding, sliding "
        "(transformers: the last earlier layer of each type), so its KV cache asserts. transformers 5.23's own "
        "GGUF loader cannot read these files either (per-layer feed_forward_length / head_count_kv arrays fail "
        "its config validation), so the logits references are transformers on the checkpoint with the file's "
        "dequantized weights, and the tokenizer reference is GemmaTokenizer(gguf_file=...) alone."
    )
    (FIX / "tiny_gemma4.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print("wrote", FIX)


if __name__ == "__main__":
    main()
