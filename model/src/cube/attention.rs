//! Attention on the CubeCL backends (`FrozenMatmul::attend_lse` / `attend_backward`): the products (two
//! forward, five backward) by the runtime's vendor library (cuBLAS on CUDA) on the grouped layout of
//! `crate::fused_attention`, and everything between them one kernel each, with the mask computed inside
//! from positions and segments.
//!
//! The Burn-op version (`fused_attention::forward_generic`) builds the `[batch, 1, seq, keys]` additive bias
//! on the host and uploads it every call, then runs ~8 kernels over the `[batch, heads, seq, keys]` scores
//! forward and ~15 backward, each reading and writing all of them. Here:
//! - forward: `S = q·kᵀ` (one batched product, f32 out), then [`softmax_rows`] — one cube per row of `S`:
//!   scaling, softcap, mask, max, sum, written back in place as the probabilities `P`, and the row's
//!   log-sum-exp — then `out = P·v`;
//! - backward: `S` again and `dP = dout·vᵀ`, then [`softmax_backward`], elementwise: `P = exp(z − lse)`
//!   from the saved log-sum-exp, `dS = P·(dP − Σ dout·out)·cap'·scaling`, both in place; then
//!   `dv = Pᵀ·dout`, `dq = dS·k`, `dk = dSᵀ·q`.
//!
//! So the scores of one call exist (once forward, twice backward) but nothing of that size outlives the call,
//! and the host builds nothing per key.
//!
//! Dtypes. The products take the inputs' dtype (bf16 with `--dtype bf16`: tensor cores; f32 products would
//! be ~15× slower on a Hopper GPU, and at 4096 tokens attention is ~10 TFLOP a Gemma-2B step). `S` and `dP`
//! come out of the product as its f32 accumulator, the kernels work in f32 (as the Burn-op version and
//! transformers' softmax), and `P` and `dS` are rounded to the inputs' dtype for the products after them,
//! as FlashAttention and PyTorch's bf16 sdpa do. In f32 nothing is rounded. A masked score is `z + MASKED` (`crate::layers::mask`), as the additive bias makes
//! it, so a row that sees no key gets the Burn-op version's uniform weights rather than NaN.
use std::sync::Arc;

use burn::tensor::{DType, Int, Tensor, TensorData};
use burn_cubecl::element::BoolElement;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl::prelude::*;

use super::launch::{arg, cube_row, reduce, row_grid, softcap, ROW_UNITS};
use super::{product_as, Gemm};
use crate::compute::{cast, cast_prim};
use crate::fused_attention::{dims, prim, t4, AttnSpec};
use crate::layers::mask::{AttnMask, MASKED};
use crate::ops::dense;

/// Where a row of the grouped scores `[b, kvh, rep·s, t]` sits: its query (`b·s + i`) and, since the rows of
/// one batch are head-major (`(kv·rep + r)·s + i`), its `[b, s, h]` log-sum-exp slot.
#[cube]
fn row_query(row: usize, heads: usize, s: usize) -> (usize, usize) {
    let bi = row / (heads * s);
    let i = row % s;
    let head = (row % (heads * s)) / s;
    (bi * s + i, (bi * s + i) * heads + head)
}

/// Whether query `qi` (global index into the query spans) sees key `j` of batch row `bi`: the rule of
/// `AttnMask::visible`. `window == 0`: no sliding window; `segmented == 0`: one segment per row.
#[cube]
#[allow(clippy::too_many_arguments)]
fn visible(
    qpos: &Array<i32>,
    kpos: &Array<i32>,
    qseg: &Array<i32>,
    kseg: &Array<i32>,
    qi: usize,
    kj: usize,
    window: i32,
    segmented: u32,
) -> bool {
    let qp = qpos[qi];
    let kp = kpos[kj];
    let mut ok = kp <= qp;
    if window > 0 {
        ok = ok && qp - kp < window;
    }
    if segmented != 0 {
        ok = ok && qseg[qi] == kseg[kj];
    }
    ok
}

/// `z` of one raw product `q·k`: scaled, softcapped (`cap > 0`), `MASKED` added where not visible; and
/// the softcap's derivative `1 − tanh²` (1 without a cap).
#[cube]
fn score(raw: f32, scaling: f32, cap: f32, seen: bool) -> (f32, f32) {
    let (capped, dcap) = softcap(raw * scaling, cap);
    let mut z = capped;
    if !seen {
        z += MASKED;
    }
    (z, dcap)
}

