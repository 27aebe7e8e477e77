#!/usr/bin/env python3
"""Reference fixtures for lapidary's ggml quantizers (model/src/quant/ggml/encode.rs) and llama-quantize's
per-tensor type choice (model/src/quant/ggml/preset.rs), made by llama.cpp itself: the tools and libggml-base
that scripts/llama_cpp.sh builds from the llama.cpp vendored in llama-cpp-python 0.3.36. Needs numpy and gguf
(scripts/requirements.txt). Never needed at run time or by the Rust tests.

tests/fixtures/ggml_quant/
  synthetic.json   seeded rows (zeros, sub-epsilon, tiny, outliers, one-signed, grid ties, mixed sub-block
                   scales; rows of 256 and 512; 96 plain weight-like rows) and, per type, the bytes of ggml's `ggml_quantize_chunk` with no
                   importance matrix (what llama-quantize runs without --imatrix), called through ctypes;
                   plus the sha256 of its output on a million generated values (`generated_values`, which
                   the Rust test reproduces exactly).
  f32.json         the real Gemma 3 270M Q4_K_M GGUF (scripts/fetch_model.sh) turned into f32 by
                   `llama-quantize --allow-requantize IN OUT F32`: per tensor name, type, shape, sha256 of its
                   bytes. Checked here to be gguf-py's dequantization of the input, bit for bit.
  <TARGET>.json    `llama-quantize [--pure] f32.gguf OUT TARGET` for the single types (--pure) and the presets
                   Q4_K_M and Q5_K_M: tensors in output order with type, shape ([rows, cols]) and sha256.
The quantized files themselves (hundreds of MB) are not kept.

Usage: python scripts/make_ggml_quant_fixtures.py [--skip-real] [--gguf PATH]
"""
import argparse
import ctypes
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import gguf
from gguf import GGUFReader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_cpp_ref import llama_cpp_commit  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "ggml_quant"
LLAMA_CPP_PYTHON = "0.3.36"

# ggml type ids (ggml.h) of what lapidary encodes.
TYPES = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13,
         "Q6_K": 14}
SINGLE = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "Q2_K", "Q3_K"]
PRESETS = ["Q4_K_M", "Q5_K_M"]


def llama_bin():
    out = subprocess.check_output(["bash", str(REPO / "scripts" / "llama_cpp.sh"), sys.executable], cwd=REPO)
    return (REPO / out.decode().strip()).resolve()


def llama_version(bin_dir):
    commit = llama_cpp_commit(bin_dir.parent.parent) or "unknown"
    return {"llama_cpp_python_sdist": LLAMA_CPP_PYTHON, "llama_cpp_commit": commit, "gguf_py": importlib.metadata.version("gguf")}


