//! Rotary position embeddings (applied by the op `Kernels::rope`), transformers' "rotate half" layout
//! (GGUF's Gemma uses the same NEOX order, so no permutation of q/k weights is needed). Tables are computed on the host per forward call from the
//! positions, so packed rows (positions restarting per example) and cached decoding need nothing special.
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

use crate::config::RopeConfig;
use crate::dtype::cast;
use crate::ops::gemma_backend::GemmaBackend;

/// `cos` and `sin`, each `[batch, seq, 1, head_dim]` (broadcast over heads).
pub struct RopeTables<B: GemmaBackend> {
    pub cos: Tensor<B, 4>,
    pub sin: Tensor<B, 4>,
}

/// transformers' `inv_freq`: `1 / theta^(2i/d)`, divided by the linear scaling factor; with proportional RoPE
/// only the first `floor(fraction · d / 2)` pairs rotate and the rest get frequency 0 (cos 1, sin 0).
pub fn inv_freq(rope: &RopeConfig, head_dim: usize) -> Vec<f32> {
    let rotated = if rope.rotated_fraction < 1.0 {
        // Python's `int(fraction * head_dim // 2)`.
        (rope.rotated_fraction * head_dim as f64 / 2.0).floor() as usize
    } else {
        head_dim / 2
    };
    (0..head_dim / 2)
        .map(|i| {
            if i >= rotated {
                return 0.0;
            }
            let exponent = (2 * i) as f32 / head_dim as f32;
            let f = 1.0f32 / (rope.theta as f32).powf(exponent);
            f / rope.linear_factor as f32
        })
        .collect()
}

impl<B: GemmaBackend> RopeTables<B> {
    /// `positions` is `[batch * seq]`, row-major.
    pub fn new(rope: &RopeConfig, head_dim: usize, positions: &[usize], batch: usize, device: &B::Device) -> Self {
        let seq = positions.len() / batch.max(1);
        let inv = inv_freq(rope, head_dim);
        let half = head_dim / 2;
        let mut cos = vec![0f32; positions.len() * head_dim];
        let mut sin = vec![0f32; positions.len() * head_dim];
        for (t, &p) in positions.iter().enumerate() {
            for (i, f) in inv.iter().enumerate() {
                let angle = p as f32 * f;
                let (s, c) = angle.sin_cos();
                // cat(freqs, freqs): the same angle for dimension i and i + half.
                cos[t * head_dim + i] = c;
                cos[t * head_dim + i + half] = c;
                sin[t * head_dim + i] = s;
                sin[t * head_dim + i + half] = s;
            }
        }
        let shape = [batch, seq, 1, head_dim];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }

    /// # Shapes
    /// `[batch, seq, heads, head_dim]` → same
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        // transformers computes the tables in f32 and casts them to the activations' dtype.
        let dt = x.dtype();
        let [cos, sin] = [self.cos.clone(), self.sin.clone()].map(|t| cast(t, dt));
        let [x, cos, sin] = [x, cos, sin].map(|t| t.into_primitive().tensor());
        Tensor::from_primitive(TensorPrimitive::Float(B::rope(x, cos, sin)))
    }
}
