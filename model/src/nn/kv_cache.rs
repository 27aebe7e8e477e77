//! The KV cache of generation: per layer, the keys and values seen so far with their positions. Appending
//! and trimming happen here; the attention layer appends a step's keys and values, the decoder trims
//! sliding-window layers to their window after each step.
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

use crate::mask::Span;

/// The KV cache of a whole model, batch-major like the batch it was built for; a layer's entry is made on
/// its first step.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub layers: Vec<Option<LayerCache<B>>>,
}

/// One layer's cached keys and values, `[batch, len, kv_heads, head_dim]`, with their positions.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    pub k: Tensor<B, 4>,
    pub v: Tensor<B, 4>,
    pub positions: Vec<usize>,
}

impl<B: Backend> KvCache<B> {
    pub fn new(n_layers: usize) -> Self {
        Self { layers: vec![None; n_layers] }
    }

    /// Number of tokens seen (the next position).
    pub fn next_position(&self) -> usize {
        self.layers.iter().flatten().map(|c| c.positions.last().map_or(0, |p| p + 1)).max().unwrap_or(0)
    }

    /// Layer `i`'s cache, empty (`[batch, 0, kv_heads, head_dim]` in `dtype`) on its first use.
    pub fn layer(&mut self, i: usize, kv: [usize; 4], dtype: DType, device: &B::Device) -> &mut LayerCache<B> {
        self.layers[i].get_or_insert_with(|| LayerCache {
            k: Tensor::zeros(kv, (device, dtype)),
            v: Tensor::zeros(kv, (device, dtype)),
            positions: Vec::new(),
        })
    }
}

impl<B: Backend> LayerCache<B> {
    /// Records the positions of the tokens about to be appended (one row's; every row has the same) and
    /// returns the keys' side of the attention mask: the cached positions, then the new ones, per row.
    pub fn extend_positions(&mut self, new: &[usize], batch: usize) -> Span {
        self.positions.extend(new.iter().copied());
        let kpos: Vec<usize> = (0..batch).flat_map(|_| self.positions.iter().copied()).collect();
        Span { positions: kpos, segments: None }
    }

    /// Appends a step's keys and values `[batch, new, kv_heads, head_dim]` and returns all of them.
    pub fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        self.k = Tensor::cat(vec![self.k.clone(), k], 1);
        self.v = Tensor::cat(vec![self.v.clone(), v], 1);
        (self.k.clone(), self.v.clone())
    }

    /// Keeps the last `window` entries: a sliding layer never looks further back.
    pub fn trim(&mut self, window: usize) {
        let len = self.positions.len();
        if len > window {
            self.positions.drain(..len - window);
            self.k = self.k.clone().narrow(1, len - window, window);
            self.v = self.v.clone().narrow(1, len - window, window);
        }
    }
}
