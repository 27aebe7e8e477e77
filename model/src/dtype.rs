//! The compute dtype: f32 (the default everywhere) or bf16 (what QLoRA on GPUs computes in: bitsandbytes'
//! `bnb_4bit_compute_dtype=torch.bfloat16`, what QLoRA recipes use on GPUs).
//!
//! In bf16 the embedding table (also the LM head), the dense frozen weights and every activation between the
//! layers are bf16, and the products by packed weights dequantize to bf16. What transformers and PEFT keep in
//! f32, we keep in f32 too:
//! - RMSNorm computes in f32 and casts its output back (`Gemma3RMSNorm`: `_norm(x.float()) * (1 + w.float())`);
//! - attention's softmax is f32 (transformers' eager `softmax(..., dtype=torch.float32)`; our op casts q, k, v
//!   up and its output back);
//! - the loss: logits are cast to f32 before the log-softmax, as transformers' `loss_function` does;
//! - LoRA: `A` and `B` stay f32 (they are the optimizer's weights), the branch computes in f32 and its output
//!   is cast to the base's dtype before the sum, as PEFT does (`x` cast to `lora_A.weight.dtype`).
//!
//! Burn 0.21 tensors carry their dtype at run time, so one backend type serves both; ops must not mix dtypes
//! (burn-flex does not check in release builds), which the helpers here make explicit.
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorMetadata};

/// The dtypes a model can compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputeDtype {
    #[default]
    F32,
    Bf16,
}

impl ComputeDtype {
    pub fn dtype(self) -> DType {
        match self {
            ComputeDtype::F32 => DType::F32,
            ComputeDtype::Bf16 => DType::BF16,
        }
    }
}

/// `t` in `dtype` (no-op when it already is).
pub fn cast<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if t.dtype() == dtype {
        t
    } else {
        Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(cast_prim::<B>(t.into_primitive().tensor(), dtype)))
    }
}

/// [`cast`] on a backend primitive (burn-flex's f32 <-> bf16 by the host conversions: `crate::cpu::bf16`).
pub fn cast_prim<B: Backend>(t: FloatTensor<B>, dtype: DType) -> FloatTensor<B> {
    if t.dtype() == dtype {
        return t;
    }
    match crate::cpu::bf16::flex_cast::<B>(t, dtype) {
        Ok(c) => c,
        Err(t) => B::float_cast(t, dtype.into()),
    }
}
