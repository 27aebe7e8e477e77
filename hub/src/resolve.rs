//! Cache first, then the Hub: what a caller asks for (one file, or a snapshot holding the files it needs)
//! comes from the cache when it is there, and is downloaded into the cache otherwise, unless offline. Every
//! failure names the cache folder looked at and the `hf download` command that would fill it.
//!
//! A cached snapshot is used as it is, without asking the Hub whether the branch has moved (the Hub may not be
//! reachable, and a run should not change model under a resumed training); `hf download ORG/NAME` updates it.
use std::path::{Path, PathBuf};

use crate::cache::{Cache, Miss};
use crate::download::{offline, Failure, Online};
use crate::error::{HubError, Result};
use crate::repo::Repo;

/// Given a repository's file names, the ones to download, or why this repository cannot serve.
pub type Pick<'a> = dyn Fn(&[String]) -> std::result::Result<Vec<String>, String> + 'a;

pub struct Hub {
    cache: Cache,
    offline: bool,
}

impl Hub {
    /// The cache and offline setting from the environment (see [`Cache::from_env`], [`offline`]).
    pub fn from_env() -> Self {
        Self { cache: Cache::from_env(), offline: offline() }
    }

    pub fn new(cache: Cache, offline: bool) -> Self {
        Self { cache, offline }
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    fn not_cached(&self, repo: &Repo, file: Option<&str>, miss: Miss, why_not_downloaded: String) -> HubError {
        let what = match file {
            Some(f) => format!("{} file {f}", repo.describe()),
            None => repo.describe(),
        };
        HubError::NotCached {
            what,
            looked: miss.looked,
            why: miss.why,
            fetch: repo.fetch_command(file),
            hint: why_not_downloaded,
        }
    }

    fn online(&self, repo: &Repo, file: Option<&str>, miss: &Miss) -> Result<Online> {
        if self.offline {
            return Err(self.not_cached(
                repo,
                file,
                miss.clone(),
                " (HF_HUB_OFFLINE is set, so nothing was downloaded)".into(),
            ));
        }
        Online::new(&self.cache)
    }

    fn failed(&self, repo: &Repo, file: Option<&str>, miss: Miss, online: &Online, f: Failure) -> HubError {
        match f {
            Failure::Unreachable(msg) => self.not_cached(
                repo,
                file,
                miss,
                format!(
                    " on a machine that reaches {} (it could not be reached from here: {msg}), or set \
                     HF_HUB_OFFLINE=1 to use only the cache",
                    online.endpoint()
                ),
            ),
            Failure::Refused(msg) => HubError::Download {
                what: repo.describe(),
                endpoint: online.endpoint().to_string(),
                cache: self.cache.root().to_path_buf(),
                msg,
            },
        }
    }

    /// One file of `repo`: the cached copy, else downloaded.
    pub fn file(&self, repo: &Repo, path: &str) -> Result<PathBuf> {
        let miss = match self.cache.file(repo, path) {
            Ok(p) => return Ok(p),
            Err(m) => m,
        };
        let online = self.online(repo, Some(path), &miss)?;
        online.download(repo, path).map_err(|f| self.failed(repo, Some(path), miss, &online, f))
    }

    /// The cached snapshot of `repo`, if there is one (nothing downloaded).
    pub fn cached_snapshot(&self, repo: &Repo) -> Option<PathBuf> {
        self.cache.snapshot(repo).ok()
    }

    /// A snapshot folder of `repo` holding what the caller needs. `missing(snapshot)` names the files a cached
    /// snapshot lacks (none: it is used as it is). Otherwise the repository's file list goes to `pick`, which
    /// returns the files to download (or why this repository cannot serve), and those not yet cached are fetched.
    pub fn snapshot(&self, repo: &Repo, missing: &dyn Fn(&Path) -> Vec<String>, pick: &Pick) -> Result<PathBuf> {
        let miss = match self.cache.snapshot(repo) {
            Ok(snap) => {
                let lacks = missing(&snap);
                if lacks.is_empty() {
                    return Ok(snap);
                }
                Miss { looked: snap, why: format!("this snapshot lacks {}", lacks.join(", ")) }
            }
            Err(m) => m,
        };
        let online = self.online(repo, None, &miss)?;
        let (commit, files) = online.list(repo).map_err(|f| self.failed(repo, None, miss.clone(), &online, f))?;
        let wanted = pick(&files).map_err(|msg| HubError::Spec { spec: repo.describe(), msg })?;
        let snap = self.cache.repo_dir(repo).join("snapshots").join(&commit);
        for f in wanted {
            if !snap.join(&f).is_file() {
                online.download(repo, &f).map_err(|e| self.failed(repo, Some(&f), miss.clone(), &online, e))?;
            }
        }
        Ok(snap)
    }
}
