#!/usr/bin/env python3
"""The GGUF round trip on the real Gemma 3 270M Q4_K_M, with llama.cpp itself as the reference.

    python scripts/make_llama_cpp_roundtrip_fixtures.py [--llama-cpp DIR] [--retrain]

Needs the model (scripts/fetch_model.sh), llama.cpp's tools and libllama built from the llama-cpp-python sdist
(scripts/llama_cpp.sh; DIR defaults to .cache/llama.cpp/llama_cpp_python-0.3.36/vendor/llama.cpp), torch + numpy +
gguf for llama.cpp's convert_lora_to_gguf.py, and lapidary built (cargo build --release -p lapidary): this script
runs lapidary to make the files llama.cpp is given, and records their sha256 so that the Rust test
(tests/llama_cpp_roundtrip.rs) can check it rebuilds exactly the files llama.cpp ran. Rust tests never run
llama.cpp or Python.

Writes tests/fixtures/llama_cpp/:
  adapter/          a LoRA adapter lapidary trained with quant = "gguf" (the file's own blocks) on
                    configs/data/dates_train.jsonl: r 8 on q_proj and v_proj, 20 steps. Kept unless --retrain.
  train.json        that run's summary (the loss falls).
  ppl.txt           the text llama-perplexity reads: the 24 held-out quickstart rows, prompt + completion.
  ppl_rows.jsonl    llama-perplexity's chunks as `lapidary eval` rows: llama.cpp's tokens of ppl.txt cut into
                    chunks of N_CTX, the first token of each replaced by BOS, labels only on the tokens
                    llama-perplexity scores (positions N_CTX/2 + 1 .. N_CTX - 1), -100 elsewhere.
  reference.json    llama-perplexity's PPL on the base file, with --lora (the adapter as lapidary's
                    `convert --dtype f32` writes it) and on lapidary's merged files (--dtype same and f16); the
                    sha256 of every file llama.cpp ran; per-tensor sha256 of what llama.cpp's
                    convert_lora_to_gguf.py writes from the same adapter (f32); llama-export-lora's merge
                    (f16) sampled per tensor (values at seeded positions, exact sums) to compare with
                    `lapidary merge --out x.gguf --dtype f16` without storing 500 MB.
"""
import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_cpp_ref import DEFAULT_LLAMA, llama_cpp_commit  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "tests" / "fixtures" / "llama_cpp"
MODEL = REPO / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf"
BIN = REPO / "target" / "release" / "lapidary"
N_CTX = 64
# Positions sampled per tensor of the export-lora comparison (seeded, the same for every tensor size).
SAMPLES = 64
TRAIN_SETTINGS = [
    'model.quant="gguf"', "lora.r=8", "lora.alpha=16", 'lora.targets=["q_proj", "v_proj"]', "lora.dropout=0.0",
    "data.completion_only=false", "train.max_steps=20", "train.eval_every=0", 'train.eval_metrics=["loss"]', "train.save_every=0",
    "output.tensorboard=false",
]


