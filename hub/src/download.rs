//! Talking to the Hub: listing a repository's files and downloading one into the cache, through the `hf-hub`
//! crate (blocking ureq client, rustls). It writes the layout huggingface_hub writes (blob named by etag,
//! relative symlink under `snapshots/<commit>/`, `refs/<branch>`), with a progress bar on a terminal.
//!
//! The environment is read as huggingface_hub reads it: `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) = 1/ON/
//! YES/TRUE forbids any request; `HF_TOKEN` (or the token file `hf auth login` writes) authorises gated and
//! private repositories; `HF_ENDPOINT` replaces https://huggingface.co.
//!
//! Not tested against the real Hub (no network where this was written): the tests cover the offline and
//! unreachable-Hub answers only.
use std::path::PathBuf;

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};

use crate::cache::{hf_home, Cache};
use crate::error::{HubError, Result};
use crate::repo::{is_commit_hash, Repo, RepoType};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// huggingface_hub's `HF_HUB_OFFLINE`: the first of it and `TRANSFORMERS_OFFLINE` that is set, read as true
/// when it is 1, ON, YES or TRUE (any case).
pub fn offline() -> bool {
    env("HF_HUB_OFFLINE")
        .or_else(|| env("TRANSFORMERS_OFFLINE"))
        .is_some_and(|v| ["1", "ON", "YES", "TRUE"].contains(&v.to_ascii_uppercase().as_str()))
}

/// `HF_TOKEN` (or the older `HUGGING_FACE_HUB_TOKEN`), else the file at `$HF_TOKEN_PATH` or `$HF_HOME/token`.
fn token() -> Option<String> {
    let t = env("HF_TOKEN").or_else(|| env("HUGGING_FACE_HUB_TOKEN")).or_else(|| {
        let path = env("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| hf_home().join("token"));
        std::fs::read_to_string(path).ok()
    })?;
    let t = t.trim().to_string();
    (!t.is_empty()).then_some(t)
}

pub fn endpoint() -> String {
    env("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()).trim_end_matches('/').to_string()
}

/// How a failed request reads: `Unreachable` (no network, DNS, refused: the cache is all there is) or
/// `Refused` (the Hub answered no).
pub enum Failure {
    Unreachable(String),
    Refused(String),
}

pub struct Online {
    api: Api,
    cache: Cache,
    endpoint: String,
}

impl Online {
    pub fn new(cache: &Cache) -> Result<Self> {
        let endpoint = endpoint();
        let api = ApiBuilder::from_cache(hf_hub::Cache::new(cache.root().to_path_buf()))
            .with_endpoint(endpoint.clone())
            .with_token(token())
            .with_progress(true)
            .build()
            .map_err(|e| HubError::Download {
                what: "the Hub client".into(),
                endpoint: endpoint.clone(),
                cache: cache.root().to_path_buf(),
                msg: e.to_string(),
            })?;
        Ok(Self { api, cache: cache.clone(), endpoint })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn repo(&self, repo: &Repo) -> hf_hub::api::sync::ApiRepo {
        let kind = match repo.kind {
            RepoType::Model => hf_hub::RepoType::Model,
            RepoType::Dataset => hf_hub::RepoType::Dataset,
        };
        self.api.repo(hf_hub::Repo::with_revision(repo.id.clone(), kind, repo.revision.clone()))
    }

    /// The commit the revision names on the Hub and the repository's file names there.
    pub fn list(&self, repo: &Repo) -> std::result::Result<(String, Vec<String>), Failure> {
        let info = self.repo(repo).info().map_err(|e| failure(repo, e))?;
        Ok((info.sha, info.siblings.into_iter().map(|s| s.rfilename).collect()))
    }

    /// Downloads `path` of `repo` into the cache; its snapshot entry.
    pub fn download(&self, repo: &Repo, path: &str) -> std::result::Result<PathBuf, Failure> {
        let got = self.repo(repo).download(path).map_err(|e| failure(repo, e))?;
        // hf-hub records every revision under refs/, a commit hash too; huggingface_hub records only branches
        // and tags, so that stray ref goes.
        if is_commit_hash(&repo.revision) {
            let stray = self.cache.repo_dir(repo).join("refs").join(&repo.revision);
            if std::fs::read_to_string(&stray).is_ok_and(|c| c.trim() == repo.revision) {
                let _ = std::fs::remove_file(stray);
            }
        }
        Ok(got)
    }
}

fn failure(repo: &Repo, e: ApiError) -> Failure {
    if let ApiError::RequestError(err) = &e {
        match err.as_ref() {
            ureq::Error::Status(401 | 403, _) => {
                return Failure::Refused(format!(
                    "the Hub refused access ({e}): the repository is gated or private; accept its terms on its \
                     page and set HF_TOKEN to a token that may read it"
                ))
            }
            ureq::Error::Status(404, _) => {
                return Failure::Refused(format!(
                    "the Hub has no such repository, revision or file ({e}); a private or gated {} also answers \
                     404 without a token (set HF_TOKEN)",
                    repo.kind.plural().trim_end_matches('s')
                ))
            }
            ureq::Error::Status(..) => return Failure::Refused(e.to_string()),
            ureq::Error::Transport(_) => return Failure::Unreachable(e.to_string()),
        }
    }
    Failure::Refused(e.to_string())
}