/// One cube per row of `scores` (`rows × t`, row-major; `launch::row_grid`): the row becomes its softmax,
/// `lse` gets its log-sum-exp.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn softmax_rows(
    scores: &mut Array<f32>,
    lse: &mut Array<f32>,
    qpos: &Array<i32>,
    kpos: &Array<i32>,
    qseg: &Array<i32>,
    kseg: &Array<i32>,
    rows: u32,
    t: u32,
    heads: u32,
    s: u32,
    scaling: f32,
    cap: f32,
    window: i32,
    segmented: u32,
    #[comptime] units: u32,
) {
    let row = cube_row();
    // The whole cube leaves together, before any barrier.
    if row >= rows as usize {
        terminate!();
    }
    let (t, unit, step) = (t as usize, UNIT_POS_X as usize, units as usize);
    let (qi, slot) = row_query(row, heads as usize, s as usize);
    let bi = qi / (s as usize);
    let base = row * t;
    let mut shared = SharedMemory::<f32>::new(units as usize);

    // z in place, and this unit's max.
    let mut m = f32::new(-3.0e38);
    let mut j = unit;
    while j < t {
        let seen = visible(qpos, kpos, qseg, kseg, qi, bi * t + j, window, segmented);
        let (z, _d) = score(scores[base + j], scaling, cap, seen);
        scores[base + j] = z;
        m = m.max(z);
        j += step;
    }
    m = reduce(&mut shared, m, unit, true);

    let mut l = f32::new(0.0);
    let mut j = unit;
    while j < t {
        l += (scores[base + j] - m).exp();
        j += step;
    }
    l = reduce(&mut shared, l, unit, false);

    let mut j = unit;
    while j < t {
        scores[base + j] = (scores[base + j] - m).exp() / l;
        j += step;
    }
    if unit == 0 {
        lse[slot] = m + l.ln();
    }
}

/// Elementwise over the grouped `[b, kvh, rep·s, t]`: `scores` (raw `q·kᵀ`) becomes `P`, `dp` (`dout·vᵀ`)
/// becomes `dS` (with respect to the raw products).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn softmax_backward(
    scores: &mut Array<f32>,
    dp: &mut Array<f32>,
    lse: &Array<f32>,
    dsum: &Array<f32>,
    qpos: &Array<i32>,
    kpos: &Array<i32>,
    qseg: &Array<i32>,
    kseg: &Array<i32>,
    t: u32,
    heads: u32,
    s: u32,
    scaling: f32,
    cap: f32,
    window: i32,
    segmented: u32,
) {
    let idx = ABSOLUTE_POS;
    if idx >= scores.len() {
        terminate!();
    }
    let t = t as usize;
    let (row, j) = (idx / t, idx % t);
    let (qi, slot) = row_query(row, heads as usize, s as usize);
    let bi = qi / (s as usize);
    let seen = visible(qpos, kpos, qseg, kseg, qi, bi * t + j, window, segmented);
    let (z, dcap) = score(scores[idx], scaling, cap, seen);
    let p = (z - lse[slot]).exp();
    scores[idx] = p;
    dp[idx] = p * (dp[idx] - dsum[row]) * dcap * scaling;
}

/// The mask's spans on the device, and the scalars the kernels take.
struct DeviceMask<R: Gemm> {
    device: R::Device,
    qpos: CubeTensor<R>,
    kpos: CubeTensor<R>,
    qseg: CubeTensor<R>,
    kseg: CubeTensor<R>,
    window: i32,
    segmented: u32,
}

impl<R: Gemm> DeviceMask<R> {
    fn upload<BT: BoolElement>(mask: &AttnMask, device: &R::Device) -> Self {
        let ints = |v: Vec<i32>| {
            let n = v.len();
            Tensor::<CubeBackend<R, f32, i32, BT>, 1, Int>::from_data(TensorData::new(v, [n]), device).into_primitive()
        };
        let pos = |p: &[usize]| ints(p.iter().map(|&x| x as i32).collect());
        let seg = |s: &Option<Vec<u32>>| ints(s.as_ref().map_or(vec![0], |s| s.iter().map(|&x| x as i32).collect()));
        let segmented = (mask.q.segments.is_some() && mask.k.segments.is_some()) as u32;
        Self {
            device: device.clone(),
            qpos: pos(&mask.q.positions),
            kpos: pos(&mask.k.positions),
            qseg: seg(&mask.q.segments),
            kseg: seg(&mask.k.segments),
            window: mask.window.map_or(0, |w| w as i32),
            segmented,
        }
    }

    /// The mask's device copy: uploaded by the first call that needs it on `device`, kept with the mask.
    fn of<BT: BoolElement>(mask: &AttnMask, device: &R::Device) -> Arc<Self> {
        match mask.device_copy(|| Self::upload::<BT>(mask, device)) {
            Some(m) if &m.device == device => m,
            _ => Arc::new(Self::upload::<BT>(mask, device)),
        }
    }
}

type Cube<R, BT> = CubeBackend<R, f32, i32, BT>;

/// The spec's scalars as the kernels take them (`cap = 0`: no softcap).
fn scalars(spec: &AttnSpec) -> (f32, f32) {
    (spec.scaling as f32, spec.softcap.unwrap_or(0.0) as f32)
}

