//! The frozen linear of QLoRA, `y = x · Wᵀ` without bias (every Gemma projection), with `W` stored dense,
//! NF4 or int8. The products are the backend's ops (`crate::ops::frozen`): the dense weight of a packed
//! kind never outlives one call.
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

use crate::ops::frozen_weight::FrozenWeight;
use crate::ops::gemma_backend::GemmaBackend;
use crate::quant::int8::Int8Weight;
use crate::quant::nf4::Nf4Weight;
use crate::quant::packed::{PackedWeight, QuantKind};

/// A frozen (non-trainable) linear layer without bias, as every Gemma projection is.
#[derive(Debug, Clone)]
pub enum FrozenLinear<B: Backend> {
    /// Stored transposed, `[in, out]`, so the forward is a plain matmul.
    Dense(Tensor<B, 2>),
    Packed(Arc<PackedWeight>),
    /// Gemma 4's routed experts (a checkpoint's 3-D `[experts, out, in]` parameter), one frozen linear each.
    /// Each token goes through its own experts (`crate::nn::moe`), so the stack as a whole has no forward; it
    /// is one [`crate::nn::lora::LoraLinear`] so that its LoRA is one PEFT `target_parameters` adapter.
    Experts(Arc<Vec<FrozenLinear<B>>>),
}

impl<B: GemmaBackend> FrozenLinear<B> {
    /// `data` is row-major `[out, in]` as in the checkpoint.
    pub fn new(data: Vec<f32>, shape: [usize; 2], quant: QuantKind, device: &B::Device) -> Self {
        match quant {
            QuantKind::None => {
                // Transposed once on the host so the forward multiplies by a contiguous `[in, out]` matrix:
                // burn-ndarray copies a transposed view on every matmul.
                let [o, i] = shape;
                let mut t = vec![0f32; data.len()];
                for (r, row) in data.chunks(i).enumerate() {
                    for (c, v) in row.iter().enumerate() {
                        t[c * o + r] = *v;
                    }
                }
                FrozenLinear::Dense(Tensor::<B, 2>::from_data(TensorData::new(t, [i, o]), device))
            }
            QuantKind::Nf4 => FrozenLinear::Packed(Arc::new(PackedWeight::Nf4(Nf4Weight::quantize(&data, shape)))),
            QuantKind::Int8 => FrozenLinear::Packed(Arc::new(PackedWeight::Int8(Int8Weight::quantize(&data, shape)))),
            // The file's blocks are taken as they are (`gemma::load`); from f32 values there is nothing to keep.
            QuantKind::Gguf => panic!("FrozenLinear::new: QuantKind::Gguf takes a GgmlWeight, not f32 values"),
        }
    }

    /// `[out, in]`.
    pub fn shape(&self) -> [usize; 2] {
        match self {
            FrozenLinear::Dense(w) => {
                let [i, o] = w.dims();
                [o, i]
            }
            FrozenLinear::Packed(p) => p.shape(),
            FrozenLinear::Experts(e) => e[0].shape(),
        }
    }

    /// How many experts the weight stacks (1 for an ordinary linear).
    pub fn experts(&self) -> usize {
        match self {
            FrozenLinear::Experts(e) => e.len(),
            _ => 1,
        }
    }

    /// Expert `e` of a stack.
    pub fn expert(&self, e: usize) -> &FrozenLinear<B> {
        match self {
            FrozenLinear::Experts(stack) => &stack[e],
            _ => panic!("FrozenLinear::expert on a linear that is not an expert stack"),
        }
    }

