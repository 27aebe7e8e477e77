//! Attention on the CubeCL backends (`GemmaBackend::attend_lse` / `attend_backward`): the products (two
//! forward, five backward) by the runtime's vendor library (cuBLAS on CUDA) on the grouped layout of
//! `crate::ops::attention`, and everything between them one kernel each, with the mask computed inside
//! from positions and segments.
//!
//! The Burn-op version (`crate::ops::attention::forward_generic`) builds the `[batch, 1, seq, keys]` additive bias
//! on the host and uploads it every call, then runs ~8 kernels over the `[batch, heads, seq, keys]` scores
//! forward and ~15 backward, each reading and writing all of them. Here:
//! - forward: `S = q·kᵀ` (one batched product, f32 out), then [`softmax_rows`] — one cube per row of `S`:
//!   scaling, softcap, mask, max, sum, written back in place as the probabilities `P`, and the row's
//!   log-sum-exp — then `out = P·v`;
//! - backward: `S` again and `dP = dout·vᵀ`, then [`softmax_backward`], elementwise: `P = exp(z − lse)`
//!   from the saved log-sum-exp, `dS = P·(dP − Σ dout·out)·cap'·scaling`, both in place; then
//!   `dv = Pᵀ·dout`, `dq = dS·k`, `dk = dSᵀ·q`.
//!
//! Chunks. Both passes go by chunks of query positions ([`query_chunk`]: about 8192 score rows), each
//! multiplied only by the keys its queries can see (`AttnMask::key_range`: causal, sliding window,
//! segments). So the scores in memory are one chunk's (once forward, twice backward; at Gemma 2B 4096 x 1
//! bf16, 0.4 GiB in the backward instead of 1.5), nothing of that size outlives the call, causal attention
//! skips 3/8 of the products' work in four chunks (Gemma 2B at 1024 x 4 to 4096 x 1; 1/4 in two at
//! 512 x 8; Gemma 3's 512-token windows most of it), and the host builds nothing per key. A row that sees
//! no key at all (never in self-attention: a query sees itself) gets uniform weights over its chunk's keys.
//!
//! Dtypes. The products take the inputs' dtype (bf16 with `--dtype bf16`: tensor cores; f32 products would
//! be ~15× slower on a Hopper GPU, and at 4096 tokens attention is ~10 TFLOP a Gemma-2B step). `S` and `dP`
//! come out of the product as its f32 accumulator, the kernels work in f32 (as the Burn-op version and
//! transformers' softmax), and `P` and `dS` are rounded to the inputs' dtype for the products after them,
//! as FlashAttention and PyTorch's bf16 sdpa do. In f32 nothing is rounded. `dk` and `dv` of several chunks
//! are summed in f32 and rounded once. A masked score is `z + MASKED` (`crate::mask`), as the
//! additive bias makes it, so a row that sees no key gets uniform weights rather than NaN.
use std::ops::Range;
use std::sync::Arc;

use burn::tensor::{DType, Int, Tensor, TensorData};
use burn_cubecl::element::BoolElement;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl::prelude::*;

use super::gemm::{product_as, Gemm};
use super::launch::{arg, cube_row, reduce, row_grid, softcap, ROW_UNITS};
use crate::dtype::{cast, cast_prim};
use crate::mask::{AttnMask, MASKED};
use crate::ops::attention::{dims, prim, t4, AttnSpec};
use crate::ops::kernels::dense;

