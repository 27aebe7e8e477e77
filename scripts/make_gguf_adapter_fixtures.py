#!/usr/bin/env python3
"""Regenerate tests/fixtures/gguf_adapter/: what llama.cpp's own `convert_lora_to_gguf.py` writes for lapidary's tiny
PEFT LoRA adapters, the reference that lapidary's GGUF adapter writer is compared against. Never needed at run time
or by the Rust tests themselves.

Inputs (already in the repo):
    tests/fixtures/tiny/gemma3/                 tiny Gemma 3 HF checkpoint, used as --base (only config.json is read)
    tests/fixtures/tiny/gemma3/adapter/         PEFT LoRA, r=4, lora_alpha=8
    tests/fixtures/tiny/gemma3/adapter_rslora/  same with use_rslora=true

Outputs (tests/fixtures/gguf_adapter/). The GGUF files end in `.gguf.bin` because the repo's .gitignore drops *.gguf:
    gemma3_adapter_{f32,f16,bf16,q8_0}.gguf.bin   `--outtype f32|f16|bf16|q8_0` of adapter/
    gemma3_adapter_rslora_f32.gguf.bin            `--outtype f32` of adapter_rslora/
    <same stem>.json                              gguf-py's GGUFReader view of each: header, alignment, every
                                                  metadata key (value, GGUF value type), every tensor in file order
                                                  (name, ggml type, shape in GGUF ne order, byte size, offset,
                                                  sha256) and, per tensor, the PEFT tensor it came from and
                                                  whether its values equal that tensor (untransposed) as stored.
    README.md                                     how they were made (versions, commands).

Getting llama.cpp's source: it is vendored in the `llama-cpp-python` sdist on PyPI, e.g.
    pip download --no-deps --no-binary :all: -d dl llama-cpp-python==0.3.36
    mkdir -p src && tar -xzf dl/llama_cpp_python-0.3.36.tar.gz -C src
    -> src/llama_cpp_python-0.3.36/vendor/llama.cpp  (has convert_lora_to_gguf.py, conversion/, gguf-py/)
Pass that directory (or the extracted sdist root, or the .tar.gz itself, which is then extracted to a temporary
directory) as the first argument, or set LLAMA_CPP_DIR.

Python environment (the converter imports torch, transformers, safetensors, numpy; gguf comes from the vendored
gguf-py, which the converter puts on sys.path itself; gguf-py needs numpy, tqdm, pyyaml, requests):
    python3 -m venv venv-gguf
    venv-gguf/bin/pip install torch transformers==5.23.0 safetensors==0.8.0 numpy sentencepiece tqdm pyyaml \
        requests protobuf
transformers 5.x is needed to read the fixture's config.json (it uses `rope_parameters`).

Usage: python scripts/make_gguf_adapter_fixtures.py [LLAMA_CPP_DIR | SDIST_ROOT | SDIST.tar.gz]
"""
import hashlib
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY_REL = Path("tests") / "fixtures" / "tiny" / "gemma3"
OUT_REL = Path("tests") / "fixtures" / "gguf_adapter"

# (output stem, adapter dir name under TINY_REL, --outtype)
JOBS = [
    ("gemma3_adapter_f32", "adapter", "f32"),
    ("gemma3_adapter_f16", "adapter", "f16"),
    ("gemma3_adapter_bf16", "adapter", "bf16"),
    ("gemma3_adapter_q8_0", "adapter", "q8_0"),
    ("gemma3_adapter_rslora_f32", "adapter_rslora", "f32"),
]


def find_llama_cpp(arg: str | None, tmp: Path) -> Path:
    src = arg or os.environ.get("LLAMA_CPP_DIR")
    if not src:
        sys.exit(__doc__ + "\nerror: give the llama.cpp source dir as an argument or in LLAMA_CPP_DIR")
    p = Path(src).resolve()
    if p.is_file() and p.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(p) as tf:
            tf.extractall(tmp, filter="data")
        p = tmp
    cands = [p, p / "vendor" / "llama.cpp", *sorted(p.glob("*/vendor/llama.cpp"))]
    for c in cands:
        if (c / "convert_lora_to_gguf.py").is_file() and (c / "gguf-py" / "gguf").is_dir():
            return c
    sys.exit(f"error: no convert_lora_to_gguf.py + gguf-py/ under {p}")


