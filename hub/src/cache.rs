//! The local Hugging Face cache, found and read as huggingface_hub finds and reads it:
//!
//! ```text
//! $HF_HUB_CACHE/models--ORG--NAME/
//!   refs/main                  the commit hash a branch or tag names
//!   snapshots/<commit>/FILE    a symlink into blobs/ (a plain file where symlinks are not possible)
//!   blobs/<etag>               the bytes
//! ```
//!
//! A revision is a ref under `refs/` (branch, tag, `refs/pr/N`) or a full commit hash; an abbreviated hash
//! finds nothing (as in `try_to_load_from_cache` and `snapshot_download(local_files_only=True)`).
use std::path::{Path, PathBuf};

use crate::repo::{is_commit_hash, Repo};

/// Why the cache has no answer: the folder or file looked at, and what was wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Miss {
    pub looked: PathBuf,
    pub why: String,
}

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// An environment variable that is set and not empty.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `~` and `~/…` as Python's `os.path.expanduser` reads them.
fn expand_user(p: &str) -> PathBuf {
    match (p.strip_prefix('~'), env("HOME")) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => PathBuf::from(format!("{home}{rest}")),
        _ => PathBuf::from(p),
    }
}

/// `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface` (huggingface_hub's `constants`).
pub fn hf_home() -> PathBuf {
    if let Some(h) = env("HF_HOME") {
        return expand_user(&h);
    }
    let base = env("XDG_CACHE_HOME").map(|x| expand_user(&x)).unwrap_or_else(|| expand_user("~/.cache"));
    base.join("huggingface")
}

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `$HF_HUB_CACHE`, else the older `$HUGGINGFACE_HUB_CACHE`, else `hf_home()/hub`.
    pub fn from_env() -> Self {
        let root = env("HF_HUB_CACHE")
            .or_else(|| env("HUGGINGFACE_HUB_CACHE"))
            .map(|p| expand_user(&p))
            .unwrap_or_else(|| hf_home().join("hub"));
        Self::new(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn repo_dir(&self, repo: &Repo) -> PathBuf {
        self.root.join(repo.folder_name())
    }

    /// The commit `repo.revision` names: `refs/<revision>`'s content, else the revision itself when it is a
    /// commit hash.
    pub fn commit(&self, repo: &Repo) -> Result<String, Miss> {
        let dir = self.repo_dir(repo);
        if !dir.is_dir() {
            return Err(Miss { looked: dir, why: "no such folder".into() });
        }
        let ref_file = dir.join("refs").join(&repo.revision);
        if ref_file.is_file() {
            let text = std::fs::read_to_string(&ref_file)
                .map_err(|e| Miss { looked: ref_file.clone(), why: format!("cannot read: {e}") })?;
            return Ok(text.trim().to_string());
        }
        if is_commit_hash(&repo.revision) {
            return Ok(repo.revision.clone());
        }
        let refs = files_under(&dir.join("refs"));
        Err(Miss {
            looked: dir,
            why: format!(
                "no ref `{}` under refs/ ({}), and it is not a 40-character commit hash",
                repo.revision,
                if refs.is_empty() { "there are none".to_string() } else { format!("there are: {}", refs.join(", ")) }
            ),
        })
    }

    /// The snapshot folder of `repo` at its revision, as `snapshot_download(local_files_only=True)` finds it.
    pub fn snapshot(&self, repo: &Repo) -> Result<PathBuf, Miss> {
        let commit = self.commit(repo)?;
        let dir = self.repo_dir(repo);
        let snap = dir.join("snapshots").join(&commit);
        if snap.is_dir() {
            return Ok(snap);
        }
        let why = if commit == repo.revision {
            format!("no snapshots/{commit}")
        } else {
            format!("refs/{} names commit {commit}, but snapshots/{commit} is missing (deleted?)", repo.revision)
        };
        Err(Miss { looked: dir, why })
    }

    /// One file of `repo` at its revision, as `try_to_load_from_cache` finds it (the snapshot's entry, a
    /// symlink into blobs/ that must lead to a file).
    pub fn file(&self, repo: &Repo, path: &str) -> Result<PathBuf, Miss> {
        let snap = self.snapshot(repo)?;
        let file = snap.join(path);
        if file.is_file() {
            Ok(file)
        } else if file.is_symlink() {
            Err(Miss { looked: file, why: "a symlink whose blob is missing".into() })
        } else {
            Err(Miss { looked: file, why: "not in this snapshot".into() })
        }
    }
}

/// Every file under `dir` (symlinks included, followed into folders), as paths relative to it with `/`
/// separators, sorted: a snapshot's files as `scan_cache_dir` lists them, or the refs (`main`, `refs/pr/1`).
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            let p = e.path();
            if p.is_dir() {
                stack.push((p, format!("{name}/")));
            } else {
                out.push(name);
            }
        }
    }
    out.sort();
    out
}
