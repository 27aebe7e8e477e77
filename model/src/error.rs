//! Typed errors of the model crate. Every message names the file (and tensor, key or line) and what was
//! expected, so the CLI can print it as it is and exit non-zero.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not what it claims to be (truncated, bad magic, bad header...).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    Shape { path: PathBuf, name: String, expected: Vec<usize>, actual: Vec<usize> },
    #[error("{path}: tensor `{name}` has type {dtype}, which lapidary cannot read (supported: {supported})")]
    UnsupportedDtype { path: PathBuf, name: String, dtype: String, supported: String },
    #[error("{path}: key `{key}`: {msg}")]
    Config { path: PathBuf, key: String, msg: String },
    #[error("{path}: tokenizer: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    /// A Hub id that the cache cannot serve (it names the cache folder and the `hf download` command); boxed,
    /// as it is the largest variant and rare.
    #[error(transparent)]
    Hub(Box<lapidary_hub::HubError>),
    #[error("{0}")]
    Other(String),
}

impl From<lapidary_hub::HubError> for ModelError {
    fn from(e: lapidary_hub::HubError) -> Self {
        ModelError::Hub(Box::new(e))
    }
}

impl ModelError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), source }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        ModelError::Format { path: path.into(), msg: msg.into() }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