def jsonable(v):
    """Plain JSON value; floats that JSON cannot hold exactly are also given as their f32/f64 bits elsewhere."""
    import numpy as np
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (bytes, bytearray)):
        return v.decode("utf-8")
    if isinstance(v, list):
        return [jsonable(x) for x in v]
    return v


def dump(path: Path, adapter_dir: Path) -> dict:
    import numpy as np
    import gguf
    from gguf import GGUFValueType as V
    from safetensors.numpy import load_file

    r = gguf.GGUFReader(path)
    header = {}
    kvs = []
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            header[name[5:]] = int(field.parts[field.data[0]][0])
            continue
        types = [V(t) for t in field.types]
        entry = {"key": name, "type": types[0].name}
        if types[0] == V.ARRAY:
            entry["array_type"] = types[1].name if len(types) > 1 else None
        entry["value"] = jsonable(field.contents())
        if types[0] == V.FLOAT32:
            entry["value_f32_bits"] = int(field.parts[field.data[0]].view(np.uint32)[0])
        kvs.append(entry)

    peft = load_file(str(adapter_dir / "adapter_model.safetensors"))

    def peft_name(gguf_name: str) -> str | None:
        # blk.N.<t>.weight.lora_{a,b} -> base_model.model.model.layers.N.<module>.lora_{A,B}.weight
        m = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}
        parts = gguf_name.split(".")
        if len(parts) != 5 or parts[0] != "blk" or parts[2] not in m:
            return None
        ab = {"lora_a": "lora_A", "lora_b": "lora_B"}[parts[4]]
        return f"base_model.model.model.layers.{parts[1]}.{m[parts[2]]}.{ab}.weight"

    tensors = []
    for t in r.tensors:
        qt = gguf.GGMLQuantizationType(t.tensor_type)
        raw = np.asarray(t.data).tobytes()
        e = {
            "name": t.name,
            "ggml_type": qt.name,
            "ggml_type_id": int(qt),
            "ne": [int(x) for x in t.shape],
            "n_elements": int(t.n_elements),
            "n_bytes": int(t.n_bytes),
            "offset_in_data": int(t.data_offset) - int(r.data_offset),
            "sha256": hashlib.sha256(raw).hexdigest(),
        }
        src = peft_name(t.name)
        if src is not None and src in peft:
            a = peft[src]
            e["peft_source"] = src
            e["peft_shape"] = list(a.shape)
            vals = gguf.quants.dequantize(np.asarray(t.data), qt).reshape(a.shape) if qt != gguf.GGMLQuantizationType.F32 \
                else np.asarray(t.data).reshape(a.shape)
            e["max_abs_diff_vs_peft"] = float(np.max(np.abs(vals.astype(np.float64) - a.astype(np.float64))))
            e["bit_equal_peft"] = bool(qt == gguf.GGMLQuantizationType.F32
                                       and np.array_equal(vals.view(np.uint32), a.astype(np.float32).view(np.uint32)))
        tensors.append(e)

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    return {
        "file": path.name,
        "file_size": path.stat().st_size,
        "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "header": header,
        "alignment": int(r.alignment),
        "data_offset": int(r.data_offset),
        "peft_config": {k: cfg.get(k) for k in ("r", "lora_alpha", "use_rslora", "use_dora", "target_modules")},
        "metadata": kvs,
        "tensor_order": [t["name"] for t in tensors],
        "tensors": tensors,
    }


