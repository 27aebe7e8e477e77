//! Gemma self-attention: grouped-query (Gemma 1 2B and Gemma 3 use a single KV head), RoPE,
//! Gemma 3/4's q/k RMSNorm, Gemma 4's value norm, keys-as-values and shared keys/values, Gemma 2's score
//! softcapping, sliding windows, and an optional KV cache.
use std::sync::Arc;

use burn::tensor::{Tensor, TensorPrimitive};

use super::kv_cache::LayerCache;
use super::lora::{LoraLinear, LoraRuntime};
use super::norm::RmsNorm;
use super::rope::RopeTables;
use crate::mask::AttnMask;
use crate::ops::attention::AttnSpec;
use crate::ops::gemma_backend::GemmaBackend;

/// Keys and values, `[batch, len, kv_heads, head_dim]` each.
pub type KeysValues<B> = (Tensor<B, 4>, Tensor<B, 4>);

#[derive(Debug, Clone)]
pub struct Attention<B: GemmaBackend> {
    pub q_proj: LoraLinear<B>,
    /// `None` in a Gemma 4 KV-shared layer: it attends over another layer's keys and values.
    pub k_proj: Option<LoraLinear<B>>,
    /// `None` where the values are the key projection (Gemma 4 `attention_k_eq_v` global layers) or shared.
    pub v_proj: Option<LoraLinear<B>>,
    pub o_proj: LoraLinear<B>,
    /// Gemma 3/4: RMSNorm over head_dim on queries and keys, before RoPE.
    pub q_norm: Option<RmsNorm<B>>,
    pub k_norm: Option<RmsNorm<B>>,
    /// Gemma 4: RMSNorm without a weight on the values.
    pub v_norm: Option<RmsNorm<B>>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// `query_pre_attn_scalar^-0.5` (Gemma 4: 1).
    pub scaling: f64,
    pub softcap: Option<f64>,
}

/// Where a layer's keys and values come from in one forward pass.
pub enum KvInput<'a, B: GemmaBackend> {
    /// Projected from this layer's input, attended alone (training, evaluation).
    Own,
    /// Projected here and appended to the layer's cache (generation).
    Cached(&'a mut LayerCache<B>),
    /// An earlier layer's (Gemma 4 KV sharing), cache included.
    Shared(KeysValues<B>),
}

impl<B: GemmaBackend> Attention<B> {
    /// `[batch, seq, n·d]` → `[batch, seq, n, d]`: a free reshape, so the norms and RoPE below run on
    /// contiguous memory (heads-first layouts would make every elementwise op a strided copy).
    fn heads(x: Tensor<B, 3>, n: usize, d: usize) -> Tensor<B, 4> {
        let [b, s, _] = x.dims();
        x.reshape([b, s, n, d])
    }

    /// This layer's keys and values of `x` (normed, keys rotated).
    fn project_kv(&self, x: Tensor<B, 3>, rope: &RopeTables<B>, rt: &LoraRuntime) -> KeysValues<B> {
        let (kvh, d) = (self.num_kv_heads, self.head_dim);
        let k_proj = self.k_proj.as_ref().expect("a layer that projects keys has k_proj");
        let k = Self::heads(k_proj.forward(x.clone(), rt), kvh, d);
        let v = match &self.v_proj {
            Some(p) => Self::heads(p.forward(x, rt), kvh, d),
            // Gemma 4 `attention_k_eq_v`: the values are the key projection before its norm and RoPE.
            None => k.clone(),
        };
        let k = match &self.k_norm {
            Some(n) => n.forward(k),
            None => k,
        };
        let v = match &self.v_norm {
            Some(n) => n.forward(v),
            None => v,
        };
        (rope.apply(k), v)
    }

    /// `mask` covers the queries and the keys (cached + new, or the shared layer's). Returns the output and the
    /// keys and values attended over (what a KV-sharing layer after this one reuses).
    ///
    /// # Shapes
    /// `[batch, seq, hidden]` → `[batch, seq, hidden]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        mask: &Arc<AttnMask>,
        kv: KvInput<'_, B>,
        rt: &LoraRuntime,
    ) -> (Tensor<B, 3>, KeysValues<B>) {
        let [b, s, _] = x.dims();
        let (h, d) = (self.num_heads, self.head_dim);
        let mut q = Self::heads(self.q_proj.forward(x.clone(), rt), h, d);
        if let Some(n) = &self.q_norm {
            q = n.forward(q);
        }
        let q = rope.apply(q);
        let (k, v) = match kv {
            KvInput::Own => self.project_kv(x, rope, rt),
            KvInput::Cached(c) => {
                let (k, v) = self.project_kv(x, rope, rt);
                c.append(k, v)
            }
            KvInput::Shared(kv) => kv,
        };
        let spec = AttnSpec { mask: mask.clone(), scaling: self.scaling, softcap: self.softcap };
        let prims = [q, k.clone(), v.clone()].map(|t| t.into_primitive().tensor());
        let [q, kp, vp] = prims;
        let out = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(B::attend(q, kp, vp, &spec)));
        let out = out.reshape([b, s, h * d]);
        (self.o_proj.forward(out, rt), (k, v))
    }
}
