//! Block-level activation checkpointing for training: the forward keeps only each decoder layer's input
//! (`[tokens, hidden]` per layer) instead of every intermediate; the backward then runs each layer again,
//! last first, under a fresh autodiff graph, and pushes the gradient through it. About one extra forward
//! of the decoder layers buys activation memory of one layer instead of all of them (transformers'
//! `gradient_checkpointing_enable()` does the same per decoder layer).
use burn::tensor::{ElementConversion, Tensor};
use burn_autodiff::Autodiff;

use crate::gemma::model::{linears, linears_mut};
use crate::gemma::model::{Gemma, LayerContext, TokenBatch};
use crate::nn::lora::LoraRuntime;
use crate::ops::gemma_backend::GemmaBackend;

impl<B: GemmaBackend> Gemma<Autodiff<B>> {
    /// `Σ nll` over `targets`, and the gradients of `scale · Σ nll` for every trainable tensor, handed to
    /// `on_grad(module, grads)` layer by layer (last layer first), `grads` in the order of
    /// `LoraAdapter::trainables` (`lora_A`, `lora_B`, DoRA's magnitude). The adapters are left requiring
    /// gradients (the leaves of each layer's graph).
    pub fn nll_backward_checkpointed(
        &mut self,
        tokens: &TokenBatch,
        targets: &[(usize, u32)],
        rt: &LoraRuntime,
        scale: f32,
        mut on_grad: impl FnMut(&str, Vec<Tensor<B, 2>>),
    ) -> f64 {
        // Forward with nothing tracked (adapters included): no graph is built, only the layer inputs are kept.
        set_adapters_require_grad(self, false);
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut x = self.embed_tokens_of(tokens).detach();
        let mut ctx = LayerContext::new().with_embeddings(self, tokens, &x);
        for i in 0..self.layers.len() {
            inputs.push(x.clone());
            x = self.forward_layer(i, x, tokens, &mut ctx, rt).detach();
        }
        // The head: final norm and the fused LM-head loss, differentiated with respect to the last output.
        let last = x.require_grad();
        let nll = self.nll_sum(self.norm.forward(last.clone()), targets);
        let total = nll.clone().inner().into_scalar();
        let grads = (nll * scale).backward();
        let mut upstream = last.grad(&grads).expect("the loss depends on the last layer's output");
        // Each layer again, under its own graph: d(⟨layer(x), upstream⟩)/dx is the next upstream.
        // Gemma 4's KV-shared layers attend over an earlier layer's keys and values: their recomputation takes
        // those as leaves, and the gradients reaching them wait in `kv_upstream` for the layer that made them,
        // whose objective then adds ⟨k, dk⟩ + ⟨v, dv⟩.
        set_adapters_require_grad(self, true);
        let lin = linears(self);
        let mut kv_upstream: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>> = vec![None; self.layers.len()];
        for i in (0..self.layers.len()).rev() {
            let x = inputs.pop().expect("one input per layer").require_grad();
            let source = self.config.layer_specs[i].kv_source;
            let leaves = source.map(|j| {
                let (k, v) = ctx.shared_kv(j).expect("the forward stored the reused keys and values");
                let leaves = (k.detach().require_grad(), v.detach().require_grad());
                ctx.set_shared_kv(j, leaves.clone());
                leaves
            });
            let y = self.forward_layer(i, x.clone(), tokens, &mut ctx, rt);
            let g = Tensor::<Autodiff<B>, 3>::from_inner(upstream);
            let mut objective = (y * g).sum();
            if let Some((dk, dv)) = kv_upstream[i].take() {
                let (k, v) = ctx.shared_kv(i).expect("a reused layer stores its keys and values");
                objective = objective + (k * Tensor::from_inner(dk)).sum() + (v * Tensor::from_inner(dv)).sum();
            }
            let grads = objective.backward();
            if let (Some(j), Some((k, v))) = (source, leaves) {
                let dk = k.grad(&grads).expect("a KV-shared layer's output depends on the keys");
                let dv = v.grad(&grads).expect("a KV-shared layer's output depends on the values");
                kv_upstream[j] = Some(match kv_upstream[j].take() {
                    Some((ak, av)) => (ak + dk, av + dv),
                    None => (dk, dv),
                });
            }
            let prefix = format!("layers.{i}.");
            for (module, l) in lin.iter().filter(|(m, _)| m.starts_with(&prefix)) {
                if let Some(ad) = &l.adapter {
                    let g: Option<Vec<Tensor<B, 2>>> = ad.trainables().iter().map(|(_, t)| t.grad(&grads)).collect();
                    if let Some(g) = g {
                        on_grad(module, g);
                    }
                }
            }
            if i > 0 {
                upstream = x.grad(&grads).expect("a layer's output depends on its input");
            } else {
                break;
            }
        }
        let t: f32 = total.elem();
        t as f64
    }
}

