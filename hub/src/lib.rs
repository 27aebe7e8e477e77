//! `lapidary-hub`: Hugging Face Hub ids to local paths, through the same cache huggingface_hub uses. Shared by
//! the model crate (`ORG/NAME[@REVISION]`, `ORG/NAME/FILE.gguf`) and the data crate
//! (`hf://datasets/ORG/NAME[@REVISION][/PATH]`), which do not depend on each other.
//!
//! ```text
//! repo (parse ids, fetch commands) ◄─ cache (find refs, snapshots, files) ◄─ download (hf-hub) ◄─ resolve
//!                                                                      (cache first, then download)
//! ```
//! Everything names its cache folder and the `hf download …` command in its errors ([`HubError`]).
pub mod cache;
pub mod download;
pub mod error;
pub mod repo;
pub mod resolve;

pub use cache::Cache;
pub use error::{HubError, Result};
pub use repo::{parse_dataset, parse_model, HubPath, Repo, RepoType};
pub use resolve::Hub;