/// A fresh contiguous tensor the kernels may write in place.
fn owned<R: Gemm>(t: CubeTensor<R>) -> CubeTensor<R> {
    let t = into_contiguous(t);
    if t.can_mut() {
        t
    } else {
        t.copy()
    }
}

/// `(out [b, s, h, d], lse [b, s, h] f32)`; `out` in `q`'s dtype.
pub fn forward<R: Gemm, BT: BoolElement>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    spec: &AttnSpec,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let dt = q.dtype;
    let [q, k, v] = [q, k, v].map(|x| t4::<Cube<R, BT>>(cast_prim::<Cube<R, BT>>(x, dt)));
    let (b, s, t, h, kvh, d) = dims(&q, &k);
    let device = q.device();
    let qg = q.swap_dims(1, 2).reshape([b, kvh, h / kvh * s, d]);
    let scores = owned(product_as::<R, BT>(prim(qg), prim(k.swap_dims(1, 2)), true, DType::F32));
    let lse = Tensor::<Cube<R, BT>, 3>::empty([b, s, h], &device).into_primitive().tensor();
    let mask = DeviceMask::<R>::of::<BT>(&spec.mask, &device);
    let (scaling, cap) = scalars(spec);
    let rows = b * h * s;
    let client = scores.client.clone();
    softmax_rows::launch::<R>(
        &client,
        row_grid(rows),
        CubeDim::new_1d(ROW_UNITS),
        arg(&scores),
        arg(&lse),
        arg(&mask.qpos),
        arg(&mask.kpos),
        arg(&mask.qseg),
        arg(&mask.kseg),
        rows as u32,
        t as u32,
        h as u32,
        s as u32,
        scaling,
        cap,
        mask.window,
        mask.segmented,
        ROW_UNITS,
    );
    let p = cast(t4::<Cube<R, BT>>(scores), dt);
    let out = dense(p, v.swap_dims(1, 2)).reshape([b, h, s, d]).swap_dims(1, 2);
    (prim(out), lse)
}

/// `(dq, dk, dv)` in the inputs' dtypes.
#[allow(clippy::too_many_arguments)]
pub fn backward<R: Gemm, BT: BoolElement>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    out: CubeTensor<R>,
    lse: CubeTensor<R>,
    dout: CubeTensor<R>,
    spec: &AttnSpec,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let (dts, dt) = ([q.dtype, k.dtype, v.dtype], q.dtype);
    let [q, k, v, out, dout] = [q, k, v, out, dout].map(|x| t4::<Cube<R, BT>>(cast_prim::<Cube<R, BT>>(x, dt)));
    let lse = into_contiguous(cast_prim::<Cube<R, BT>>(lse, DType::F32));
    let (b, s, t, h, kvh, d) = dims(&q, &k);
    let device = q.device();
    let rep_s = h / kvh * s;
    let group = |x: Tensor<Cube<R, BT>, 4>| x.swap_dims(1, 2).reshape([b, kvh, rep_s, d]);
    let (qg, dog) = (group(q), group(dout));
    let (kt, vt) = (k.swap_dims(1, 2), v.swap_dims(1, 2));
    let dsum = into_contiguous(prim((cast(dog.clone(), DType::F32) * cast(group(out), DType::F32)).sum_dim(3)));
    let scores = owned(product_as::<R, BT>(prim(qg.clone()), prim(kt.clone()), true, DType::F32));
    let dp = owned(product_as::<R, BT>(prim(dog.clone()), prim(vt), true, DType::F32));
    let mask = DeviceMask::<R>::of::<BT>(&spec.mask, &device);
    let (scaling, cap) = scalars(spec);
    let n = b * h * s * t;
    let client = scores.client.clone();
    let (count, dim) = super::launch::elementwise(&client, n);
    softmax_backward::launch::<R>(
        &client,
        count,
        dim,
        arg(&scores),
        arg(&dp),
        arg(&lse),
        arg(&dsum),
        arg(&mask.qpos),
        arg(&mask.kpos),
        arg(&mask.qseg),
        arg(&mask.kseg),
        t as u32,
        h as u32,
        s as u32,
        scaling,
        cap,
        mask.window,
        mask.segmented,
    );
    let (p, ds) = (cast(t4::<Cube<R, BT>>(scores), dt), cast(t4::<Cube<R, BT>>(dp), dt));
    let dv = dense(p.swap_dims(2, 3), dog).swap_dims(1, 2);
    let dq = dense(ds.clone(), kt).reshape([b, h, s, d]).swap_dims(1, 2);
    let dk = dense(ds.swap_dims(2, 3), qg).swap_dims(1, 2);
    (prim(cast(dq, dts[0])), prim(cast(dk, dts[1])), prim(cast(dv, dts[2])))
}
