//! Host (CPU) kernels used where Burn's generic ops are too slow: a safe row-major front to the `gemm`
//! crate (the same matmul burn-flex runs, here called on our own buffers), and the vectorised softmax /
//! cross-entropy rows of the fused LM-head loss, and the tiled attention.
pub mod attention;
pub mod geglu;
pub mod gemm;
pub mod math;
pub mod rope;
pub mod softmax;
