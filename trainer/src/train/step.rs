//! One optimizer step over a gradient-accumulation window.
//!
//! The loss of the window is `Σ nll / N`, with `N` the number of targets in the *whole window*: each
//! micro-batch backpropagates `nll_sum / N`, so the accumulated gradient is that of one big batch, and
//! `grad_accum = 4, batch_size = 1` trains exactly as `batch_size = 4` (up to float rounding). Dividing each
//! micro-batch by its own count would weight short batches up.
use std::collections::HashMap;

use anyhow::{bail, Result};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use lapidary_data::Batch;
use lapidary_model::gemma::loss::shifted_targets;
use lapidary_model::nn::lora::LoraRuntime;
use lapidary_model::Gemma;
use lapidary_model::GemmaBackend;

use super::batch::token_batch;
use super::optim::{clip_grad_norm, AdamW};
use super::params::{adapters_mut, Params};

/// `Σ n_targets` of a window: the loss normaliser.
pub fn window_targets(window: &[Batch]) -> usize {
    window.iter().map(|b| b.n_targets).sum()
}

#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// Mean NLL per target over the window (before the update).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Non-padding tokens in the window.
    pub tokens: usize,
}

/// Why a step did not update.
#[derive(Debug)]
pub enum StepError {
    NonFinite { what: &'static str, value: f64 },
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::NonFinite { what, value } => write!(f, "the {what} is {value}"),
        }
    }
}

/// Gradients of `Σ nll / n_window` for every param, summed over `window`'s micro-batches, as one flat
/// tensor laid out as `params` (on the device: nothing is read back but each micro-batch's `Σ nll`); also
/// returns `Σ nll`. `n_window` is the whole step's target count: [`window_targets`] of `window` on one
/// device; with data parallelism `window` is one replica's share of the step and `n_window` counts every
/// replica's. `dropout_seed(i)` keys micro-batch `i`'s dropout masks (a replica maps its `i` to the
/// micro-batch's index in the whole step, so the masks are one device's). With `gc`, activations are
/// recomputed layer by layer in the backward instead of kept (`lapidary_model::gemma::recompute`); same gradients.
pub fn window_grads<B: GemmaBackend>(
    model: &mut Gemma<Autodiff<B>>,
    params: &Params<B>,
    window: &[Batch],
    n_window: usize,
    gc: bool,
    dropout_seed: impl Fn(usize) -> u64,
) -> (Tensor<B, 1>, f64) {
    let n_window = n_window.max(1) as f32;
    // Per matrix, summed over micro-batches; flattened into one tensor at the end.
    let mut grads: Vec<Option<Tensor<B, 2>>> = vec![None; params.slots.len()];
    let mut add = |k: usize, g: Tensor<B, 2>| {
        grads[k] = Some(match grads[k].take() {
            Some(acc) => acc + g,
            None => g,
        });
    };
    let mut nll_total = 0f64;
    params.write(model, true);
    // With gc, gradients arrive by module name; param order is (layer, projection, its trainables: A, B,
    // DoRA's magnitude), the order `adapters_mut` lists modules in. `first[j]`: adapter j's first slot.
    let first: Vec<usize> = adapters_mut(model)
        .iter()
        .scan(0, |k, (_, ad)| {
            let f = *k;
            *k += ad.trainables().len();
            Some(f)
        })
        .collect();
    let index: HashMap<String, usize> = if gc {
        adapters_mut(model).into_iter().enumerate().map(|(j, (m, _))| (m, first[j])).collect()
    } else {
        HashMap::new()
    };
    for (i, b) in window.iter().enumerate() {
        let targets = shifted_targets(&b.labels, b.batch, b.seq_len);
        if targets.is_empty() {
            continue;
        }
        let rt = LoraRuntime { dropout_seed: Some(dropout_seed(i)) };
        if gc {
            nll_total += model.nll_backward_checkpointed(&token_batch(b), &targets, &rt, 1.0 / n_window, |m, g| {
                for (k, gk) in g.into_iter().enumerate() {
                    add(index[m] + k, gk);
                }
            });
            continue;
        }
        let hidden = model.forward_hidden(&token_batch(b), None, &rt);
        let nll = model.nll_sum(hidden, &targets);
        nll_total += scalar(nll.clone().inner());
        let g = (nll / n_window).backward();
        for (j, (_, ad)) in adapters_mut(model).into_iter().enumerate() {
            for (k, (_, t)) in ad.trainables().into_iter().enumerate() {
                if let Some(gt) = t.grad(&g) {
                    add(first[j] + k, gt);
                }
            }
        }
    }
    let device = model.device.clone();
    let parts: Vec<Tensor<B, 1>> = grads
        .into_iter()
        .zip(&params.slots)
        .map(|(g, s)| match g {
            Some(g) => g.reshape([-1]),
            // A matrix the loss does not reach (no targets in the window): zero gradient.
            None => Tensor::zeros([s.len()], &device),
        })
        .collect();
    let flat = if parts.is_empty() { Tensor::zeros([0], &device) } else { Tensor::cat(parts, 0) };
    (flat, nll_total)
}

