//! One replica's optimizer step, and the check that every replica holds the same parameters.
//!
//! A step's window is the `grad_accum × world` micro-batches one device would take; replica `r` takes
//! micro-batches `r, r + world, …` (for `grad_accum = 1`, micro-batch `r`), backpropagates them normalised by
//! the whole window's target count (each replica counts it from the window, so no reduction is needed for
//! it), and the gradients are summed over the replicas. Every replica then applies the same update. With two
//! replicas and `grad_accum = 1` the sum is `g₀ + g₁`, bit for bit one device's; otherwise the additions
//! are grouped differently, equal to f32 rounding.
use anyhow::{bail, Result};
use burn::backend::Autodiff;
use burn::tensor::Tensor;
use lapidary_data::Batch;
use lapidary_model::{Gemma, GemmaBackend};

use super::collective::Collective;
use crate::train::optim::AdamW;
use crate::train::params::{download, Params};
use crate::train::step::{apply_update, window_grads, window_targets, StepError, StepStats};

/// A replica of a data-parallel run: its rank and its way to the others.
pub struct Replica<B: GemmaBackend> {
    pub rank: usize,
    pub world: usize,
    pub group: Box<dyn Collective<B>>,
    /// The replica's device.
    pub device: B::Device,
}

/// What a step returns besides its statistics: whether any replica asked to stop (Ctrl-C).
pub struct Stepped {
    pub stats: Result<StepStats, StepError>,
    pub stop: bool,
}

impl<B: GemmaBackend> Replica<B> {
    /// The micro-batches of a window of `n` this replica takes.
    pub fn share(&self, n: usize) -> Vec<usize> {
        (self.rank..n).step_by(self.world).collect()
    }

    /// One optimizer step over `window` (the whole step's micro-batches), this replica taking its share.
    /// `dropout_seed(i)` keys micro-batch `i` of the window, as on one device. `stop`: this replica's Ctrl-C.
    #[allow(clippy::too_many_arguments)] // the step's settings, as train_step's
    pub fn step(
        &mut self,
        model: &mut Gemma<Autodiff<B>>,
        params: &mut Params<B>,
        opt: &mut AdamW<B>,
        window: &[Batch],
        lr: f64,
        max_grad_norm: f64,
        gc: bool,
        dropout_seed: impl Fn(usize) -> u64,
        stop: bool,
    ) -> Result<Stepped> {
        let mine = self.share(window.len());
        let share: Vec<Batch> = mine.iter().map(|&i| window[i].clone()).collect();
        let n_window = window_targets(window);
        let (grads, nll) = window_grads(model, params, &share, n_window, gc, |i| dropout_seed(mine[i]));
        let n = grads.dims()[0];
        // Σ nll and the stop flag ride with the gradient: one all-reduce a step.
        let tail = Tensor::<B, 1>::from_floats([nll as f32, f32::from(u8::from(stop))], &grads.device());
        let all = self.group.all_reduce_sum(Tensor::cat(vec![grads, tail], 0))?;
        let tail = download(&all.clone().slice(n..n + 2));
        let loss = f64::from(tail[0]) / n_window.max(1) as f64;
        let tokens = window.iter().map(|b| b.n_tokens).sum();
        let stats = apply_update(model, params, opt, all.slice(0..n), loss, tokens, lr, max_grad_norm);
        self.check_same(&[checksum(params)], "parameters after the update")?;
        Ok(Stepped { stats, stop: tail[1] > 0.0 })
    }

    /// Fails unless every replica passes the same `values` (e.g. a checksum of its parameters). Each
    /// replica sends each byte `x` of its values and `x²`: the sums equal `world·x` and `world·x²` for every
    /// replica's `x` only if all are equal (their variance is zero), and stay exact in f32 (< 2²⁴).
    pub fn check_same(&mut self, values: &[u32], what: &str) -> Result<()> {
        let bytes: Vec<f32> = values.iter().flat_map(|v| v.to_le_bytes()).map(f32::from).collect();
        let sent: Vec<f32> = bytes.iter().copied().chain(bytes.iter().map(|x| x * x)).collect();
        let n = sent.len();
        let t = Tensor::<B, 1>::from_data(burn::tensor::TensorData::new(sent.clone(), [n]), &self.device);
        let sums = download(&self.group.all_reduce_sum(t)?);
        let w = self.world as f32;
        if sums.len() != n || sums.iter().zip(&sent).any(|(s, x)| *s != w * x) {
            bail!(
                "the replicas diverged: rank {}'s {what} differ from another replica's (a different build, \
                 recipe, data or checkpoint on some node?)",
                self.rank
            );
        }
        Ok(())
    }
}

/// CRC-32C of the parameters' bytes.
pub fn checksum<B: GemmaBackend>(params: &Params<B>) -> u32 {
    let host = download(&params.flat);
    crc32c::crc32c(bytemuck::cast_slice(&host))
}