def synthetic_rows(rng, n):
    """Rows that reach every branch of the reference quantizers."""
    rows = []
    z = lambda: np.zeros(n, np.float32)  # noqa: E731
    rows.append(rng.standard_normal(n))                                   # plain
    rows.append(rng.standard_normal(n) * 0.02)                            # weight-like
    rows.append(z())                                                      # all zero
    rows.append(rng.standard_normal(n) * 1e-20)                           # below GROUP_MAX_EPS
    r = rng.standard_normal(n) * 0.05
    r[rng.choice(n, 6, replace=False)] *= 60.0                            # outliers
    rows.append(r)
    rows.append(rng.uniform(0.1, 1.0, n))                                 # positive only
    rows.append(-rng.uniform(0.1, 1.0, n))                                # negative only
    r = z()
    r[: n // 2] = 0.5                                                     # constant blocks (max == min)
    rows.append(r)
    rows.append(rng.integers(-8, 8, n) * 0.25)                            # grid values: rounding ties
    r = z()
    r[rng.choice(n, n // 16, replace=False)] = rng.standard_normal(n // 16)  # sparse
    rows.append(r)
    rows.append(rng.standard_normal(n) * 1e-6)                            # f16-subnormal scales
    rows.append(rng.standard_normal(n) * 300.0)                           # large
    scale = np.repeat(10.0 ** rng.uniform(-4, 0, n // 16), 16)             # mixed sub-block scales
    rows.append(rng.standard_normal(n) * scale)
    rows.append(rng.standard_t(2, n) * 0.1)                               # heavy tail
    r = rng.standard_normal(n) * 0.02
    r[::32] = 0.0
    r[1::32] = -r[1::32].max() * 4                                        # negative extreme per block
    rows.append(r)
    rows.append(np.abs(rng.standard_normal(n)) + 3.0)                     # positive, min far from 0
    return np.stack(rows).astype(np.float32)


def make_synthetic(bin_dir):
    lib = ctypes.CDLL(str(bin_dir / "libggml-base.so"))
    f = lib.ggml_quantize_chunk
    f.restype = ctypes.c_size_t
    f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                  ctypes.c_void_p]
    row_size = lib.ggml_row_size
    row_size.restype = ctypes.c_size_t
    row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    rng = np.random.default_rng(20261207)
    cases = []
    for width, many in ((256, False), (512, False), (256, True)):
        if many:
            # Many plain weight-like rows: the long searches of the k-quants, where an f32 rounding done
            # differently (a fused multiply-add, a reordered sum) shows up in some block.
            x = (rng.standard_normal((96, width)) * 10.0 ** rng.uniform(-3, 0, (96, 1))).astype(np.float32)
        else:
            x = synthetic_rows(rng, width)
        x = np.ascontiguousarray(x)
        nrows = x.shape[0]
        out = {}
        for name, tid in TYPES.items():
            size = row_size(tid, width) * nrows
            dst = ctypes.create_string_buffer(size)
            got = f(tid, x.ctypes.data, dst, 0, nrows, width, None)
            assert got == size, (name, got, size)
            out[name] = dst.raw.hex()
        cases.append({"rows": nrows, "cols": width, "values_f32_le": x.tobytes().hex(), "bytes": out})
    gen = generated_values(GEN_ROWS, GEN_COLS, GEN_SEED)
    gen_sha = {}
    for name, tid in TYPES.items():
        size = row_size(tid, GEN_COLS) * GEN_ROWS
        dst = ctypes.create_string_buffer(size)
        assert f(tid, gen.ctypes.data, dst, 0, GEN_ROWS, GEN_COLS, None) == size
        gen_sha[name] = hashlib.sha256(dst.raw).hexdigest()
    return {"reference": "ggml_quantize_chunk(type, x, y, 0, rows, cols, NULL) from libggml-base",
            "version": llama_version(bin_dir), "cases": cases,
            "generated": {"rows": GEN_ROWS, "cols": GEN_COLS, "seed": GEN_SEED,
                          "values_sha256": hashlib.sha256(gen.tobytes()).hexdigest(), "sha256": gen_sha}}


GEN_ROWS, GEN_COLS, GEN_SEED = 4096, 256, 12345


def generated_values(rows, cols, seed):
    """A million values that the Rust test makes identically (exact f32 operations only): splitmix64 of the
    index, its top 24 bits as u in [-0.5, 0.5), cubed (heavy tails), times 2^-(row % 8). Enough blocks that an
    f32 rounding done differently (a fused multiply-add, a reordered sum) changes some k-quant block."""
    i = np.arange(rows * cols, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (i + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24) - np.float32(0.5)
    scale = (np.float32(2.0) ** -(np.arange(rows) % 8).astype(np.float32)).astype(np.float32)
    v = (u * u * u).reshape(rows, cols) * scale[:, None]
    return np.ascontiguousarray(v.astype(np.float32))


def tensor_records(path):
    r = GGUFReader(str(path))
    recs = []
    for t in r.tensors:
        data = np.ascontiguousarray(t.data)
        recs.append({"name": t.name, "type": t.tensor_type.name,
                     "shape": [int(v) for v in reversed(list(t.shape))],
                     "sha256": hashlib.sha256(data.tobytes()).hexdigest()})
    return r, recs


def run(cmd):
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr)
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
        raise SystemExit(f"{cmd[0]} failed ({p.returncode})")
    return p.stdout + p.stderr


def make_real(bin_dir, model):
    quantize = bin_dir / "llama-quantize"
    version = llama_version(bin_dir)
    threads = str(os.cpu_count() or 2)
    with tempfile.TemporaryDirectory(dir=REPO / ".cache") as tmp:
        f32 = Path(tmp) / "f32.gguf"
        run([quantize, "--allow-requantize", model, f32, "F32", threads])
        src, _ = tensor_records(model)
        out, recs = tensor_records(f32)
        # llama-quantize's F32 must be the dequantization of the input and nothing else.
        by_name = {t.name: t for t in src.tensors}
        for t in out.tensors:
            s = by_name[t.name]
            want = gguf.quants.dequantize(s.data, s.tensor_type).astype(np.float32)
            assert t.tensor_type.name == "F32", t.name
            assert np.array_equal(np.asarray(t.data).view(np.uint32), want.reshape(t.data.shape).view(np.uint32)), \
                f"{t.name}: llama-quantize F32 is not gguf-py's dequantization"
        arch = src.fields["general.architecture"].contents()
        (OUT / "f32.json").write_text(json.dumps({
            "command": "llama-quantize --allow-requantize gemma-3-270m-q4_k_m.gguf f32.gguf F32",
            "input": model.name, "arch": arch, "block_count": int(src.fields[f"{arch}.block_count"].contents()),
            "version": version, "tensors": recs}, indent=1) + "\n")
        del src, out
        for target in SINGLE + PRESETS:
            pure = target in SINGLE
            dst = Path(tmp) / f"{target}.gguf"
            cmd = [quantize] + (["--pure"] if pure else []) + [f32, dst, target, threads]
            log = run(cmd)
            _, recs = tensor_records(dst)
            dst.unlink()
            fallbacks = [ln.strip() for ln in log.splitlines() if "falling back" in ln]
            name = ("pure_" if pure else "") + target
            (OUT / f"{name}.json").write_text(json.dumps({
                "command": "llama-quantize " + ("--pure " if pure else "") + f"f32.gguf out.gguf {target}",
                "pure": pure, "target": target, "version": version, "n_fallback_lines": len(fallbacks),
                "tensors": recs}, indent=1) + "\n")
            print(f"{name}: {len(recs)} tensors, {len(fallbacks)} fallbacks", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--gguf", type=Path, default=REPO / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    bin_dir = llama_bin()
    (OUT / "synthetic.json").write_text(json.dumps(make_synthetic(bin_dir)) + "\n")
    if not a.skip_real:
        make_real(bin_dir, a.gguf.resolve())


if __name__ == "__main__":
    main()