def sha256(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def run(cmd, **kw):
    """stdout and stderr together (llama.cpp logs to stderr); exits with both on failure."""
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{(r.stdout + r.stderr)[-4000:]}")
    return r.stdout, r.stderr


def lapidary(*args):
    return run([BIN, *args], cwd=REPO)[0]


def rel(p):
    return str(Path(p).relative_to(REPO))


def train_adapter():
    out = FIX / "adapter"
    with tempfile.TemporaryDirectory() as td:
        sets = [a for s in TRAIN_SETTINGS for a in ("--set", s)]
        stdout = lapidary("train", "configs/gemma-3-270m-qlora.toml", "--set", f'model.path="{rel(MODEL)}"',
                          "--set", f'output.dir="{td}/run"', *sets)
        summary = {k: v for k, v in json.loads(stdout).items() if k != "adapter"}
        metrics = [json.loads(l) for l in (Path(td) / "run" / "metrics.jsonl").read_text().splitlines()]
        losses = [m["loss"] for m in metrics if "loss" in m]
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(Path(td) / "run" / "adapter", out)
    rec = {"settings": TRAIN_SETTINGS, "recipe": "configs/gemma-3-270m-qlora.toml", "summary": summary,
           "train_losses": losses}
    (FIX / "train.json").write_text(json.dumps(rec, indent=1) + "\n")
    print(f"adapter: trained, losses {losses[0]:.4f} -> {losses[-1]:.4f}")


def ppl_text():
    rows = [json.loads(l) for l in (REPO / "configs" / "data" / "dates_eval.jsonl").read_text().splitlines()]
    text = "".join(r["prompt"] + r["completion"] + "\n\n" for r in rows)
    (FIX / "ppl.txt").write_text(text)
    return text


def tokens_child(model, text_path, out_path, lib_dir, py_dir):
    """In a subprocess (the binding loads libllama): llama.cpp's tokens of the text as llama-perplexity takes
    them (common_tokenize(..., add_special = true, parse_special = false)), its BOS id and add_bos."""
    import os
    os.environ["LLAMA_CPP_LIB_PATH"] = lib_dir
    sys.path.insert(0, py_dir)
    import llama_cpp
    m = llama_cpp.Llama(model_path=model, vocab_only=True, verbose=False)
    text = Path(text_path).read_text().encode()
    vocab = llama_cpp.llama_model_get_vocab(m.model)
    out = {"tokens": m.tokenize(text, add_bos=True, special=False), "bos": m.token_bos(),
           "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab))}
    Path(out_path).write_text(json.dumps(out))


def llama_tokens(llama, text_path):
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "tokens.json"
        run([sys.executable, __file__, "--tokens-child", MODEL, text_path, out, llama / "build" / "bin",
             llama.parent.parent])
        return json.loads(out.read_text())


def ppl_rows(tok):
    t, first = tok["tokens"], N_CTX // 2
    rows = []
    for c in range(len(t) // N_CTX):
        ids = t[c * N_CTX:(c + 1) * N_CTX]
        if tok["add_bos"]:
            ids[0] = tok["bos"]
        labels = [ids[i] if i > first else -100 for i in range(N_CTX)]
        rows.append({"input_ids": ids, "labels": labels})
    with open(FIX / "ppl_rows.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return rows


def perplexity(llama, model, lora=None):
    cmd = [llama / "build" / "bin" / "llama-perplexity", "-m", model, "-f", FIX / "ppl.txt", "-c", N_CTX, "-t", 2]
    if lora:
        cmd += ["--lora", lora]
    out = "".join(run(cmd))
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", out)
    if not m:
        sys.exit(f"no PPL in llama-perplexity's output:\n{out[-3000:]}")
    chunks = re.search(r"computing over (\d+) chunks|calculating perplexity over (\d+) chunks", out)
    return {"ppl": float(m.group(1)), "pm": float(m.group(2)),
            "chunks": int(next(g for g in chunks.groups() if g)) if chunks else None,
            "file_sha256": sha256(model), "lora_sha256": sha256(lora) if lora else None}


def gguf_tensors(path):
    import gguf
    r = gguf.GGUFReader(path)
    return {t.name: t for t in r.tensors}


def tensor_hashes(path):
    return {n: {"type": t.tensor_type.name, "shape": [int(x) for x in reversed(t.shape)],
                "sha256": hashlib.sha256(bytes(t.data.tobytes())).hexdigest()}
            for n, t in gguf_tensors(path).items()}


def converter_adapter(llama, td):
    """llama.cpp's convert_lora_to_gguf.py on the adapter; the base's hparams from the config.json lapidary
    writes for the GGUF (the converter reads only config.json from --base)."""
    base = Path(td) / "base"
    lapidary("convert", "--model", MODEL, "--out", base)
    cfg_only = Path(td) / "base_config"
    cfg_only.mkdir()
    shutil.copy(base / "config.json", cfg_only / "config.json")
    shutil.rmtree(base)
    out = Path(td) / "converter.gguf"
    run([sys.executable, llama / "convert_lora_to_gguf.py", FIX / "adapter", "--base", cfg_only, "--outfile", out,
         "--outtype", "f32"])
    return tensor_hashes(out)


def export_lora_samples(llama, lora, td):
    """llama-export-lora's merge (it writes the merged tensors in f16): per merged tensor, the f16 bits at SAMPLES
    seeded positions and the exact f64 sum of its values."""
    out = Path(td) / "export.gguf"
    run([llama / "build" / "bin" / "llama-export-lora", "-m", MODEL, "--lora", lora, "-o", out, "-t", 2])
    rec = {}
    for name, t in gguf_tensors(out).items():
        if t.tensor_type.name != "F16" or ".lora" in name:
            continue
        v = np.asarray(t.data).reshape(-1)
        idx = np.random.default_rng(0).integers(0, v.size, SAMPLES)
        rec[name] = {"type": "F16", "positions": idx.tolist(), "f16_bits": v[idx].view(np.uint16).tolist(),
                     "sum": float(v.astype(np.float64).sum()), "numel": int(v.size)}
    return rec, tensor_hashes(out)


def versions(llama):
    import gguf
    import torch
    return {"python": sys.version.split()[0], "torch": torch.__version__, "gguf": getattr(gguf, "__version__", "?"),
            "llama.cpp": {"source": "llama-cpp-python 0.3.36 sdist, vendor/llama.cpp", "commit": llama_cpp_commit(llama)}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", type=Path, default=DEFAULT_LLAMA)
    ap.add_argument("--retrain", action="store_true", help="train a new adapter (default: keep the stored one)")
    ap.add_argument("--no-merge", action="store_true", help="skip the merged files (and export-lora)")
    ap.add_argument("--tokens-child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.tokens_child:
        tokens_child(*args.tokens_child)
        return
    llama = args.llama_cpp
    for need in [MODEL, BIN, llama / "build" / "bin" / "llama-perplexity"]:
        if not need.exists():
            sys.exit(f"missing {need} (scripts/fetch_model.sh, cargo build --release -p lapidary, scripts/llama_cpp.sh)")
    FIX.mkdir(parents=True, exist_ok=True)
    if args.retrain or not (FIX / "adapter" / "adapter_model.safetensors").exists():
        train_adapter()
    ppl_text()
    tok = llama_tokens(llama, FIX / "ppl.txt")
    rows = ppl_rows(tok)
    ref = {"n_ctx": N_CTX, "chunks": len(rows), "tokens": tok["tokens"], "bos": tok["bos"],
           "add_bos": tok["add_bos"], "versions": versions(llama)}
    with tempfile.TemporaryDirectory() as td:
        lora = Path(td) / "adapter.gguf"
        lapidary("convert", "--model", MODEL, "--adapter", FIX / "adapter", "--out", lora, "--dtype", "f32")
        ref["adapter_gguf_sha256"] = sha256(lora)
        ref["converter_adapter_tensors"] = converter_adapter(llama, td)
        ref["ppl"] = {"base": perplexity(llama, MODEL), "lora": perplexity(llama, MODEL, lora)}
        for dtype in [] if args.no_merge else ["same", "f16"]:
            out = Path(td) / f"merged_{dtype}.gguf"
            lapidary("merge", "--model", MODEL, "--adapter", FIX / "adapter", "--out", out, "--dtype", dtype)
            ref["ppl"][f"merged_{dtype}"] = perplexity(llama, out)
        if not args.no_merge:
            ref["export_lora"], export_hashes = export_lora_samples(llama, lora, td)
            ref["export_lora_types"] = {n: h["type"] for n, h in export_hashes.items()}
    (FIX / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(json.dumps({k: v["ppl"] for k, v in ref["ppl"].items()}))
    print("wrote", rel(FIX))


if __name__ == "__main__":
    main()
