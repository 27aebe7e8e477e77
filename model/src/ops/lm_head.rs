//! The (tied) LM head and its cross-entropy as one fused op: from final hidden states `[n, hidden]`, the
//! embedding table `[vocab, hidden]` and the target positions, `Σ −log softmax(cap(h·Eᵀ))[target]`.
//!
//! Rows are processed in chunks, so `[tokens × vocab]` logits never exist at once, and the gradient with
//! respect to the hidden states is computed in the same pass, while a chunk's logits are at hand: the loss
//! is the end of the graph, so its backward only ever multiplies that saved `[n, hidden]` gradient by the
//! scalar upstream gradient (as Liger-Kernel and Unsloth do on GPUs). The table is frozen: no gradient.
//!
//! Here: [`nll_grad_generic`] in Burn ops (any backend; row chunks over the full vocabulary), the reference
//! and `GemmaBackend::lm_head_nll_grad`'s default, and [`chunked`], the row chunking the CubeCL backends
//! share. burn-flex runs `crate::cpu::lm_head` on its own buffers (vocabulary tiles with an online softmax).
use burn::tensor::activation::log_softmax;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, IndexingUpdateOp, Int, Tensor, TensorData, TensorPrimitive};

use super::kernels::{dense, Kernels};
use crate::dtype::{cast, cast_prim};
use crate::quant::PackedWeight;

/// The table the loss multiplies by: a dense `[vocab, hidden]` tensor, or packed rows (a GGUF file's token
/// embedding under `--quant gguf`), which burn-flex decodes tile by tile and other backends dequantize.
#[derive(Debug, Clone)]
pub enum LmTable<B: burn::tensor::backend::Backend> {
    Dense(FloatTensor<B>),
    Packed(std::sync::Arc<PackedWeight>),
}

impl<B: burn::tensor::backend::Backend> LmTable<B> {
    /// The dense table, a packed one dequantized on `hidden`'s device in its dtype (as the backends without a
    /// packed path take it).
    pub fn into_dense(self, hidden: &FloatTensor<B>) -> FloatTensor<B> {
        use burn::tensor::TensorMetadata;
        match self {
            LmTable::Dense(t) => t,
            LmTable::Packed(w) => cast_prim::<B>(w.to_primitive::<B>(&B::float_device(hidden)), hidden.dtype()),
        }
    }
}

/// Rows per chunk in the generic path.
pub const GENERIC_CHUNK: usize = 256;

/// `(Σ nll as a [1] tensor, d Σnll / d hidden as [n, hidden] when `grad`)`, in Burn ops.
pub fn nll_grad_generic<B: Kernels>(
    hidden: FloatTensor<B>,
    table: FloatTensor<B>,
    targets: &[(usize, u32)],
    softcap: Option<f64>,
    grad: bool,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    nll_grad_generic_chunked::<B>(hidden, table, targets, softcap, grad, GENERIC_CHUNK)
}

fn nll_grad_generic_chunked<B: Kernels>(
    hidden: FloatTensor<B>,
    table: FloatTensor<B>,
    targets: &[(usize, u32)],
    softcap: Option<f64>,
    grad: bool,
    chunk: usize,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    chunked::<B>(hidden, table, targets, grad, chunk, |hc, table, ids, grad| {
        chunk_generic(hc, table, ids, softcap, grad)
    })
}

/// A chunk's `(Σ nll as [1] f32, d Σnll / d hc when asked for)`.
pub type ChunkLoss<B> = (Tensor<B, 1>, Option<Tensor<B, 2>>);

/// The loss over `targets` in chunks of `chunk` rows, each computed by `step(hc [c, h], table, target ids
/// [c], grad) -> (Σ nll as [1] f32, d Σnll / d hc when grad)`: the rows gathered, the chunks' sums added up,
/// their gradients scattered back into `[n, h]`.
pub fn chunked<B: Kernels>(
    hidden: FloatTensor<B>,
    table: FloatTensor<B>,
    targets: &[(usize, u32)],
    grad: bool,
    chunk: usize,
    step: impl Fn(Tensor<B, 2>, &Tensor<B, 2>, Tensor<B, 1, Int>, bool) -> ChunkLoss<B>,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let hidden = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(hidden));
    let table = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(table));
    let device = hidden.device();
    let [n, h] = hidden.dims();
    // The loss is summed in f32 and the gradient comes back in the hidden states' dtype.
    let dt = hidden.dtype();
    let mut total = Tensor::<B, 1>::zeros([1], (&device, DType::F32));
    let mut dh = grad.then(|| Tensor::<B, 2>::zeros([n, h], (&device, dt)));
    for part in targets.chunks(chunk) {
        let c = part.len();
        let rows: Vec<i64> = part.iter().map(|(i, _)| *i as i64).collect();
        let ids: Vec<i64> = part.iter().map(|(_, t)| *t as i64).collect();
        let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [c]), &device);
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [c]), &device);
        let hc = hidden.clone().select(0, rows.clone());
        let (sum, dhc) = step(hc, &table, ids, grad);
        total = total + sum;
        if let (Some(acc), Some(dhc)) = (dh.take(), dhc) {
            dh = Some(acc.select_assign(0, rows, dhc, IndexingUpdateOp::Add));
        }
    }
    (total.into_primitive().tensor(), dh.map(|t| t.into_primitive().tensor()))
}