/// One optimizer step: window gradients → clip → AdamW at `lr`, all on the model's device. Nothing is
/// updated if the loss or the gradient norm is not finite. The model keeps plain (untracked) views of the
/// parameters between steps, so evaluation builds no graph.
#[allow(clippy::too_many_arguments)] // each is a per-step setting the caller owns; a struct would only rename them
pub fn train_step<B: GemmaBackend>(
    model: &mut Gemma<Autodiff<B>>,
    params: &mut Params<B>,
    opt: &mut AdamW<B>,
    window: &[Batch],
    lr: f64,
    max_grad_norm: f64,
    gc: bool,
    dropout_seed: impl Fn(usize) -> u64,
) -> Result<StepStats, StepError> {
    let targets = window_targets(window);
    let (grads, nll) = window_grads(model, params, window, targets, gc, dropout_seed);
    let tokens = window.iter().map(|b| b.n_tokens).sum();
    apply_update(model, params, opt, grads, nll / targets.max(1) as f64, tokens, lr, max_grad_norm)
}

/// The update from a window's gradient (`grads`, as [`window_grads`] lays it out) and mean loss: clip →
/// AdamW at `lr`; nothing is updated if the loss or the gradient norm is not finite. Then the model gets
/// plain (untracked) views of the parameters again.
#[allow(clippy::too_many_arguments)] // as train_step's
pub fn apply_update<B: GemmaBackend>(
    model: &mut Gemma<Autodiff<B>>,
    params: &mut Params<B>,
    opt: &mut AdamW<B>,
    grads: Tensor<B, 1>,
    loss: f64,
    tokens: usize,
    lr: f64,
    max_grad_norm: f64,
) -> Result<StepStats, StepError> {
    let result = if !loss.is_finite() {
        Err(StepError::NonFinite { what: "loss", value: loss })
    } else {
        let (grads, grad_norm) = clip_grad_norm(grads, max_grad_norm);
        if grad_norm.is_finite() {
            params.flat = opt.step(params.flat.clone(), grads, lr);
            Ok(StepStats { loss, grad_norm, tokens })
        } else {
            Err(StepError::NonFinite { what: "gradient norm", value: grad_norm })
        }
    };
    params.write(model, false);
    result
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    let v: f32 = t.into_scalar().elem();
    v as f64
}

/// Stops with a message if a step produced a non-finite value.
pub fn check_finite(step: u64, r: Result<StepStats, StepError>, last_ckpt: Option<u64>) -> Result<StepStats> {
    match r {
        Ok(s) => Ok(s),
        Err(e) => {
            let keep = match last_ckpt {
                Some(k) => format!("checkpoints/step-{k} is the last good state"),
                None => "no checkpoint was written yet".to_string(),
            };
            bail!(
                "step {step}: {e}; stopped without applying the update ({keep}). Lower train.lr, set \
                 train.max_grad_norm, or check the data"
            )
        }
    }
}

/// The step on a CubeCL runtime (wgpu; here Mesa's CPU Vulkan driver) against the CPU: the flat parameters
/// as views of one device buffer, the LoRA op with dropout, gradient accumulation, clipping and AdamW on the
/// device. Run with `cargo test --release -p lapidary --features wgpu --bin lapidary wgpu`; without a wgpu
/// adapter it says so and passes.
#[cfg(all(test, feature = "wgpu"))]
mod wgpu_tests {
    use lapidary_model::backends::{FlexCpu, WgpuGpu};
    use lapidary_model::nn::lora::TARGETS;
    use lapidary_model::peft::adapter::{init_lora, AdapterConfig};
    use lapidary_model::quant::QuantKind;
    use lapidary_model::ModelFiles;

    use super::*;
    use crate::train::batch::random_batch;
    use crate::train::optim::AdamWConfig;
    use crate::train::params::download;