    /// # Shapes
    /// `[batch, seq, in]` → `[batch, seq, out]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, i] = x.dims();
        let x2 = x.reshape([b * s, i]);
        let y = match self {
            FrozenLinear::Dense(w) => x2.matmul(w.clone()),
            FrozenLinear::Packed(p) => {
                let prim = B::frozen_matmul(x2.into_primitive().tensor(), p);
                Tensor::from_primitive(TensorPrimitive::Float(prim))
            }
            FrozenLinear::Experts(_) => panic!("an expert stack is multiplied per expert (nn::moe)"),
        };
        let o = self.shape()[0];
        y.reshape([b, s, o])
    }

    /// The weight as a fused op's forward and backward use it, without the tensor wrapper.
    pub fn weight(&self) -> FrozenWeight<B> {
        match self {
            FrozenLinear::Dense(w) => FrozenWeight::Dense(w.clone().into_primitive().tensor()),
            FrozenLinear::Packed(p) => FrozenWeight::Packed(p.clone()),
            FrozenLinear::Experts(_) => panic!("an expert stack is multiplied per expert (nn::moe)"),
        }
    }

    /// The dense weight `[out, in]` on the host (dequantized for packed kinds).
    pub fn dense_weight(&self) -> Vec<f32> {
        match self {
            FrozenLinear::Dense(w) => w.clone().transpose().into_data().convert::<f32>().to_vec().unwrap_or_default(),
            FrozenLinear::Packed(p) => p.dequantize(),
            // `[experts · out, in]`: the checkpoint's `[experts, out, in]` row-major.
            FrozenLinear::Experts(e) => e.iter().flat_map(|x| x.dense_weight()).collect(),
        }
    }

    pub fn resident_bytes(&self) -> usize {
        match self {
            FrozenLinear::Dense(w) => w.shape().num_elements() * 4,
            FrozenLinear::Packed(p) => p.resident_bytes(),
            FrozenLinear::Experts(e) => e.iter().map(|x| x.resident_bytes()).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::{Cpu, CpuAutodiff};
    use crate::testing::values;

    /// The custom backward (re-dequantize, multiply) must give the gradient ordinary autodiff gives through
    /// a dense matmul by the same dequantized weight.
    #[test]
    fn packed_backward_equals_dense_backward() {
        let device = Default::default();
        let (n, inp, out) = (5, 128, 24);
        let w = values(out * inp, 1, 1.0);
        for quant in [QuantKind::Nf4, QuantKind::Int8] {
            let packed = FrozenLinear::<CpuAutodiff>::new(w.clone(), [out, inp], quant, &device);
            let dense = FrozenLinear::<CpuAutodiff>::new(packed.dense_weight(), [out, inp], QuantKind::None, &device);
            let coeff =
                Tensor::<CpuAutodiff, 3>::from_data(TensorData::new(values(n * out, 3, 1.0), [1, n, out]), &device);
            let run = |lin: &FrozenLinear<CpuAutodiff>| {
                let x =
                    Tensor::<CpuAutodiff, 3>::from_data(TensorData::new(values(n * inp, 2, 1.0), [1, n, inp]), &device)
                        .require_grad();
                let y = lin.forward(x.clone());
                let grads = (y.clone() * coeff.clone()).sum().backward();
                let gx: Tensor<Cpu, 3> = x.grad(&grads).expect("x has a gradient");
                (y.inner().into_data().to_vec::<f32>().unwrap(), gx.into_data().to_vec::<f32>().unwrap())
            };
            let (yp, gp) = run(&packed);
            let (yd, gd) = run(&dense);
            // Relative to the values' scale: the two paths may sum the 128 products in different orders.
            let rel = |a: &[f32], b: &[f32]| {
                let scale = b.iter().fold(1f32, |m, x| m.max(x.abs()));
                a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / scale
            };
            assert!(rel(&yp, &yd) < 1e-6, "{quant:?} forward: {}", rel(&yp, &yd));
            assert!(rel(&gp, &gd) < 1e-6, "{quant:?} backward: {}", rel(&gp, &gd));
            // Hand check of one entry: dx[0][0] = sum_o coeff[0][o] * W[o][0].
            let wd = packed.dense_weight();
            let c = values(n * out, 3, 1.0);
            let want: f32 = (0..out).map(|o| c[o] * wd[o * inp]).sum();
            assert!((gp[0] - want).abs() < 1e-5 * want.abs().max(1.0), "{quant:?}: dx[0][0] = {} vs {want}", gp[0]);
        }
    }
}
