//! RoPE in Burn ops, rotate-half layout: the reference for `Kernels::rope` (any backend, any float dtype).
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

/// `x · cos + rotate_half(x) · sin` for `x` `[batch, seq, heads, d]` and tables `[batch, seq, 1, d]`.
pub fn forward<B: Backend>(x: FloatTensor<B>, cos: FloatTensor<B>, sin: FloatTensor<B>) -> FloatTensor<B> {
    let [x, cos, sin] = [x, cos, sin].map(|t| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(t)));
    let d = x.dims()[3];
    let x1 = x.clone().narrow(3, 0, d / 2);
    let x2 = x.clone().narrow(3, d / 2, d / 2);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    (x * cos + rotated * sin).into_primitive().tensor()
}