/// One chunk in Burn ops. In bf16 (`crate::dtype`) the logits are bf16 up to the softcap, then f32, as in
/// transformers.
fn chunk_generic<B: Kernels>(
    hc: Tensor<B, 2>,
    table: &Tensor<B, 2>,
    ids1: Tensor<B, 1, Int>,
    softcap: Option<f64>,
    grad: bool,
) -> ChunkLoss<B> {
    let (dt, f32) = (hc.dtype(), DType::F32);
    let c = hc.dims()[0];
    let ids = ids1.clone().reshape([c, 1]);
    // `(E · hᵀ)ᵀ`: the table stays contiguous on the left, where every backend multiplies it uncopied.
    let logits = dense(table.clone(), hc.transpose()).transpose();
    let (z, dcap) = match softcap {
        Some(cap) => {
            let t = (logits / cap).tanh();
            let d = cast(t.clone(), f32).powi_scalar(2).neg() + 1.0;
            (cast(t * cap, f32), Some(d))
        }
        None => (cast(logits, f32), None),
    };
    let logp = log_softmax(z, 1);
    let sum = logp.clone().gather(1, ids.clone()).sum().neg();
    if !grad {
        return (sum, None);
    }
    // d/dz = softmax − onehot; the onehot part times the table is the targets' own rows.
    let mut p = logp.exp();
    let mut own = cast(table.clone().select(0, ids1), f32);
    if let Some(d) = dcap {
        own = own * d.clone().gather(1, ids);
        p = p * d;
    }
    (sum, Some(dense(cast(p, dt), table.clone()) - cast(own, dt)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::{Cpu, NdArrayCpu};
    use crate::cpu::lm_head::{nll_grad_host, nll_grad_host_tiled, TableRows};
    use crate::testing::values;

    /// Loss and gradient by the definition, in f64: `nll = lse(z) − z[t]`, `dh = Σ_v (p_v − [v=t]) z'_v E_v`.
    fn reference(
        hidden: &[f32],
        table: &[f32],
        h: usize,
        targets: &[(usize, u32)],
        cap: Option<f64>,
    ) -> (f64, Vec<f64>) {
        let vocab = table.len() / h;
        let mut dh = vec![0f64; hidden.len()];
        let mut total = 0.0;
        for &(r, t) in targets {
            let l: Vec<f64> = (0..vocab)
                .map(|v| (0..h).map(|k| hidden[r * h + k] as f64 * table[v * h + k] as f64).sum::<f64>())
                .collect();
            let z: Vec<f64> = l.iter().map(|&x| cap.map_or(x, |c| c * (x / c).tanh())).collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            total += lse - z[t as usize];
            for v in 0..vocab {
                let d = cap.map_or(1.0, |c| 1.0 - (z[v] / c).powi(2));
                let g = ((z[v] - lse).exp() - if v == t as usize { 1.0 } else { 0.0 }) * d;
                for k in 0..h {
                    dh[r * h + k] += g * table[v * h + k] as f64;
                }
            }
        }
        (total, dh)
    }

    fn check(name: &str, got: (f64, Vec<f32>), want: &(f64, Vec<f64>)) {
        assert!((got.0 - want.0).abs() < 1e-4 * want.0.abs().max(1.0), "{name}: nll {} vs {}", got.0, want.0);
        let scale = want.1.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
        let err = got.1.iter().zip(&want.1).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
        assert!(err < 1e-5 * scale.max(1.0), "{name}: gradient off by {err} (scale {scale})");
    }

    /// Both paths against the definition, with repeated and skipped rows, several chunks, with and without
    /// Gemma 2's softcap.
    #[test]
    fn host_and_generic_paths_match_the_definition() {
        let (n, h, vocab) = (7, 24, 301);
        let hidden = values(n * h, 1, 3.0);
        let table = values(vocab * h, 2, 1.0);
        // Row 3 has no target (skipped): its gradient must stay zero.
        let targets: Vec<(usize, u32)> = vec![(0, 5), (1, 300), (2, 0), (4, 17), (5, 17), (6, 123)];
        for cap in [None, Some(2.0)] {
            let want = reference(&hidden, &table, h, &targets, cap);
            let (nll, dh) = nll_grad_host(&hidden, TableRows::Dense(&table), h, &targets, cap, true);
            check("host", (nll, dh.unwrap()), &want);
            for (rows, tile) in [(4, 64), (1, 128), (6, 301), (100, 1000)] {
                let (nll, dh) =
                    nll_grad_host_tiled(&hidden, TableRows::Dense(&table), h, &targets, cap, true, rows, tile);
                check(&format!("host, {rows} rows x {tile} tile"), (nll, dh.unwrap()), &want);
            }
            let (nll_only, none) = nll_grad_host(&hidden, TableRows::Dense(&table), h, &targets, cap, false);
            assert!(none.is_none() && (nll_only - nll).abs() < 1e-9);
            fn generic<B: Kernels>(
                hidden: &[f32],
                table: &[f32],
                h: usize,
                t: &[(usize, u32)],
                cap: Option<f64>,
            ) -> (f64, Vec<f32>) {
                let d = Default::default();
                let prim = |v: &[f32]| {
                    Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), [v.len() / h, h]), &d)
                        .into_primitive()
                        .tensor()
                };
                let (nll, dh) = nll_grad_generic_chunked::<B>(prim(hidden), prim(table), t, cap, true, 4);
                let nll =
                    Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(nll)).into_data().to_vec::<f32>().unwrap()[0];
                let dh = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(dh.unwrap()))
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap();
                (nll as f64, dh)
            }
            check("generic flex", generic::<Cpu>(&hidden, &table, h, &targets, cap), &want);
            check("generic ndarray", generic::<NdArrayCpu>(&hidden, &table, h, &targets, cap), &want);
        }
    }

    /// In bf16 (hidden states and table bf16, bf16 logits and softmax gradient), the loss and gradient are
    /// the definition's on the bf16 values to within bf16's rounding of the logits (a few 1e-3 of the loss)
    /// and of the gradient (1e-2 of its scale), for every table kind and both kernels' tilings.
    #[test]
    fn bf16_host_path_matches_the_definition_on_bf16_values() {
        use crate::cpu::bf16::{narrow, widen_vec};
        use crate::cpu::lm_head::nll_grad_host_bf16;
        let (n, h, vocab) = (9, 64, 301);
        let hidden = narrow(&values(n * h, 1, 3.0));
        let table = narrow(&values(vocab * h, 2, 1.0));
        let targets: Vec<(usize, u32)> = vec![(0, 5), (1, 300), (2, 0), (4, 17), (5, 17), (6, 123), (8, 64)];
        for cap in [None, Some(2.0)] {
            let want = reference(&widen_vec(&hidden), &widen_vec(&table), h, &targets, cap);
            let widened = widen_vec(&table);
            for rows in [TableRows::DenseBf16(&table), TableRows::Dense(&widened)] {
                let (nll, dh) = nll_grad_host_bf16(&hidden, rows, h, &targets, cap, true);
                let dh = widen_vec(&dh.unwrap());
                assert!((nll - want.0).abs() < 5e-3 * want.0.abs(), "nll {nll} vs {}", want.0);
                let scale = want.1.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
                let err = dh.iter().zip(&want.1).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
                assert!(err < 1e-2 * scale, "gradient off by {err} (scale {scale})");
                // Row 3 and 7 have no target.
                assert!(dh[3 * h..4 * h].iter().chain(&dh[7 * h..8 * h]).all(|&x| x == 0.0));
            }
        }
    }

    /// A packed table (here Q8_0 blocks, as the real 270M file stores its embedding) gives the loss and
    /// gradient of its dequantized rows as a dense table, bit for bit: the same rows, decoded tile by tile.
    #[test]
    fn packed_table_equals_its_dequantized_rows() {
        use crate::quant::ggml::{encode, GgmlType, GgmlWeight};
        use crate::quant::PackedWeight;
        let (n, h, vocab) = (5, 64, 301);
        let hidden = values(n * h, 3, 2.0);
        let bytes = encode::encode(GgmlType::Q8_0, &values(vocab * h, 4, 1.0), h).unwrap();
        let w = PackedWeight::Ggml(GgmlWeight::new(GgmlType::Q8_0, [vocab, h], bytes).unwrap());
        let dense = w.dequantize();
        let targets: Vec<(usize, u32)> = vec![(0, 5), (1, 300), (3, 64), (4, 0)];
        for cap in [None, Some(2.0)] {
            for (rows, tile) in [(2, 64), (100, 1000)] {
                let (a, da) = nll_grad_host_tiled(&hidden, TableRows::Packed(&w), h, &targets, cap, true, rows, tile);
                let (b, db) =
                    nll_grad_host_tiled(&hidden, TableRows::Dense(&dense), h, &targets, cap, true, rows, tile);
                assert_eq!(a.to_bits(), b.to_bits(), "nll, {rows}x{tile}");
                assert_eq!(da, db, "gradient, {rows}x{tile}");
            }
        }
    }
}
