#!/usr/bin/env python3
"""Build a Hugging Face cache (tests/fixtures/hub/cache/) with huggingface_hub's own cache-writing code, and
record what huggingface_hub answers about it (tests/fixtures/hub/answers.json).

Run from anywhere with a Python that has huggingface_hub, torch and safetensors (scripts/requirements.txt):

    python scripts/make_hub_fixtures.py

The Hub is not reachable where the fixtures are made, so nothing is downloaded: each file is placed as
`hf_hub_download` places a downloaded one, with the same helpers it calls after the transfer
(`file_download._hf_hub_download_to_cache_dir`): the blob is named by its etag (git's blob sha1 for a small
file, the sha256 of the content for an LFS file, as the Hub sends them), the snapshot entry is a relative
symlink made by `_create_symlink`, and a branch or tag is recorded by `_cache_commit_hash_for_specific_revision`.
Commit hashes are made up (sha1 of a label); the Hub's are git commit ids of the same form.

Repositories (all under the made-up owner `lapidary-test`):
- models--lapidary-test--tiny-gemma: `main` = tests/fixtures/tiny/gemma3 with its weights sharded by
  huggingface_hub's `save_torch_state_dict` (two shards + model.safetensors.index.json); tag `v1.0` = an older
  commit holding tests/fixtures/tiny/gemma2 (one model.safetensors). The tokenizer files are the same bytes in
  both commits, so both snapshots link to one blob each.
- models--lapidary-test--tiny-gguf: `main` holds two GGUF files (tests/fixtures/gguf/tiny_gemma3.gguf.bin as
  tiny-gemma3.gguf, tiny.gguf.bin as other.gguf) and a README.md; no config.json.
- models--lapidary-test--broken: `refs/main` names a commit whose snapshot folder was deleted afterwards (what a
  user removing a snapshot by hand leaves).
- datasets--lapidary-test--tiny-rows: `main` holds data/train-0000{0,1}-of-00002.parquet
  (tests/fixtures/data/rows_shards), sft/train.jsonl and sft/eval.jsonl (tests/fixtures/train) and a README.md.

answers.json holds, for each query, what `try_to_load_from_cache` and `snapshot_download(local_files_only=True)`
return (paths relative to the cache root; null for "not cached"; the exception's class name on error), and
`scan_cache_dir`'s view of every repository (refs and the files of each revision).
"""

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import huggingface_hub  # noqa: E402
import safetensors.torch  # noqa: E402
from huggingface_hub import file_download as fd  # noqa: E402
from huggingface_hub import scan_cache_dir, snapshot_download, try_to_load_from_cache  # noqa: E402
from huggingface_hub.serialization import save_torch_state_dict  # noqa: E402
from huggingface_hub.utils.sha import git_hash, sha_fileobj  # noqa: E402
from huggingface_hub.utils import HFValidationError, validate_repo_id  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
OUT = FIX / "hub"
CACHE = OUT / "cache"
OWNER = "lapidary-test"
# Files the Hub stores in LFS (their etag is the content's sha256); everything else is a plain git blob.
LFS_SUFFIXES = (".safetensors", ".gguf", ".parquet")


def commit_hash(label: str) -> str:
    return hashlib.sha1(label.encode()).hexdigest()


def etag_of(name: str, path: Path) -> str:
    if name.endswith(LFS_SUFFIXES):
        with open(path, "rb") as f:
            return sha_fileobj(f).hex()
    return git_hash(path.read_bytes())


def add_file(repo_type: str, repo_id: str, commit: str, filename: str, src: Path) -> None:
    """What `_hf_hub_download_to_cache_dir` does once a file is downloaded: blob, then snapshot symlink."""
    storage = os.path.join(CACHE, fd.repo_folder_name(repo_id=repo_id, repo_type=repo_type))
    blob = os.path.join(storage, "blobs", etag_of(filename, src))
    pointer = fd._get_pointer_path(storage, commit, os.path.join(*filename.split("/")))
    os.makedirs(os.path.dirname(blob), exist_ok=True)
    os.makedirs(os.path.dirname(pointer), exist_ok=True)
    new_blob = not os.path.exists(blob)
    if new_blob:
        shutil.copyfile(src, blob)
    fd._create_symlink(blob, pointer, new_blob=False)