def main():
    with tempfile.TemporaryDirectory() as tmpd:
        llama = find_llama_cpp(sys.argv[1] if len(sys.argv) > 1 else None, Path(tmpd))
        sys.path.insert(0, str(llama / "gguf-py"))
        out = REPO / OUT_REL
        out.mkdir(parents=True, exist_ok=True)
        commands = []
        for stem, adapter, outtype in JOBS:
            # relative paths, run from the repo root: the converter takes general.name from the base dir's name
            cmd = [sys.executable, str(llama / "convert_lora_to_gguf.py"), "--base", str(TINY_REL),
                   "--outtype", outtype, "--outfile", str(OUT_REL / f"{stem}.gguf.bin"), str(TINY_REL / adapter)]
            shown = " ".join(["python", "$LLAMA_CPP_DIR/convert_lora_to_gguf.py", *cmd[2:]])
            print("+", shown, flush=True)
            res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            if res.returncode != 0:
                sys.stderr.write(res.stdout + res.stderr)
                sys.exit(f"converter failed for {stem}")
            warnings = sorted({ln for ln in res.stderr.splitlines() if ln.startswith("WARNING")})
            commands.append(shown)
            info = dump(out / f"{stem}.gguf.bin", REPO / TINY_REL / adapter)
            info["command"] = shown
            info["converter_warnings"] = warnings
            (out / f"{stem}.json").write_text(json.dumps(info, indent=1) + "\n")
            print(f"  wrote {OUT_REL / stem}.gguf.bin ({info['file_size']} bytes) and .json", flush=True)

        import gguf, numpy, safetensors, torch, transformers
        ver = (llama.parent.parent / "PKG-INFO")
        src_ver = next((ln.split(":", 1)[1].strip() for ln in ver.read_text().splitlines()
                        if ln.startswith("Version:")), "?") if ver.is_file() else "?"
        gguf_ver = next((ln.split("=", 1)[1].strip().strip('"') for ln in
                         (llama / "gguf-py" / "pyproject.toml").read_text().splitlines()
                         if ln.startswith("version")), "?")
        readme = [
            "# GGUF LoRA adapter reference fixtures",
            "",
            "Written by llama.cpp's `convert_lora_to_gguf.py` (vendored in the llama-cpp-python "
            f"{src_ver} sdist, its gguf-py {gguf_ver}) "
            "from the PEFT adapters in `tests/fixtures/tiny/gemma3/`. Regenerate with "
            "`python scripts/make_gguf_adapter_fixtures.py LLAMA_CPP_DIR` (see its docstring).",
            "`.gguf.bin` because `.gitignore` drops `*.gguf`. Each `.json` is gguf-py's GGUFReader view of the file.",
            "",
            f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
            f"safetensors {safetensors.__version__}, numpy {numpy.__version__}",
            "",
            "Commands (run from the repo root):",
            "",
            *[f"    {c}" for c in commands],
            "",
            "What the converter does (see the .json files):",
            "",
            "- keys, in order: general.architecture, general.type=\"adapter\", adapter.type=\"lora\", general.name, "
            "general.base_model.count, general.base_model.0.name, general.tags, adapter.lora.alpha (FLOAT32), "
            "general.quantization_version (UINT32 2). No general.file_type, no general.alignment (default 32). "
            "general.name comes from the adapter directory's name; general.base_model.* and general.tags from the "
            "adapter's README.md model card (PEFT's `base_model`, `tags`, `pipeline_tag`); "
            "for an adapter directory without README.md only the other 6 keys are written.",
            "- adapter.lora.alpha is PEFT's lora_alpha as is, also for use_rslora=true: the converter ignores rsLoRA, "
            "and llama.cpp scales by alpha / rank (rank = lora_b ne[0]), so the rsLoRA file applies alpha/r, not "
            "PEFT's alpha/sqrt(r).",
            "- blk.N.<tensor>.weight.lora_a has ne [in, r] and lora_b ne [r, out]: PEFT's lora_A [r, in] and lora_B "
            "[out, r] row-major bytes unchanged (not transposed). Order: the safetensors order of the PEFT tensors, "
            "lora_a then lora_b for each.",
            "- f16/bf16: every tensor in that type. q8_0: lora_a Q8_0; lora_b (ne[0] = r = 4, not a multiple of 32) "
            "falls back to F16.",
            "",
        ]
        (out / "README.md").write_text("\n".join(readme))


if __name__ == "__main__":
    main()
