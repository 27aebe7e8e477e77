//! Data-parallel training: several replicas of the model (devices of one process, `--devices N`, and
//! processes, `--nodes M`), each taking its share of every step, equal to one device with
//! `grad_accum × replicas` micro-batches.
//!
//! ```text
//!   the data stream (every replica reads all of it, deterministically)
//!     step s: micro-batches 0 1 2 3 … (grad_accum × world of them, exactly one device's window)
//!   replica r: micro-batches r, r + world, …  → window_grads(its share, the window's target count,
//!                                               each micro-batch's dropout seed as one device keys it)
//!   all-reduce (Sum) of [gradient…, Σ nll, stop]            collective.rs (in a process), star.rs (between)
//!   every replica: clip → AdamW, the same update; then the parameters' checksum is compared (replica.rs)
//! ```
//!
//! Replica 0 of node 0 (global rank 0) alone writes: metrics, TensorBoard, the plot, checkpoints, the adapter.
//! The ranks: `node_rank × devices + device`.
//!
//! - [`collective`]: the all-reduce engine behind one trait (burn-collective inside a process).
//! - [`star`]: the all-reduce between processes over TCP, with heartbeats.
//! - [`replica`]: a replica's step and the check that replicas hold the same parameters.
pub mod collective;
pub mod replica;
pub mod star;

use std::sync::mpsc::Receiver;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use burn::tensor::backend::{Backend, Device, DeviceId};

/// The replicas of a run, and which of them this process holds.
#[derive(Debug, Clone, PartialEq)]
pub struct World {
    /// Device indices of this process's replicas (`train.devices`, `--devices`); CPU backends have one
    /// device, and take the count.
    pub devices: Vec<usize>,
    pub nodes: usize,
    pub node_rank: usize,
    /// `HOST:PORT` node 0 listens on (`--coordinator`); with `nodes > 1` only.
    pub coordinator: Option<String>,
    pub connect_timeout: Duration,
}

impl World {
    /// One device, one process: the trainer as it runs without data parallelism.
    pub fn single() -> Self {
        Self { devices: vec![0], nodes: 1, node_rank: 0, coordinator: None, connect_timeout: Duration::ZERO }
    }

    /// Replicas in all: devices × nodes.
    pub fn size(&self) -> usize {
        self.devices.len() * self.nodes
    }

    /// The global rank of this process's replica `local`.
    pub fn rank(&self, local: usize) -> usize {
        self.node_rank * self.devices.len() + local
    }
}

/// Device `index` of backend `B`: GPU `index` on CUDA; CPU backends have one device, index 0.
pub fn device_at<B: Backend>(index: usize) -> Result<B::Device> {
    let default = B::Device::default();
    if index == 0 {
        return Ok(default);
    }
    let id = default.to_id();
    let count = B::device_count(id.type_id);
    if index >= count {
        bail!("train.devices: there is no device {index} (this backend sees {count}: 0..{})", count.max(1) - 1);
    }
    Ok(B::Device::from_id(DeviceId { type_id: id.type_id, index_id: index as u16 }))
}

/// Runs `body(local)` for each of `n` replicas on a thread of its own (named `replica-{local}`), inside a
/// rayon pool of `threads` threads (every CPU kernel here sizes its work by the pool it runs in). Each sends
/// `(local, result)` when done; a panic arrives as an error, so that whoever waits is not left waiting for a
/// replica that will never answer.
pub fn spawn_replicas<T: Send + 'static>(
    n: usize,
    threads: usize,
    body: impl Fn(usize) -> Result<T> + Send + Clone + 'static,
) -> Result<Receiver<(usize, Result<T>)>> {
    let (tx, rx) = std::sync::mpsc::channel();
    for local in 0..n {
        let (body, tx) = (body.clone(), tx.clone());
        let run = move || -> Result<T> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(move |i| format!("replica-{local}-{i}"))
                .build()?;
            pool.install(move || body(local))
        };
        std::thread::Builder::new().name(format!("replica-{local}")).spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|p| {
                let msg =
                    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                Err(anyhow!("panicked: {}", msg.unwrap_or_default()))
            });
            let _ = tx.send((local, r));
        })?;
    }
    Ok(rx)
}
