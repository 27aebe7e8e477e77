//! A model named by its Hugging Face Hub id to the local folder or file holding it: `ORG/NAME[@REVISION]` is
//! the snapshot folder of that repository in the Hugging Face cache, `ORG/NAME[@REVISION]/FILE.gguf` one GGUF
//! file of it ([`lapidary_hub`] finds them, or downloads them when missing and allowed). This file knows what a
//! transformers checkpoint needs of a repository; a path that exists is always taken as a path.
use std::path::{Path, PathBuf};

use lapidary_hub::cache::files_under;
use lapidary_hub::{parse_model, Hub, HubError, HubPath, Repo};

use crate::error::{ModelError, Result};

/// `path` itself when it exists or is not shaped like a Hub id; otherwise what the id names, from the
/// Hugging Face cache (`HF_HUB_CACHE`, `HF_HOME`, `~/.cache/huggingface/hub`), downloaded first when it is
/// not there and `HF_HUB_OFFLINE` is not set.
pub fn resolve_model(path: &Path) -> Result<PathBuf> {
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    match path.to_str().and_then(parse_model) {
        // A mistyped local path can look like an id too: the message says both.
        Some(spec) => resolve_in(&Hub::from_env(), &spec)
            .map_err(|e| ModelError::format(path, format!("no such file or folder here; as a Hub id: {e}"))),
        None => Ok(path.to_path_buf()),
    }
}

/// [`resolve_model`] for a parsed id, in a given cache.
pub fn resolve_in(hub: &Hub, spec: &HubPath) -> Result<PathBuf> {
    let repo = &spec.repo;
    if !spec.path.is_empty() {
        return Ok(hub.file(repo, &spec.path)?);
    }
    if let Some(snap) = hub.cached_snapshot(repo) {
        if !snap.join("config.json").exists() {
            let files = files_under(&snap);
            let ggufs = gguf_files(&files);
            if !ggufs.is_empty() {
                return Err(HubError::Spec { spec: repo.describe(), msg: gguf_only(repo, &ggufs) }.into());
            }
        }
    }
    Ok(hub.snapshot(repo, &missing, &|files| pick(repo, files))?)
}

fn gguf_files(files: &[String]) -> Vec<&str> {
    files.iter().filter(|f| f.to_ascii_lowercase().ends_with(".gguf")).map(String::as_str).collect()
}

fn gguf_only(repo: &Repo, ggufs: &[&str]) -> String {
    let at = if repo.revision == lapidary_hub::repo::DEFAULT_REVISION {
        String::new()
    } else {
        format!("@{}", repo.revision)
    };
    format!(
        "this repository holds GGUF files, not a transformers checkpoint (no config.json): name one, e.g. {}{at}/{} \
         (it has: {})",
        repo.id,
        ggufs[0],
        ggufs.join(", ")
    )
}

/// What a cached snapshot lacks for `ModelFiles::open`: config.json, tokenizer.json, and the weights
/// (model.safetensors, or every shard model.safetensors.index.json names).
fn missing(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> =
        ["config.json", "tokenizer.json"].iter().filter(|f| !dir.join(f).is_file()).map(|f| f.to_string()).collect();
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let shards = std::fs::read_to_string(&index)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| {
                v.get("weight_map")?
                    .as_object()
                    .map(|m| m.values().filter_map(|s| s.as_str()).map(str::to_string).collect::<Vec<_>>())
            });
        // An unreadable index counts as complete: the loader then says what is wrong with it.
        if let Some(mut s) = shards {
            s.sort();
            s.dedup();
            out.extend(s.into_iter().filter(|f| !dir.join(f).is_file()));
        }
    } else if !dir.join("model.safetensors").is_file() {
        out.push("model.safetensors".into());
    }
    out
}

/// The files of a repository a download fetches: the top-level JSON (config, tokenizer, shard index,
/// generation config), safetensors weights and a chat template; not other formats' weights (`.bin`, `.pth`,
/// `.gguf`) or sub-folders (`onnx/`, `original/`).
fn pick(repo: &Repo, files: &[String]) -> std::result::Result<Vec<String>, String> {
    if !files.iter().any(|f| f == "config.json") {
        let ggufs = gguf_files(files);
        if ggufs.is_empty() {
            return Err("no config.json in this repository: not a transformers checkpoint".into());
        }
        return Err(gguf_only(repo, &ggufs));
    }
    Ok(files
        .iter()
        .filter(|f| {
            !f.contains('/')
                && (f.ends_with(".json")
                    || f.ends_with(".safetensors")
                    || f.ends_with(".jinja")
                    || *f == "tokenizer.model")
        })
        .cloned()
        .collect())
}
