//! Gemma self-attention: grouped-query (Gemma 1 2B and Gemma 3 use a single KV head), RoPE,
//! Gemma 3's q/k RMSNorm, Gemma 2's score softcapping, sliding windows, and an optional KV cache.
use std::sync::Arc;

use burn::tensor::{Tensor, TensorPrimitive};

use super::kv_cache::LayerCache;
use super::lora::{LoraLinear, LoraRuntime};
use super::norm::RmsNorm;
use super::rope::RopeTables;
use crate::mask::AttnMask;
use crate::ops::attention::AttnSpec;
use crate::ops::gemma_backend::GemmaBackend;

#[derive(Debug, Clone)]
pub struct Attention<B: GemmaBackend> {
    pub q_proj: LoraLinear<B>,
    pub k_proj: LoraLinear<B>,
    pub v_proj: LoraLinear<B>,
    pub o_proj: LoraLinear<B>,
    /// Gemma 3 only: RMSNorm over head_dim on queries and keys, before RoPE.
    pub q_norm: Option<RmsNorm<B>>,
    pub k_norm: Option<RmsNorm<B>>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// `query_pre_attn_scalar^-0.5`.
    pub scaling: f64,
    pub softcap: Option<f64>,
}

impl<B: GemmaBackend> Attention<B> {
    /// `[batch, seq, n·d]` → `[batch, seq, n, d]`: a free reshape, so the norms and RoPE below run on
    /// contiguous memory (heads-first layouts would make every elementwise op a strided copy).
    fn heads(x: Tensor<B, 3>, n: usize, d: usize) -> Tensor<B, 4> {
        let [b, s, _] = x.dims();
        x.reshape([b, s, n, d])
    }

    /// `mask` covers the queries and the keys (cached + new). With a cache, the new keys/values are appended
    /// to it (`LayerCache::append`; the caller trims sliding layers).
    ///
    /// # Shapes
    /// `[batch, seq, hidden]` → `[batch, seq, hidden]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        mask: &Arc<AttnMask>,
        cache: Option<&mut LayerCache<B>>,
        rt: &LoraRuntime,
    ) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let mut q = Self::heads(self.q_proj.forward(x.clone(), rt), h, d);
        let mut k = Self::heads(self.k_proj.forward(x.clone(), rt), kvh, d);
        let v = Self::heads(self.v_proj.forward(x, rt), kvh, d);
        if let Some(n) = &self.q_norm {
            q = n.forward(q);
        }
        if let Some(n) = &self.k_norm {
            k = n.forward(k);
        }
        let q = rope.apply(q);
        let k = rope.apply(k);
        let (k, v) = match cache {
            Some(c) => c.append(k, v),
            None => (k, v),
        };
        let spec = AttnSpec { mask: mask.clone(), scaling: self.scaling, softcap: self.softcap };
        let [q, k, v] = [q, k, v].map(|t| t.into_primitive().tensor());
        let out = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(B::attend(q, k, v, &spec)));
        let out = out.reshape([b, s, h * d]);
        self.o_proj.forward(out, rt)
    }
}
