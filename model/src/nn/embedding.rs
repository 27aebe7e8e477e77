//! The token table `[vocab, hidden]`: the embedding lookup and, tied to it, the LM head. Dense (a tensor in
//! the compute dtype), or packed: a GGUF file's own blocks under `--quant gguf` (the real Gemma 3 270M file
//! stores its 262k × 640 table as Q8_0: 178 MB instead of 671 MB in f32), whose rows are decoded when looked
//! up and multiplied as stored by the LM head (`Kernels::frozen_matmul`, `GemmaBackend::lm_head_nll_grad`).
use std::sync::Arc;

use burn::tensor::{DType, Int, Tensor, TensorData, TensorPrimitive};

use crate::cpu::qmatmul::decode_rows;
use crate::dtype::cast;
use crate::ops::gemma_backend::GemmaBackend;
use crate::ops::lm_head::LmTable;
use crate::quant::PackedWeight;

#[derive(Debug, Clone)]
pub enum TokenTable<B: GemmaBackend> {
    Dense(Tensor<B, 2>),
    /// Packed rows, and the dtype lookups are returned in.
    Packed(Arc<PackedWeight>, DType),
}

impl<B: GemmaBackend> TokenTable<B> {
    /// `[vocab, hidden]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            TokenTable::Dense(t) => t.dims(),
            TokenTable::Packed(w, _) => w.shape(),
        }
    }

    /// What lookups and logits come out in.
    pub fn dtype(&self) -> DType {
        match self {
            TokenTable::Dense(t) => t.dtype(),
            TokenTable::Packed(_, dt) => *dt,
        }
    }

    /// The same table computing in `dtype` (a dense table is cast; packed rows stay as stored).
    pub fn with_dtype(self, dtype: DType) -> Self {
        match self {
            TokenTable::Dense(t) => TokenTable::Dense(cast(t, dtype)),
            TokenTable::Packed(w, _) => TokenTable::Packed(w, dtype),
        }
    }

    /// The rows of `ids`, `[ids.len(), hidden]`.
    pub fn lookup(&self, ids: &[u32], device: &B::Device) -> Tensor<B, 2> {
        match self {
            TokenTable::Dense(t) => {
                let idx: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
                t.clone().select(0, Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [ids.len()]), device))
            }
            TokenTable::Packed(w, dt) => {
                let h = w.shape()[1];
                let mut rows = vec![0f32; ids.len() * h];
                for (row, &id) in rows.chunks_exact_mut(h).zip(ids) {
                    decode_rows(w, id as usize, row);
                }
                cast(Tensor::from_data(TensorData::new(rows, [ids.len(), h]), device), *dt)
            }
        }
    }

    /// `h · Eᵀ` for `h` `[n, hidden]`: `[n, vocab]`.
    pub fn logits(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            // `(E · hᵀ)ᵀ` rather than `h · Eᵀ`: the `[vocab, hidden]` table stays contiguous on the left,
            // where every backend multiplies it without copying it.
            TokenTable::Dense(t) => t.clone().matmul(h.transpose()).transpose(),
            TokenTable::Packed(w, _) => {
                let y = B::frozen_matmul(h.into_primitive().tensor(), w);
                Tensor::from_primitive(TensorPrimitive::Float(y))
            }
        }
    }

    /// The table as the fused LM-head loss takes it.
    pub fn for_loss(&self) -> LmTable<B> {
        match self {
            TokenTable::Dense(t) => LmTable::Dense(t.clone().into_primitive().tensor()),
            TokenTable::Packed(w, _) => LmTable::Packed(w.clone()),
        }
    }

    /// Bytes the table holds: its elements in the compute dtype, or the packed bytes.
    pub fn resident_bytes(&self) -> usize {
        match self {
            TokenTable::Dense(t) => t.shape().num_elements() * t.dtype().size(),
            TokenTable::Packed(w, _) => w.resident_bytes(),
        }
    }
}
