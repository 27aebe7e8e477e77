//! Naming a Hub repository as users write it: `ORG/NAME[@REVISION][/PATH]` for models and
//! `hf://datasets/ORG/NAME[@REVISION][/PATH]` for datasets (huggingface_hub's `HfFileSystem` spelling), and the
//! `hf download …` command that fetches one.
use crate::error::{HubError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoType {
    Model,
    Dataset,
}

impl RepoType {
    /// The cache folder prefix and the Hub's URL segment (`models`, `datasets`).
    pub fn plural(self) -> &'static str {
        match self {
            RepoType::Model => "models",
            RepoType::Dataset => "datasets",
        }
    }
}

/// A repository at a revision (a branch, a tag or a 40-character commit hash; `main` when not given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    pub kind: RepoType,
    pub id: String,
    pub revision: String,
}

/// A path inside a repository (`""`: the repository itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubPath {
    pub repo: Repo,
    pub path: String,
}

pub const DEFAULT_REVISION: &str = "main";
const DATASETS_PREFIX: &str = "hf://datasets/";

impl Repo {
    pub fn new(kind: RepoType, id: &str, revision: Option<&str>) -> Self {
        Self { kind, id: id.to_string(), revision: revision.unwrap_or(DEFAULT_REVISION).to_string() }
    }

    /// `models--ORG--NAME`, huggingface_hub's `repo_folder_name`.
    pub fn folder_name(&self) -> String {
        format!("{}--{}", self.kind.plural(), self.id.replace('/', "--"))
    }

    /// How messages name it: `model ORG/NAME` or `dataset ORG/NAME`, with `@REVISION` unless it is `main`.
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            RepoType::Model => "model",
            RepoType::Dataset => "dataset",
        };
        if self.revision == DEFAULT_REVISION {
            format!("{kind} {}", self.id)
        } else {
            format!("{kind} {}@{}", self.id, self.revision)
        }
    }

    /// The `hf download` (huggingface_hub's CLI; `huggingface-cli download` in older releases) command that
    /// fetches this repository, or one file of it, into the cache.
    pub fn fetch_command(&self, file: Option<&str>) -> String {
        let mut cmd = format!("hf download {}", self.id);
        if let Some(f) = file {
            cmd += &format!(" {f}");
        }
        if self.kind == RepoType::Dataset {
            cmd += " --repo-type dataset";
        }
        if self.revision != DEFAULT_REVISION {
            cmd += &format!(" --revision {}", self.revision);
        }
        cmd
    }
}

pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// huggingface_hub's `validate_repo_id`, for `ORG/NAME` (both parts required here): each part 1 to 96 of
/// `[A-Za-z0-9_.-]`, not starting or ending with `-` or `.`; no `--` or `..`; no `.git` suffix. (Python's `\w`
/// also takes non-ASCII letters; such an id is taken for a local path here.)
pub fn valid_repo_id(id: &str) -> bool {
    let part_ok = |p: &str| {
        (1..=96).contains(&p.len())
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
    };
    let mut parts = id.split('/');
    let (Some(org), Some(name), None) = (parts.next(), parts.next(), parts.next()) else { return false };
    part_ok(org) && part_ok(name) && !id.contains("--") && !id.contains("..") && !id.ends_with(".git")
}

/// `ORG/NAME[@REVISION][/PATH]` split into its parts; `None` unless the repository part is a valid id. A
/// revision ends at the next `/` (write a `/` inside one as `%2F`), except pull-request refs `refs/pr/N`.
fn split(kind: RepoType, s: &str) -> Option<HubPath> {
    let mut it = s.splitn(3, '/');
    let org = it.next()?;
    let rest = it.next()?;
    let tail = it.next().unwrap_or("");
    let (name, mut revision, mut path) = match rest.split_once('@') {
        Some((name, rev)) => (name, Some(rev.to_string()), tail.to_string()),
        None => (rest, None, tail.to_string()),
    };
    if revision.as_deref() == Some("refs") {
        // `@refs/pr/N[/PATH]`
        let mut p = tail.splitn(3, '/');
        let (pr, n, after) = (p.next()?, p.next()?, p.next().unwrap_or(""));
        if pr != "pr" || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        revision = Some(format!("refs/pr/{n}"));
        path = after.to_string();
    }
    let id = format!("{org}/{name}");
    if !valid_repo_id(&id) {
        return None;
    }
    let revision = revision.map(|r| r.replace("%2F", "/").replace("%2f", "/"));
    if revision.as_deref() == Some("") {
        return None;
    }
    Some(HubPath { repo: Repo::new(kind, &id, revision.as_deref()), path: path.trim_end_matches('/').to_string() })
}

