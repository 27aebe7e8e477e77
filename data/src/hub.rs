//! `hf://datasets/ORG/NAME[@REVISION][/PATH]` to a local file or folder through the Hugging Face cache
//! ([`lapidary_hub`], shared with the model crate): PATH is one data file of the repository, or a folder of
//! them (the repository's top when PATH is empty), read from `datasets--ORG--NAME` in the cache and
//! downloaded into it when missing (not with `HF_HUB_OFFLINE=1`).
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use lapidary_hub::cache::files_under;
use lapidary_hub::{parse_dataset, Hub, HubError, Repo};

use crate::error::{DataError, Result};

/// The local file or folder an `hf://datasets/…` path names; `None` for any other path. `is_data` tells the
/// files the readers take (by extension).
pub fn resolve_hf(path: &Path, is_data: fn(&Path) -> bool) -> Result<Option<PathBuf>> {
    let Some(s) = path.to_str() else { return Ok(None) };
    let err = |e: HubError| DataError::dataset(path, e.to_string());
    let Some(spec) = parse_dataset(s).map_err(err)? else { return Ok(None) };
    let (hub, repo, sub) = (Hub::from_env(), &spec.repo, spec.path.as_str());
    if !sub.is_empty() && is_data(Path::new(sub)) {
        return hub.file(repo, sub).map(Some).map_err(err);
    }
    let prefix = if sub.is_empty() { String::new() } else { format!("{sub}/") };
    let missing = |snap: &Path| if snap.join(sub).is_dir() { vec![] } else { vec![format!("{sub}/")] };
    let pick = |files: &[String]| {
        let picked: Vec<String> = files
            .iter()
            .filter(|f| f.strip_prefix(&prefix).is_some_and(|rest| !rest.contains('/') && is_data(Path::new(rest))))
            .cloned()
            .collect();
        if picked.is_empty() {
            Err(no_data_here(repo, &prefix, files, is_data))
        } else {
            Ok(picked)
        }
    };
    let dir = hub.snapshot(repo, &missing, &pick).map_err(err)?.join(sub);
    let files = files_under(&dir);
    if !files.iter().any(|f| !f.contains('/') && is_data(Path::new(f))) {
        return Err(DataError::dataset(path, no_data_here(repo, "", &files, is_data)));
    }
    Ok(Some(dir))
}

/// A folder holds no data files of its own: name the sub-folders that do (the top of a Hub dataset is
/// usually a README and folders such as `data/`).
fn no_data_here(repo: &Repo, prefix: &str, files: &[String], is_data: fn(&Path) -> bool) -> String {
    let folders: BTreeSet<&str> = files
        .iter()
        .filter_map(|f| f.strip_prefix(prefix))
        .filter(|rest| is_data(Path::new(rest)))
        .filter_map(|rest| rest.rsplit_once('/').map(|(dir, _)| dir))
        .collect();
    let at = if repo.revision == lapidary_hub::repo::DEFAULT_REVISION {
        String::new()
    } else {
        format!("@{}", repo.revision)
    };
    let mut msg = "no .parquet, .jsonl or .arrow files in this folder".to_string();
    if !folders.is_empty() {
        let names: Vec<String> = folders.iter().map(|d| format!("hf://datasets/{}{at}/{prefix}{d}", repo.id)).collect();
        msg += &format!("; name a folder that has some: {}", names.join(", "));
    }
    msg
}
