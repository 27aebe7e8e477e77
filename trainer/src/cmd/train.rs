//! `lapidary train CONFIG.toml [--set section.key=value]... [--resume] [--overwrite] [--devices N]
//! [--nodes M --node-rank R --coordinator HOST:PORT]`.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

use crate::common::BackendKind;
use crate::train::config::{BackendName, Devices, Recipe};
use crate::train::run::{run as run_training, Nodes, Options};

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
    /// Data parallelism: replicas of the model in this process (overrides `[train] devices`); each step takes
    /// train.grad_accum × replicas micro-batches.
    #[arg(long, value_name = "N")]
    pub devices: Option<usize>,
    /// Processes (machines) in the run, each started with its own --node-rank.
    #[arg(long, value_name = "M")]
    pub nodes: Option<usize>,
    /// This process's place among the --nodes: 0 (it writes the output and listens on --coordinator) .. M-1.
    #[arg(long, value_name = "R", requires = "nodes")]
    pub node_rank: Option<usize>,
    /// HOST:PORT where node 0 listens and the other nodes connect (--nodes > 1).
    #[arg(long, value_name = "HOST:PORT", requires = "nodes")]
    pub coordinator: Option<String>,
    /// Seconds node 0 waits for the other nodes to join, and they try to reach it.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub connect_timeout: u64,
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
    if let Some(n) = a.devices {
        if n == 0 {
            bail!("--devices must be at least 1");
        }
        recipe.train.devices = Devices::Count(n);
    }
    let nodes = nodes(&a)?;
    if a.check {
        print!("{}", recipe.to_toml()?);
        return Ok(());
    }
    if a.stop_after == Some(0) {
        anyhow::bail!("--stop-after must be at least 1");
    }
    run_training(&recipe, &Options { resume: a.resume, overwrite: a.overwrite, stop_after: a.stop_after, nodes })
}

/// `--nodes`, `--node-rank`, `--coordinator`, checked; `None` for one process.
fn nodes(a: &TrainArgs) -> Result<Option<Nodes>> {
    let Some(count) = a.nodes else { return Ok(None) };
    if count == 0 {
        bail!("--nodes must be at least 1");
    }
    let rank = match a.node_rank {
        Some(r) if r >= count => bail!("--node-rank {r} is not below --nodes {count} (ranks are 0..{})", count - 1),
        Some(r) => r,
        None if count == 1 => 0,
        None => bail!("--nodes {count}: pass --node-rank (0 on the node that writes the output, 1.. on the others)"),
    };
    if count == 1 {
        return Ok(None);
    }
    let Some(coordinator) = a.coordinator.clone() else {
        bail!("--nodes {count}: pass --coordinator HOST:PORT (where node 0 listens; the same on every node)");
    };
    if a.connect_timeout == 0 {
        bail!("--connect-timeout must be at least 1 second");
    }
    Ok(Some(Nodes { count, rank, coordinator, connect_timeout: Duration::from_secs(a.connect_timeout) }))
}
