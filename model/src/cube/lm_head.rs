//! The LM head's cross-entropy on the CubeCL backends (`GemmaBackend::lm_head_nll_grad`): the chunks of
//! `crate::ops::lm_head::chunked`, each as two vendor products (cuBLAS on CUDA) around one kernel.
//!
//! Per chunk of `c` rows: `Z = hc · Eᵀ` `[c, vocab]` (row-major, the table passed transposed, not copied);
//! then [`nll_rows`], one cube per row — softcap, max, sum of exponentials, the row's `nll = lse − z[target]`
//! and, in place of the logits, the gradient with respect to them `(softmax − onehot) · cap'`; then
//! `d hc = G · E`. The Burn-op version runs ~15 kernels over the `[c × vocab]` logits, each reading and
//! writing all of them, and builds them in f32; here they are read three times and written once, in the
//! hidden states' dtype (bf16 logits as transformers makes them, f32 arithmetic inside).
use burn::tensor::{DType, Int, Tensor, TensorPrimitive};
use burn_cubecl::element::BoolElement;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl::prelude::*;

use super::gemm::{product, Gemm};
use super::launch::{arg, cube_row, reduce, row_grid, softcap, ROW_UNITS};
use crate::ops::lm_head::ChunkLoss;

/// Rows per chunk: the logits of a chunk are `rows × vocab` in the hidden states' dtype (256 MiB in f32 for
/// Gemma's 262k vocabulary).
pub const CHUNK: usize = 256;

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn nll_rows<F: Float>(
    logits: &mut Array<F>,
    ids: &Array<i32>,
    nll: &mut Array<f32>,
    rows: u32,
    vocab: u32,
    cap: f32,
    grad: u32,
    #[comptime] units: u32,
    #[define(F)] _dtype: StorageType,
) {
    let row = cube_row();
    if row >= rows as usize {
        terminate!();
    }
    let (v, unit, step) = (vocab as usize, UNIT_POS_X as usize, CUBE_DIM_X as usize);
    let base = row * v;
    let target = ids[row] as usize;
    let mut shared = SharedMemory::<f32>::new(units as usize);

    let mut m = f32::new(-3.0e38);
    let mut j = unit;
    while j < v {
        m = m.max(softcap(f32::cast_from(logits[base + j]), cap).0);
        j += step;
    }
    m = reduce(&mut shared, m, unit, true);
    let mut l = f32::new(0.0);
    let mut j = unit;
    while j < v {
        l += (softcap(f32::cast_from(logits[base + j]), cap).0 - m).exp();
        j += step;
    }
    l = reduce(&mut shared, l, unit, false);
    if unit == 0 {
        nll[row] = m + l.ln() - softcap(f32::cast_from(logits[base + target]), cap).0;
    }
    if grad != 0 {
        // Every unit has read the target's logit (above, unit 0) before it is overwritten: the reductions'
        // barriers come first, and unit 0 itself writes it only after reading it.
        sync_cube();
        let mut j = unit;
        while j < v {
            let (z, dcap) = softcap(f32::cast_from(logits[base + j]), cap);
            let mut p = (z - m).exp() / l;
            if j == target {
                p -= 1.0;
            }
            logits[base + j] = F::cast_from(p * dcap);
            j += step;
        }
    }
}

type Cube<R, BT> = CubeBackend<R, f32, i32, BT>;

/// One chunk: `(Σ nll as [1] f32, d Σnll / d hc when grad)`.
pub fn chunk<R: Gemm, BT: BoolElement>(
    hc: Tensor<Cube<R, BT>, 2>,
    table: &Tensor<Cube<R, BT>, 2>,
    ids: Tensor<Cube<R, BT>, 1, Int>,
    softcap: Option<f64>,
    grad: bool,
) -> ChunkLoss<Cube<R, BT>> {
    let [c, _] = hc.dims();
    let vocab = table.dims()[0];
    let device = hc.device();
    let t = |x: CubeTensor<R>| Tensor::<Cube<R, BT>, 2>::from_primitive(TensorPrimitive::Float(x));
    let prim = |x: Tensor<Cube<R, BT>, 2>| x.into_primitive().tensor();
    let logits = into_contiguous(product::<R, BT>(prim(hc), prim(table.clone()), true));
    let nll = Tensor::<Cube<R, BT>, 1>::empty([c], (&device, DType::F32));
    let nll_prim = nll.clone().into_primitive().tensor();
    let ids = into_contiguous(ids.into_primitive());
    let client = logits.client.clone();
    nll_rows::launch::<R>(
        &client,
        row_grid(c),
        CubeDim::new_1d(ROW_UNITS),
        arg(&logits),
        arg(&ids),
        arg(&nll_prim),
        c as u32,
        vocab as u32,
        softcap.unwrap_or(0.0) as f32,
        grad as u32,
        ROW_UNITS,
        logits.dtype.into(),
    );
    let sum = nll.sum();
    let dhc = grad.then(|| t(product::<R, BT>(logits, prim(table.clone()), false)));
    (sum, dhc)
}
