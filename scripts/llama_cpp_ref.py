"""llama.cpp as a reference, from Python fixture scripts: its logits and its tokenization of a GGUF file, through
llama-cpp-python's ctypes binding (the package sources next to vendor/ in the tree `scripts/llama_cpp.sh`
unpacks, plus `diskcache`) on the built libllama, run in a subprocess so a crash in llama.cpp is a reported
failure, not a dead fixture script.

    from llama_cpp_ref import DEFAULT_LLAMA, llama_logits, llama_tokenize
"""
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_LLAMA = REPO / ".cache" / "llama.cpp" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"


def llama_cpp_commit(llama):
    """The llama.cpp commit the tree under `llama` was built from (its build/common/build-info.cpp), or None."""
    info = Path(llama) / "build" / "common" / "build-info.cpp"
    commit = re.search(r'LLAMA_COMMIT = "([^"]*)"', info.read_text()) if info.exists() else None
    return commit.group(1) if commit else None


def _paths(llama):
    lib = Path(llama) / "build" / "bin"
    py = Path(llama).parent.parent  # llama_cpp_python-0.3.36/ holds the llama_cpp package
    if not (lib / "libllama.so").exists() or not (py / "llama_cpp").is_dir():
        return None, None
    return lib, py


def _load(lib, py):
    os.environ["LLAMA_CPP_LIB_PATH"] = str(lib)
    sys.path.insert(0, str(py))
    import llama_cpp
    return llama_cpp


def _child_logits(gguf_path, ids_path, out_path, lib, py):
    """Each row in a fresh context, logits for every position (logits_all); the KV cache in f32 (type 0), not
    llama.cpp's default f16, so an f32 file is computed in f32 throughout."""
    import numpy as np
    llama_cpp = _load(lib, py)
    rows = []
    for r in np.load(ids_path):
        m = llama_cpp.Llama(model_path=gguf_path, n_ctx=64, n_batch=64, n_ubatch=64, logits_all=True,
                            verbose=False, n_threads=2, type_k=0, type_v=0)
        m.eval([int(x) for x in r])
        rows.append(np.array(m.scores[:len(r)], dtype=np.float32))
        del m
    np.save(out_path, np.stack(rows))


def _child_tokenize(gguf_path, texts_path, out_path, lib, py):
    """llama.cpp's tokenizer as llama-cli uses it on a prompt: BOS added as the file says, special tokens
    parsed."""
    llama_cpp = _load(lib, py)
    m = llama_cpp.Llama(model_path=gguf_path, n_ctx=64, vocab_only=True, verbose=False)
    texts = json.loads(Path(texts_path).read_text())
    out = [m.tokenize(t.encode("utf-8"), add_bos=True, special=True) for t in texts]
    Path(out_path).write_text(json.dumps(out))


def _run(kind, gguf_path, payload_path, out_path, llama):
    lib, py = _paths(llama)
    if lib is None:
        return f"not run: no built libllama or llama_cpp package under {llama} (scripts/llama_cpp.sh)"
    r = subprocess.run([sys.executable, __file__, kind, str(gguf_path), str(payload_path), str(out_path), str(lib),
                        str(py)], capture_output=True, text=True)
    if r.returncode != 0:
        err = [l for l in (r.stdout + r.stderr).splitlines() if "GGML_ASSERT" in l or "error" in l.lower()]
        msg = err[0] if err else f"exit status {r.returncode}"
        return "llama.cpp failed: " + re.sub(r"^.*?/vendor/llama\.cpp/", "", msg)
    return None


def llama_logits(llama, gguf_path, input_ids):
    """(logits [rows, positions, vocab] or None, a note)."""
    import numpy as np
    with tempfile.TemporaryDirectory() as td:
        ids_path, out_path = Path(td) / "ids.npy", Path(td) / "logits.npy"
        np.save(ids_path, input_ids)
        err = _run("logits", gguf_path, ids_path, out_path, llama)
        if err:
            return None, err
        return np.load(out_path), "ran (llama-cpp-python's binding, CPU, 2 threads, one context per row)"


def llama_tokenize(llama, gguf_path, texts):
    """(list of id lists or None, a note)."""
    with tempfile.TemporaryDirectory() as td:
        texts_path, out_path = Path(td) / "texts.json", Path(td) / "ids.json"
        texts_path.write_text(json.dumps(texts))
        err = _run("tokenize", gguf_path, texts_path, out_path, llama)
        if err:
            return None, err
        return json.loads(out_path.read_text()), "ran (llama_tokenize: add_bos, special tokens parsed)"


if __name__ == "__main__":
    kind, *args = sys.argv[1:]
    {"logits": _child_logits, "tokenize": _child_tokenize}[kind](*args)