/// Where a row of one chunk's grouped scores `[b, kvh, rep·c, n]` sits (`c` queries from `q0` of the `s` per
/// batch row): its query (`b·s + q0 + i`) and, since the rows of one batch are head-major
/// (`(kv·rep + r)·c + i`), its `[b, s, h]` log-sum-exp slot.
#[cube]
fn row_query(row: usize, heads: usize, c: usize, s: usize, q0: usize) -> (usize, usize) {
    let bi = row / (heads * c);
    let head = (row % (heads * c)) / c;
    let qi = bi * s + q0 + row % c;
    (qi, qi * heads + head)
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

/// Where one chunk's scores sit in the whole call: `n` keys from `k0` of the `t` per batch row, `c` queries
/// from `q0` of the `s`, and the query heads.
#[derive(CubeLaunch, CubeType)]
struct Geometry {
    n: u32,
    t: u32,
    c: u32,
    q0: u32,
    s: u32,
    k0: u32,
    heads: u32,
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

/// One cube per row of `scores` (`rows × n`, row-major; `launch::row_grid`): the row becomes its softmax,
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
    geom: Geometry,
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
    let (t, unit, step) = (geom.n as usize, UNIT_POS_X as usize, units as usize);
    let (qi, slot) = row_query(row, geom.heads as usize, geom.c as usize, geom.s as usize, geom.q0 as usize);
    let kbase = (qi / geom.s as usize) * geom.t as usize + geom.k0 as usize;
    let base = row * t;
    let mut shared = SharedMemory::<f32>::new(units as usize);

    // z in place, and this unit's max.
    let mut m = f32::new(-3.0e38);
    let mut j = unit;
    while j < t {
        let seen = visible(qpos, kpos, qseg, kseg, qi, kbase + j, window, segmented);
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

/// Elementwise over one chunk's grouped `[b, kvh, rep·c, n]`: `scores` (raw `q·kᵀ`) becomes `P`, `dp`
/// (`dout·vᵀ`) becomes `dS` (with respect to the raw products).
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
    geom: Geometry,
    scaling: f32,
    cap: f32,
    window: i32,
    segmented: u32,
) {
    let idx = ABSOLUTE_POS;
    if idx >= scores.len() {
        terminate!();
    }
    let n = geom.n as usize;
    let (row, j) = (idx / n, idx % n);
    let (qi, slot) = row_query(row, geom.heads as usize, geom.c as usize, geom.s as usize, geom.q0 as usize);
    let kbase = (qi / geom.s as usize) * geom.t as usize + geom.k0 as usize;
    let seen = visible(qpos, kpos, qseg, kseg, qi, kbase + j, window, segmented);
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
type T4<R, BT> = Tensor<Cube<R, BT>, 4>;

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

/// Query rows (`batch · heads · queries`) that one chunk's scores aim at; [`query_chunk`].
const CHUNK_ROWS: usize = 8192;
/// The fewest query positions per chunk: smaller products than this cost more in launches than they save.
const MIN_CHUNK: usize = 256;

thread_local! {
    static CHUNK_OVERRIDE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with every attention call on this thread split into chunks of `chunk` query positions instead
/// of [`query_chunk`]'s: for tests, to reach several chunks on small shapes.
pub fn with_query_chunk<T>(chunk: usize, f: impl FnOnce() -> T) -> T {
    let before = CHUNK_OVERRIDE.with(|c| c.replace(Some(chunk.max(1))));
    let out = f();
    CHUNK_OVERRIDE.with(|c| c.set(before));
    out
}

/// Query positions per chunk for `b` rows of `s` queries and `h` heads: about [`CHUNK_ROWS`] score rows (at
/// least [`MIN_CHUNK`] positions), the whole call when that covers it. Gemma 2B (8 heads) at 1024 x 4,
/// 2048 x 2 and 4096 x 1 gets four chunks, the scores a quarter of the whole, and causal masking skips
/// 3/8 of the products' work (a sliding window more).
fn query_chunk(b: usize, h: usize, s: usize) -> usize {
    let chunk = CHUNK_OVERRIDE.with(|c| c.get()).unwrap_or_else(|| (CHUNK_ROWS / (b * h).max(1)).max(MIN_CHUNK));
    chunk.min(s).max(1)
}

/// The call's chunks: query positions `q0..q0 + c` and the keys they see (`AttnMask::key_range`; all the
/// keys when they see none, so such rows get the whole call's uniform weights as before).
fn chunks(spec: &AttnSpec, b: usize, h: usize, s: usize, t: usize) -> Vec<(Range<usize>, Range<usize>)> {
    let step = query_chunk(b, h, s);
    (0..s)
        .step_by(step)
        .map(|q0| {
            let qs = q0..(q0 + step).min(s);
            let ks = spec.mask.key_range(qs.clone());
            (qs, if ks.is_empty() { 0..t } else { ks })
        })
        .collect()
}

/// The grouped rows `[b, kvh, rep·c, d]` of query positions `qs` of a `[b, s, h, d]` tensor.
fn group_rows<R: Gemm, BT: BoolElement>(x: &T4<R, BT>, qs: &Range<usize>, kvh: usize) -> T4<R, BT> {
    let [b, _, h, d] = x.dims();
    x.clone().slice([0..b, qs.clone()]).swap_dims(1, 2).reshape([b, kvh, h / kvh * qs.len(), d])
}

/// Keys (or values) `ks` of a `[b, t, kvh, d]` tensor as `[b, kvh, n, d]`.
fn key_rows<R: Gemm, BT: BoolElement>(x: &T4<R, BT>, ks: &Range<usize>) -> T4<R, BT> {
    let b = x.dims()[0];
    x.clone().slice([0..b, ks.clone()]).swap_dims(1, 2)
}

/// The chunks' `[b, c, h, d]` results as one `[b, s, h, d]` (no copy for a single chunk).
fn along_queries<R: Gemm, BT: BoolElement>(mut parts: Vec<T4<R, BT>>) -> T4<R, BT> {
    if parts.len() == 1 {
        parts.pop().expect("one part")
    } else {
        Tensor::cat(parts, 1)
    }
}

/// The kernels' geometry for chunk `(qs, ks)` of a call shaped `(b, s, t, h)`.
fn geometry<R: Gemm>((qs, ks): &(Range<usize>, Range<usize>), s: usize, t: usize, h: usize) -> GeometryLaunch<R> {
    let u = |x: usize| x as u32;
    GeometryLaunch::new(u(ks.len()), u(t), u(qs.len()), u(qs.start), u(s), u(ks.start), u(h))
}

/// `(out [b, s, h, d], lse [b, s, h] f32)`; `out` in `q`'s dtype. By chunks of query positions (each with
/// the keys its queries see), so the scores in memory at once are one chunk's.
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
    let lse = Tensor::<Cube<R, BT>, 3>::empty([b, s, h], &device).into_primitive().tensor();
    let mask = DeviceMask::<R>::of::<BT>(&spec.mask, &device);
    let (scaling, cap) = scalars(spec);
    let mut outs = Vec::new();
    for chunk in chunks(spec, b, h, s, t) {
        let (qs, ks) = &chunk;
        let scores =
            owned(product_as::<R, BT>(prim(group_rows(&q, qs, kvh)), prim(key_rows(&k, ks)), true, DType::F32));
        let rows = b * h * qs.len();
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
            geometry(&chunk, s, t, h),
            scaling,
            cap,
            mask.window,
            mask.segmented,
            ROW_UNITS,
        );
        let p = cast(t4::<Cube<R, BT>>(scores), dt);
        outs.push(dense(p, key_rows(&v, ks)).reshape([b, h, qs.len(), d]).swap_dims(1, 2));
    }
    (prim(along_queries(outs)), lse)
}

/// `(dq, dk, dv)` in the inputs' dtypes, by the forward's chunks: each chunk's `dq` is whole, its `dk` and
/// `dv` (products with f32 results) are summed over the chunks in f32, then rounded once.
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
    let mask = DeviceMask::<R>::of::<BT>(&spec.mask, &device);
    let (scaling, cap) = scalars(spec);
    let plan = chunks(spec, b, h, s, t);
    // One chunk with every key: its dk and dv are whole, in the inputs' dtype; else f32 partial sums.
    let whole = plan.len() == 1 && plan[0].1 == (0..t);
    let part_dtype = if whole { dt } else { DType::F32 };
    // `[b, kvh, t, d]` dk and dv: whole, or summed over the chunks.
    let mut grads: Option<(T4<R, BT>, T4<R, BT>)> = None;
    let mut dqs = Vec::new();
    for chunk in &plan {
        let (qs, ks) = chunk;
        let (qg, dog) = (group_rows(&q, qs, kvh), group_rows(&dout, qs, kvh));
        let (kc, vc) = (key_rows(&k, ks), key_rows(&v, ks));
        let og = group_rows(&out, qs, kvh);
        let dsum = into_contiguous(prim((cast(dog.clone(), DType::F32) * cast(og, DType::F32)).sum_dim(3)));
        let scores = owned(product_as::<R, BT>(prim(qg.clone()), prim(kc.clone()), true, DType::F32));
        let dp = owned(product_as::<R, BT>(prim(dog.clone()), prim(vc), true, DType::F32));
        let client = scores.client.clone();
        let (count, dim) = super::launch::elementwise(&client, b * h * qs.len() * ks.len());
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
            geometry(chunk, s, t, h),
            scaling,
            cap,
            mask.window,
            mask.segmented,
        );
        let (p, ds) = (cast(t4::<Cube<R, BT>>(scores), dt), cast(t4::<Cube<R, BT>>(dp), dt));
        let part =
            |a: T4<R, BT>, x: T4<R, BT>| t4::<Cube<R, BT>>(product_as::<R, BT>(prim(a), prim(x), false, part_dtype));
        let (dv_part, dk_part) = (part(p.swap_dims(2, 3), dog), part(ds.clone().swap_dims(2, 3), qg));
        dqs.push(dense(ds, kc).reshape([b, h, qs.len(), d]).swap_dims(1, 2));
        grads = Some(if whole {
            (dk_part, dv_part)
        } else {
            let zeros = || Tensor::<Cube<R, BT>, 4>::zeros([b, kvh, t, d], (&device, DType::F32));
            let (dk, dv) = grads.take().unwrap_or_else(|| (zeros(), zeros()));
            let at = [0..b, 0..kvh, ks.clone(), 0..d];
            // The sum is made before the accumulator is written, so `slice_assign` finds it unshared.
            let add = |acc: T4<R, BT>, x| {
                let sum = acc.clone().slice(at.clone()) + x;
                acc.slice_assign(at.clone(), sum)
            };
            (add(dk, dk_part), add(dv, dv_part))
        });
    }
    let (dk, dv) = grads.expect("at least one chunk");
    let back = |x: T4<R, BT>, dt| prim(cast(x.swap_dims(1, 2), dt));
    (prim(cast(along_queries(dqs), dts[0])), back(dk, dts[1]), back(dv, dts[2]))
}