def add_ref(repo_type: str, repo_id: str, revision: str, commit: str) -> None:
    storage = os.path.join(CACHE, fd.repo_folder_name(repo_id=repo_id, repo_type=repo_type))
    fd._cache_commit_hash_for_specific_revision(storage, revision, commit)


def sharded_gemma3(tmp: Path) -> Path:
    """tests/fixtures/tiny/gemma3 with its weights split in two by huggingface_hub's own sharding."""
    out = tmp / "gemma3_sharded"
    out.mkdir()
    state = safetensors.torch.load_file(FIX / "tiny/gemma3/model.safetensors")
    total = sum(t.numel() * t.element_size() for t in state.values())
    save_torch_state_dict(state, out, max_shard_size=total * 6 // 10)
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) == 2 and (out / "model.safetensors.index.json").exists(), shards
    return out


def build(tmp: Path) -> dict:
    if CACHE.exists():
        shutil.rmtree(CACHE)
    CACHE.mkdir(parents=True)
    model_files = ["config.json", "generation_config.json", "special_tokens_map.json", "tokenizer.json",
                   "tokenizer_config.json"]

    gemma = f"{OWNER}/tiny-gemma"
    old = commit_hash(f"{gemma} v1.0")
    for name in model_files + ["model.safetensors"]:
        add_file("model", gemma, old, name, FIX / "tiny/gemma2" / name)
    add_ref("model", gemma, "v1.0", old)
    new = commit_hash(f"{gemma} main")
    sharded = sharded_gemma3(tmp)
    for name in model_files:
        add_file("model", gemma, new, name, FIX / "tiny/gemma3" / name)
    for p in sorted(sharded.iterdir()):
        add_file("model", gemma, new, p.name, p)
    add_ref("model", gemma, "main", new)

    gguf = f"{OWNER}/tiny-gguf"
    c = commit_hash(f"{gguf} main")
    add_file("model", gguf, c, "tiny-gemma3.gguf", FIX / "gguf/tiny_gemma3.gguf.bin")
    add_file("model", gguf, c, "other.gguf", FIX / "gguf/tiny.gguf.bin")
    readme = tmp / "README.md"
    readme.write_text("# tiny GGUF files for lapidary's tests\n")
    add_file("model", gguf, c, "README.md", readme)
    add_ref("model", gguf, "main", c)

    broken = f"{OWNER}/broken"
    c = commit_hash(f"{broken} main")
    add_file("model", broken, c, "config.json", FIX / "tiny/gemma3/config.json")
    add_ref("model", broken, "main", c)
    # The snapshot folder goes, and the then empty snapshots/ with it (git keeps no empty folder; the answers
    # are the same with or without it).
    shutil.rmtree(CACHE / fd.repo_folder_name(repo_id=broken, repo_type="model") / "snapshots")

    rows = f"{OWNER}/tiny-rows"
    c = commit_hash(f"{rows} main")
    add_file("dataset", rows, c, "data/train-00000-of-00002.parquet", FIX / "data/rows_shards/part-00000.parquet")
    add_file("dataset", rows, c, "data/train-00001-of-00002.parquet", FIX / "data/rows_shards/part-00001.parquet")
    add_file("dataset", rows, c, "sft/train.jsonl", FIX / "train/train.jsonl")
    add_file("dataset", rows, c, "sft/eval.jsonl", FIX / "train/eval.jsonl")
    readme.write_text("# tiny rows for lapidary's tests\n")
    add_file("dataset", rows, c, "README.md", readme)
    add_ref("dataset", rows, "main", c)
    return {"tiny-gemma": {"main": new, "v1.0": old}}


def rel(path) -> str | None:
    if path is None:
        return None
    if not isinstance(path, str):
        return repr(path)  # _CACHED_NO_EXIST
    return os.path.relpath(path, CACHE)