fn set_adapters_require_grad<B: GemmaBackend>(model: &mut Gemma<Autodiff<B>>, on: bool) {
    for (_, l) in linears_mut(model) {
        if let Some(ad) = l.adapter.as_mut() {
            // The values stay: a cached DoRA norm (dropped by `trainables_mut`) is made again per pass.
            for t in ad.trainables_mut() {
                *t = t.clone().set_require_grad(on);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, TensorData};

    use crate::backends::{Cpu, CpuAutodiff};
    use crate::gemma::model::linears_mut;
    use crate::gemma::model::TokenBatch;
    use crate::nn::lora::{LoraRuntime, TARGETS};
    use crate::peft::adapter::{init_lora, AdapterConfig};
    use crate::quant::QuantKind;
    use crate::{Gemma, ModelFiles};

    /// Gradients with checkpointing equal those of the ordinary backward (same ops, same dropout masks), on
    /// the tiny Gemma 2 (softcaps, sliding window), Gemma 3 and Gemma 4 (per-layer inputs, keys and values
    /// shared across layers, keys as values; and the MoE one with LoRA on its experts) fixtures with an NF4 base
    /// and packed rows.
    #[test]
    fn checkpointed_gradients_equal_the_plain_backward() {
        for arch in ["gemma2", "gemma3", "gemma4", "gemma4_moe"] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny").join(arch);
            let files = ModelFiles::open(&dir).unwrap();
            let device = Default::default();
            let mut model = crate::gemma::load::load_gemma::<CpuAutodiff>(
                &files.config,
                files.weights.as_ref(),
                QuantKind::Nf4,
                &device,
            )
            .unwrap();
            let targets: Vec<String> = TARGETS.iter().map(|s| s.to_string()).collect();
            // The MoE model also trains LoRA on its experts (PEFT's target_parameters, which needs no dropout).
            let cfg = match arch {
                "gemma4_moe" => AdapterConfig::new(4, 8.0, 0.0, &targets, false, None)
                    .with_target_parameters(&crate::peft::adapter::EXPERT_PARAMETERS.map(String::from)),
                _ => AdapterConfig::new(4, 8.0, 0.1, &targets, false, None),
            };
            init_lora(&mut model, &cfg, 3).unwrap();
            // A nonzero B, so that A has a gradient too.
            for (k, (_, l)) in linears_mut(&mut model).into_iter().enumerate() {
                let ad = l.adapter.as_mut().unwrap();
                let [o, r] = ad.b.dims();
                let v: Vec<f32> = (0..o * r).map(|i| (((i + k * 7) * 37 % 101) as f32 / 101.0 - 0.5) * 0.1).collect();
                ad.b = Tensor::from_data(TensorData::new(v, [o, r]), &device);
            }
            // Two packed rows of 12: segments restart positions.
            let ids: Vec<u32> = (0..24).map(|i| (i * 13 % 200 + 3) as u32).collect();
            let positions: Vec<usize> = (0..24).map(|i| if i % 12 < 7 { i % 12 } else { i % 12 - 7 }).collect();
            let segments: Vec<u32> = (0..24).map(|i| if i % 12 < 7 { 1 } else { 2 }).collect();
            let tokens = TokenBatch { ids, batch: 2, seq: 12, positions, segments: Some(segments) };
            let targets: Vec<(usize, u32)> =
                (0..23).filter(|i| i % 12 != 11).map(|i| (i, (i * 7 % 200) as u32)).collect();
            let rt = LoraRuntime { dropout_seed: Some(9) };
            let scale = 1.0 / targets.len() as f32;
            let host = |t: Tensor<Cpu, 2>| t.into_data().to_vec::<f32>().unwrap();

            let require = |m: &mut Gemma<CpuAutodiff>| {
                for (_, l) in linears_mut(m) {
                    let ad = l.adapter.as_mut().unwrap();
                    ad.a = ad.a.clone().require_grad();
                    ad.b = ad.b.clone().require_grad();
                }
            };
            require(&mut model);
            let nll = model.nll_sum(model.forward_hidden(&tokens, None, &rt), &targets);
            let plain_nll: f32 = nll.clone().into_scalar();
            let grads = (nll * scale).backward();
            let mut plain = Vec::new();
            for (_, l) in linears_mut(&mut model) {
                let ad = l.adapter.as_ref().unwrap();
                plain.push((host(ad.a.grad(&grads).unwrap()), host(ad.b.grad(&grads).unwrap())));
            }
            let mut ckpt = vec![(Vec::new(), Vec::new()); plain.len()];
            let modules: Vec<String> = linears_mut(&mut model).into_iter().map(|(m, _)| m).collect();
            let ck_nll = model.nll_backward_checkpointed(&tokens, &targets, &rt, scale, |m, g| {
                let j = modules.iter().position(|x| x == m).unwrap();
                ckpt[j] = (host(g[0].clone()), host(g[1].clone()));
            });
            assert!((ck_nll - plain_nll as f64).abs() < 1e-5 * ck_nll.abs(), "{arch}: {ck_nll} vs {plain_nll}");
            for (j, ((pa, pb), (ca, cb))) in plain.iter().zip(&ckpt).enumerate() {
                for (p, c) in [(pa, ca), (pb, cb)] {
                    let scale = p.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
                    let err = p.iter().zip(c).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    assert!(c.len() == p.len() && err <= 1e-5 * scale, "{arch} {}: {err} (scale {scale})", modules[j]);
                }
            }
        }
    }
}
