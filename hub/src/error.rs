//! Typed errors of the hub crate. Each names the cache folder it looked in and, where the cure is a download,
//! the command that fetches what is missing.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Not a well-formed `ORG/NAME[@REVISION][/PATH]` (or `hf://datasets/…`).
    #[error("`{spec}`: {msg}")]
    Spec { spec: String, msg: String },
    /// The cache has no usable copy and downloading was not allowed or failed; `why` says which.
    #[error("{what} is not in the Hugging Face cache ({looked}): {why}; fetch it with `{fetch}`{hint}")]
    NotCached { what: String, looked: PathBuf, why: String, fetch: String, hint: String },
    /// The cache names a commit whose snapshot folder is gone.
    #[error(
        "{what}: {ref_file} names commit {commit}, but {snapshot} is missing (deleted?); fetch it again with `{fetch}`"
    )]
    MissingSnapshot { what: String, ref_file: PathBuf, commit: String, snapshot: PathBuf, fetch: String },
    /// The Hub answered, and the answer is no (not found, gated, private) or the transfer failed.
    #[error("{what}: downloading from {endpoint} into {cache}: {msg}")]
    Download { what: String, endpoint: String, cache: PathBuf, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = HubError> = std::result::Result<T, E>;