    /// The tiny Gemma 2 fixture in NF4 with rank-4 LoRA (dropout 0.1) on every target, and its parameters.
    fn setup<B: GemmaBackend>() -> (Gemma<Autodiff<B>>, Params<B>) {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny/gemma2");
        let files = ModelFiles::open(&dir).expect("fixture model");
        let mut model = lapidary_model::gemma::load::load_gemma::<Autodiff<B>>(
            &files.config,
            files.weights.as_ref(),
            QuantKind::Nf4,
            &Default::default(),
        )
        .expect("load");
        let targets: Vec<String> = TARGETS.iter().map(|s| s.to_string()).collect();
        init_lora(&mut model, &AdapterConfig::new(4, 8.0, 0.1, &targets, false, None), 5).expect("lora");
        let params = Params::read(&mut model);
        (model, params)
    }

    /// The tests share CubeCL's pools (and the memory counters): one at a time.
    static WGPU: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// This test's turn on the wgpu runtime, or `None` (saying so) where there is no adapter.
    fn wgpu_or_skip() -> Option<std::sync::MutexGuard<'static, ()>> {
        if !lapidary_model::testing::wgpu_or_skip() {
            return None;
        }
        Some(WGPU.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn adamw<B: GemmaBackend>(n: usize) -> AdamW<B> {
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        AdamW::new(cfg, n, &Default::default())
    }

    /// Losses and gradient norms of four steps (two micro-batches each, with and without gradient
    /// checkpointing), and the parameters after them.
    fn run<B: GemmaBackend>() -> (Vec<(f64, f64)>, Vec<f32>) {
        let (mut model, mut params) = setup::<B>();
        let mut opt = adamw::<B>(params.len());
        let vocab = model.config.vocab_size;
        let window = [random_batch(vocab, 2, 12, 1), random_batch(vocab, 1, 20, 2)];
        let stats = (0..4)
            .map(|s| {
                let r = train_step(&mut model, &mut params, &mut opt, &window, 5e-3, 1.0, s % 2 == 1, |m| {
                    (s * 10 + m) as u64
                });
                let r = r.expect("finite step");
                (r.loss, r.grad_norm)
            })
            .collect();
        (stats, download(&params.flat))
    }

    #[test]
    fn steps_on_wgpu_equal_cpu() {
        let Some(_one) = wgpu_or_skip() else { return };
        let ((gs, gp), (cs, cp)) = (run::<WgpuGpu>(), run::<FlexCpu>());
        for (i, ((gl, gn), (cl, cn))) in gs.iter().zip(&cs).enumerate() {
            assert!((gl - cl).abs() <= 1e-5 * cl.abs(), "step {i}: loss {gl} on wgpu vs {cl} on CPU");
            assert!((gn - cn).abs() <= 1e-4 * cn.abs(), "step {i}: gradient norm {gn} on wgpu vs {cn} on CPU");
        }
        let scale = cp.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = gp.iter().zip(&cp).map(|(g, c)| (g - c).abs()).fold(0f32, f32::max) / scale;
        assert!(err < 1e-4, "parameters after four steps differ by {err:e} of their scale");
        // The steps moved the parameters (B starts at zero), so the comparison above compares something.
        let before = download(&setup::<FlexCpu>().1.flat);
        assert!(before.iter().zip(&cp).any(|(a, b)| a != b));
    }

    /// Device memory stays flat over a run (the GPU benchmark runs 200+ steps on CUDA; the pools' bookkeeping
    /// is CubeCL's on every runtime, and every cache of ours — packed weights, masks, kernels — would show
    /// here as growth): after a warm-up, what live tensors hold after a step is the same at every step
    /// (the parameters, AdamW's moments, the weights), and the pools reserve nothing more.
    #[test]
    fn memory_stays_flat_over_steps_on_wgpu() {
        use lapidary_model::cube::wgpu::sample_gpu0;

        let Some(_one) = wgpu_or_skip() else { return };
        let (mut model, mut params) = setup::<WgpuGpu>();
        let mut opt = adamw::<WgpuGpu>(params.len());
        let vocab = model.config.vocab_size;
        let mut after = Vec::new();
        for s in 0..40u64 {
            // New token ids every step (new masks, new dropout seeds), checkpointing on every other one.
            let window = [random_batch(vocab, 2, 12, 2 * s), random_batch(vocab, 1, 20, 2 * s + 1)];
            let r =
                train_step(&mut model, &mut params, &mut opt, &window, 5e-3, 1.0, s % 2 == 1, |m| s * 10 + m as u64);
            r.expect("finite step");
            let m = sample_gpu0();
            after.push((m.in_use, m.reserved));
        }
        eprintln!("(in use, reserved) after each step: {after:?}");
        let (warm, end) = (after[9], after[39]);
        assert!(warm.0 > 0, "the pools' counters read nothing: {after:?}");
        assert_eq!(end.0, warm.0, "bytes in use after step 40 vs step 10: {after:?}");
        assert!(end.1 <= warm.1, "the pools grew after step 10: {after:?}");
    }
}