/// A model spec: `ORG/NAME[@REVISION]`, or `ORG/NAME[@REVISION]/FILE.gguf` for one GGUF file of the
/// repository (`hf://` in front is accepted too). `None` when `s` has another shape (a local path, then).
pub fn parse_model(s: &str) -> Option<HubPath> {
    let s = s.strip_prefix("hf://").unwrap_or(s);
    let hp = split(RepoType::Model, s)?;
    let gguf = hp.path.rsplit('.').next().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    (hp.path.is_empty() || gguf).then_some(hp)
}

/// `hf://datasets/ORG/NAME[@REVISION][/PATH]`: `Ok(None)` when `s` does not start with `hf://datasets/`, an
/// error when it does but is malformed.
pub fn parse_dataset(s: &str) -> Result<Option<HubPath>> {
    let Some(rest) = s.strip_prefix(DATASETS_PREFIX) else {
        if s.starts_with("hf://") {
            return Err(HubError::Spec {
                spec: s.to_string(),
                msg: "a dataset on the Hub is written hf://datasets/ORG/NAME[@REVISION][/PATH]".into(),
            });
        }
        return Ok(None);
    };
    split(RepoType::Dataset, rest).map(Some).ok_or_else(|| HubError::Spec {
        spec: s.to_string(),
        msg: "expected hf://datasets/ORG/NAME[@REVISION][/PATH] with a valid repository id \
              (letters, digits, `-`, `_`, `.`)"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(s: &str) -> Option<(String, String, String)> {
        parse_model(s).map(|h| (h.repo.id, h.repo.revision, h.path))
    }

    #[test]
    fn model_specs() {
        let t = |a: &str, b: &str, c: &str| Some((a.to_string(), b.to_string(), c.to_string()));
        assert_eq!(model("google/gemma-3-270m"), t("google/gemma-3-270m", "main", ""));
        assert_eq!(model("hf://google/gemma-3-270m@v1.0"), t("google/gemma-3-270m", "v1.0", ""));
        assert_eq!(model("org/name@refs/pr/3"), t("org/name", "refs/pr/3", ""));
        assert_eq!(model("org/name@feat%2Fx/a/b.GGUF"), t("org/name", "feat/x", "a/b.GGUF"));
        assert_eq!(model("org/name/q4.gguf"), t("org/name", "main", "q4.gguf"));
        // Local-looking paths and ids huggingface_hub refuses are not specs.
        for s in [
            ".cache/models/gemma-2-2b",
            ".cache/models/x.gguf",
            "runs/x/adapter",
            "model",
            "org/name/config.json",
            "a--b/c",
            "a/b..c",
            "-a/b",
            "a/b.git",
            "/abs/path",
            "org/name@",
        ] {
            assert_eq!(model(s), None, "{s}");
        }
    }

    #[test]
    fn dataset_specs() {
        let h = parse_dataset("hf://datasets/org/rows@v2/data/train.parquet").unwrap().unwrap();
        assert_eq!((h.repo.kind, h.repo.id.as_str(), h.repo.revision.as_str()), (RepoType::Dataset, "org/rows", "v2"));
        assert_eq!(h.path, "data/train.parquet");
        assert_eq!(parse_dataset("hf://datasets/org/rows/").unwrap().unwrap().path, "");
        assert!(parse_dataset("data/train.jsonl").unwrap().is_none());
        assert!(parse_dataset("hf://datasets/org").is_err());
        assert!(parse_dataset("hf://org/rows").is_err());
    }

    #[test]
    fn fetch_commands() {
        let r = Repo::new(RepoType::Dataset, "org/rows", Some("v2"));
        assert_eq!(
            r.fetch_command(Some("a.parquet")),
            "hf download org/rows a.parquet --repo-type dataset --revision v2"
        );
        assert_eq!(r.folder_name(), "datasets--org--rows");
    }
}