def answers(commits: dict) -> dict:
    gemma = f"{OWNER}/tiny-gemma"
    main, v1 = commits["tiny-gemma"]["main"], commits["tiny-gemma"]["v1.0"]
    revisions = [None, "main", "v1.0", main, v1, v1[:7], "no-such-branch"]
    repos = [("model", gemma), ("model", f"{OWNER}/tiny-gguf"), ("model", f"{OWNER}/broken"),
             ("model", f"{OWNER}/absent"), ("dataset", f"{OWNER}/tiny-rows"), ("dataset", gemma)]
    snapshots = []
    for repo_type, repo_id in repos:
        for revision in revisions if repo_id == gemma else [None, "no-such-branch"]:
            try:
                got = {"path": rel(snapshot_download(repo_id, repo_type=repo_type, revision=revision,
                                                     cache_dir=CACHE, local_files_only=True))}
            except Exception as e:  # noqa: BLE001 - the class is the answer
                got = {"error": type(e).__name__}
            snapshots.append({"repo_type": repo_type, "repo_id": repo_id, "revision": revision, **got})
    files = []
    queries = [("model", gemma, r, f) for r in revisions
               for f in ["config.json", "model.safetensors", "model.safetensors.index.json",
                         "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "absent.json"]]
    queries += [("model", f"{OWNER}/tiny-gguf", None, f) for f in ["tiny-gemma3.gguf", "other.gguf", "config.json"]]
    queries += [("model", f"{OWNER}/broken", None, "config.json"), ("model", f"{OWNER}/absent", None, "config.json")]
    queries += [("dataset", f"{OWNER}/tiny-rows", None, f)
                for f in ["data/train-00000-of-00002.parquet", "sft/train.jsonl", "sft", "README.md"]]
    queries += [("model", f"{OWNER}/tiny-rows", None, "README.md")]
    for repo_type, repo_id, revision, filename in queries:
        got = try_to_load_from_cache(repo_id, filename, cache_dir=CACHE, revision=revision, repo_type=repo_type)
        files.append({"repo_type": repo_type, "repo_id": repo_id, "revision": revision, "filename": filename,
                      "path": rel(got)})
    scanned = []
    scan = scan_cache_dir(CACHE)
    for repo in sorted(scan.repos, key=lambda r: (r.repo_type, r.repo_id)):
        scanned.append({
            "repo_type": repo.repo_type,
            "repo_id": repo.repo_id,
            "refs": {ref: rev.commit_hash for rev in repo.revisions for ref in sorted(rev.refs)},
            "revisions": {rev.commit_hash: sorted(os.path.relpath(f.file_path, rev.snapshot_path) for f in rev.files) for rev in repo.revisions},
        })
    ids = {}
    for repo_id in ["google/gemma-3-270m", "a/b", "_x/y_", "Org.Name/model-v1.0", "a--b/c", "a/b..c", "-a/b",
                    "a/b-", ".a/b", "a/.b", "a/b.git", "a/b.gitx", "a/b c", "a/b/c", "a/" + "n" * 96,
                    "a/" + "n" * 97, "o" * 96 + "/n", "a/b@main", "a/b:c", "a/"]:
        try:
            validate_repo_id(repo_id)
            ids[repo_id] = True
        except HFValidationError:
            ids[repo_id] = False
    return {
        "huggingface_hub": huggingface_hub.__version__,
        # validate_repo_id on namespaced ids (a bare NAME is valid there too; lapidary takes it for a path).
        "validate_repo_id": ids,
        "snapshot_download": snapshots,
        "try_to_load_from_cache": files,
        "scan_cache_dir": scanned,
        # The repositories scan_cache_dir refuses (the broken one), messages with the cache root taken out.
        "scan_cache_dir_warnings": [{"error": type(w).__name__, "message": str(w).replace(f"{CACHE}{os.sep}", "")}
                                    for w in scan.warnings],
    }


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        commits = build(Path(tmp))
    out = answers(commits)
    (OUT / "answers.json").write_text(json.dumps(out, indent=1) + "\n")
    size = sum(p.stat().st_size for p in CACHE.rglob("*") if p.is_file() and not p.is_symlink())
    print(f"wrote {CACHE.relative_to(ROOT)} ({size} bytes of blobs) and {(OUT / 'answers.json').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
