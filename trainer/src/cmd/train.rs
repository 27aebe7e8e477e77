//! `lapidary train CONFIG.toml [--set section.key=value]... [--resume] [--overwrite]`.
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::common::BackendKind;
use crate::train::config::{BackendName, Recipe};
use crate::train::run::{run as run_training, Options};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The recipe (see configs/).
    pub config: PathBuf,
    /// Override a recipe key, e.g. `--set train.lr=1e-4` (repeatable; applied in order).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue from the newest complete checkpoint in OUT/checkpoints.
    #[arg(long)]
    pub resume: bool,
    /// Replace an earlier run (its adapter and checkpoints) in the output directory.
    #[arg(long)]
    pub overwrite: bool,
    /// Save a checkpoint and stop after this many optimizer steps; continue later with --resume.
    #[arg(long, value_name = "STEPS")]
    pub stop_after: Option<u64>,
    /// Validate the recipe and print it resolved; load and write nothing.
    #[arg(long)]
    pub check: bool,
    /// Backend (overrides `[train] backend`): flex, ndarray or cuda.
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
}

pub fn run(a: TrainArgs) -> Result<()> {
    let mut recipe = Recipe::load(&a.config, &a.set)?;
    if let Some(b) = a.backend {
        recipe.train.backend = match b {
            BackendKind::Ndarray => BackendName::Ndarray,
            BackendKind::Flex => BackendName::Flex,
            BackendKind::Cuda => BackendName::Cuda,
        };
    }
    if a.check {
        print!("{}", recipe.to_toml()?);
        return Ok(());
    }
    if a.stop_after == Some(0) {
        anyhow::bail!("--stop-after must be at least 1");
    }
    run_training(&recipe, &Options { resume: a.resume, overwrite: a.overwrite, stop_after: a.stop_after })
}
