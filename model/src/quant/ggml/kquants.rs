//! ggml's k-quant encoders (Q2_K…Q6_K, super-blocks of 256), ported from `quantize_row_q*_K_ref` and their
//! helpers in ggml-quants.c: what `llama-quantize` runs without an importance matrix. Byte-identical to it:
//! every product and sum is an f32 operation in the C source's order, and none is fused — libggml-base, where
//! these functions live, is built for baseline x86-64 even with GGML_NATIVE=ON (only ggml-cpu gets
//! -march=native), and its disassembly holds no FMA instruction, so `a*b + c` rounds twice there as here.
use half::f16;

pub(crate) const QK_K: usize = 256;
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round to nearest, ties to even, by adding 1.5·2²³ and reading the mantissa (exact for
/// |x| ≤ 2²² − 1; ggml only asserts that in debug builds, and this does what its release build does beyond).
#[inline(always)]
fn nearest_int(f: f32) -> i32 {
    let val = f + 12582912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

#[inline(always)]
fn f16_round(x: f32) -> (f32, [u8; 2]) {
    let h = f16::from_f32(x);
    (h.to_f32(), h.to_le_bytes())
}

/// The value of largest magnitude (the first of equals, as ggml's loop keeps it), or `None` when every value is
/// below ggml's `GROUP_MAX_EPS` (the block is stored as zeros).
fn signed_max(x: &[f32]) -> Option<f32> {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (amax >= GROUP_MAX_EPS).then_some(max)
}

/// `make_qx_quants` with `rmse_type = 1` and no importance weights (the only use: Q6_K): signed levels
/// `L[i] ∈ [0, 2·nmax)` and the scale, searched over 19 candidate inverse scales weighted by x².
fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let Some(max) = signed_max(x) else {
        l_out.fill(0);
        return 0.0;
    };
    let nmaxf = nmax as f32;
    let mut iscale = -nmaxf / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (i, &xi) in x.iter().enumerate() {
        let l = nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let w = xi * xi;
        let lf = l as f32;
        sumlx += w * xi * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmaxf + 0.1f32 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &xi in x {
            let l = nearest_int(iscale * xi).clamp(-nmax, nmax - 1) as f32;
            let w = xi * xi;
            sumlx += w * xi * l;
            suml2 += w * l * l;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &xi) in x.iter().enumerate() {
                l_out[i] = (nmax + nearest_int(iscale * xi).clamp(-nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `make_q3_quants(n, nmax, x, L, do_rmse = true)`: signed levels refined one element at a time (5 passes).
fn make_q3_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let Some(max) = signed_max(x) else {
        l_out.fill(0);
        return 0.0;
    };
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (i, &xi) in x.iter().enumerate() {
        let l = nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
        l_out[i] = l as i8;
        let w = xi * xi;
        sumlx += w * xi * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (i, &xi) in x.iter().enumerate() {
            let w = xi * xi;
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * xi * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(xi * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l_out[i] as i32 {
                    let nl = new_l as f32;
                    slx += w * xi * nl;
                    sl2 += w * nl * nl;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for l in l_out.iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// `make_qkx2_quants`: unsigned levels `L ∈ [0, nmax]` with a scale and a min (returned as `(scale, -min)`),
/// the weighted least-squares fit tried over `nstep + 1` inverse scales. `MAD`: absolute rather than squared
/// errors. Sized by `N` so that the element loops compile without bounds checks (the sums stay sequential: the
/// C code's order of f32 additions is the result).
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants<const N: usize, const MAD: bool>(
    nmax: i32,
    x: &[f32; N],
    weights: &[f32; N],
    l_out: &mut [u8; N],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let err = |d: f32| if MAD { d.abs() } else { d * d };
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for (&xi, &w) in x.iter().zip(weights).skip(1) {
        if xi < min {
            min = xi;
        }
        if xi > max {
            max = xi;
        }
        sum_w += w;
        sum_x += w * xi;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.fill(0);
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for ((l, &xi), &w) in l_out.iter_mut().zip(x).zip(weights) {
        *l = nearest_int(iscale * (xi - min)).clamp(0, nmax) as u8;
        best_error += w * err(scale * *l as f32 + min - xi);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let mut laux = [0u8; N];
    for is in 0..=nstep {
        let iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for ((la, &xi), &w) in laux.iter_mut().zip(x).zip(weights) {
            let l = nearest_int(iscale * (xi - min)).clamp(0, nmax);
            *la = l as u8;
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * xi;
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for ((&la, &xi), &w) in laux.iter().zip(x).zip(weights) {
                cur_error += w * err(this_scale * la as f32 + this_min - xi);
            }
            if cur_error < best_error {
                *l_out = laux;
                best_error = cur_error;
                scale = this_scale;
                // ggml moves the min the next candidates are measured from, too.
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Q4_K/Q5_K's 6-bit scales and mins of the 8 sub-blocks (`get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Packs 2-bit levels as Q2_K/Q3_K store them: byte `j/4 + l` of each 128 holds elements l, l+32, l+64, l+96.
fn pack_2bit(l: &[u8], qs: &mut [u8]) {
    for j in (0..QK_K).step_by(128) {
        for k in 0..32 {
            qs[j / 4 + k] = l[j + k] | (l[j + k + 32] << 2) | (l[j + k + 64] << 4) | (l[j + k + 96] << 6);
        }
    }
}

/// `quantize_row_q2_K_ref` for one super-block: `scales[16] (4-bit scale | 4-bit min << 4), qs[64], d, dmin`.
pub(crate) fn q2_k(x: &[f32], y: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut weights = [0f32; 16];
    let mut mins = [0f32; 16];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..16 {
        let xs: &[f32; 16] = x[16 * j..16 * j + 16].try_into().unwrap();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = v.abs();
        }
        let lj: &mut [u8; 16] = (&mut l[16 * j..16 * j + 16]).try_into().unwrap();
        (scales[j], mins[j]) = make_qkx2_quants::<16, true>(3, xs, &weights, lj, -0.5, 0.1, 15);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let (sb, rest) = y.split_at_mut(16);
    let (qs, dd) = rest.split_at_mut(64);
    let d = if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for j in 0..16 {
            sb[j] = nearest_int(iscale * scales[j]) as u8;
        }
        f16_round(max_scale / 15.0)
    } else {
        sb.fill(0);
        f16_round(0.0)
    };
    let dmin = if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for j in 0..16 {
            sb[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
        }
        f16_round(max_min / 15.0)
    } else {
        f16_round(0.0)
    };
    for j in 0..16 {
        let dj = d.0 * (sb[j] & 0xF) as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin.0 * (sb[j] >> 4) as f32;
        for ii in 0..16 {
            l[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / dj).clamp(0, 3) as u8;
        }
    }
    pack_2bit(&l, qs);
    dd[0..2].copy_from_slice(&d.1);
    dd[2..4].copy_from_slice(&dmin.1);
}

/// `quantize_row_q3_K_ref` for one super-block: `hmask[32], qs[64], scales[12] (6-bit, signed + 32), d`.
pub(crate) fn q3_k(x: &[f32], y: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut amax) = (0f32, 0f32);
    for j in 0..16 {
        scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
        let s = scales[j].abs();
        if s > amax {
            amax = s;
            max_scale = scales[j];
        }
    }
    let (hmask, rest) = y.split_at_mut(32);
    let (qs, rest) = rest.split_at_mut(64);
    let (sb, dd) = rest.split_at_mut(12);
    sb.fill(0);
    let d = if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for j in 0..16 {
            // C stores nearest_int's result in an int8_t (wrapping), then clamps and offsets it.
            let mut lj = (nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32;
            if j < 8 {
                sb[j] = (lj & 0xF) as u8;
            } else {
                sb[j - 8] |= ((lj & 0xF) << 4) as u8;
            }
            lj >>= 4;
            sb[j % 4 + 8] |= (lj << (2 * (j / 4))) as u8;
        }
        f16_round(1.0 / iscale)
    } else {
        f16_round(0.0)
    };
    for j in 0..16 {
        let lo = if j < 8 { sb[j] & 0xF } else { sb[j - 8] >> 4 } as i8;
        let sc = (lo | ((((sb[8 + j % 4] >> (2 * (j / 4))) & 3) << 4) as i8)) - 32;
        let dj = d.0 * sc as f32;
        if dj == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / dj).clamp(-4, 3) + 4) as i8;
        }
    }
    hmask.fill(0);
    let (mut m, mut hm) = (0usize, 1u8);
    let mut lu = [0u8; QK_K];
    for j in 0..QK_K {
        let mut v = l[j];
        if v > 3 {
            hmask[m] |= hm;
            v -= 4;
        }
        lu[j] = v as u8;
        m += 1;
        if m == QK_K / 8 {
            m = 0;
            hm <<= 1;
        }
    }
    pack_2bit(&lu, qs);
    dd.copy_from_slice(&d.1);
}

/// What Q4_K and Q5_K share: per 32-element sub-block, weights `sqrt(mean x²) + |x|`, a `make_qkx2_quants`
/// fit, the 6-bit scales/mins packed in 12 bytes, and the final levels against the rounded scales.
/// Writes `d, dmin, scales[12]` into `head` and returns the levels.
fn qkx_super_block(x: &[f32], head: &mut [u8], nmax: i32, rmin: f32, nstep: i32) -> [u8; QK_K] {
    let mut l = [0u8; QK_K];
    let mut weights = [0f32; 32];
    let mut mins = [0f32; 8];
    let mut scales = [0f32; 8];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs: &[f32; 32] = x[32 * j..32 * j + 32].try_into().unwrap();
        let mut sum_x2 = 0f32;
        for v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let lj: &mut [u8; 32] = (&mut l[32 * j..32 * j + 32]).try_into().unwrap();
        (scales[j], mins[j]) = make_qkx2_quants::<32, false>(nmax, xs, &weights, lj, rmin, 0.1, nstep);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let sb = &mut head[4..16];
    for j in 0..8 {
        // uint8_t in C: the int wraps to a byte before the clamp to 63.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sb[j] = ls;
            sb[j + 4] = lm;
        } else {
            sb[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            sb[j - 4] |= (ls >> 4) << 6;
            sb[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16_round(max_scale / 63.0);
    let dmin = f16_round(max_min / 63.0);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, sb);
        let dj = d.0 * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin.0 * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / dj).clamp(0, nmax) as u8;
        }
    }
    head[0..2].copy_from_slice(&d.1);
    head[2..4].copy_from_slice(&dmin.1);
    l
}

/// `quantize_row_q4_K_ref` for one super-block: `d, dmin, scales[12], qs[128]`.
pub(crate) fn q4_k(x: &[f32], y: &mut [u8]) {
    let (head, q) = y.split_at_mut(16);
    let l = qkx_super_block(x, head, 15, -1.0, 20);
    for (n, j) in (0..QK_K).step_by(64).enumerate() {
        for k in 0..32 {
            q[32 * n + k] = l[j + k] | (l[j + k + 32] << 4);
        }
    }
}

/// `quantize_row_q5_K_ref` for one super-block: `d, dmin, scales[12], qh[32], qs[128]`.
pub(crate) fn q5_k(x: &[f32], y: &mut [u8]) {
    let (head, rest) = y.split_at_mut(16);
    let l = qkx_super_block(x, head, 31, -0.5, 15);
    let (qh, ql) = rest.split_at_mut(32);
    qh.fill(0);
    let (mut m1, mut m2) = (1u8, 2u8);
    for (n, j0) in (0..QK_K).step_by(64).enumerate() {
        for j in 0..32 {
            let mut l1 = l[j0 + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = l[j0 + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            ql[32 * n + j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
}

/// `quantize_row_q6_K_ref` for one super-block: `ql[128], qh[64], scales[16] (i8), d`.
pub(crate) fn q6_k(x: &[f32], y: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for ib in 0..16 {
        let scale = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
        scales[ib] = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y.fill(0);
        return;
    }
    let (ql, rest) = y.split_at_mut(128);
    let (qh, rest) = rest.split_at_mut(64);
    let (sc, dd) = rest.split_at_mut(16);
    let iscale = -128.0 / max_scale;
    let d = f16_round(1.0 / iscale);
    for ib in 0..16 {
        sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    for j in 0..16 {
        let dj = d.0 * (sc[j] as i8) as f32;
        if dj == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / dj).clamp(-32, 31) + 32) as i8;
        }
    }
    let l = l.map(|v| v as u8);
    for (n, j) in (0..QK_K).step_by(128).enumerate() {
        let (ql, qh) = (&mut ql[64 * n..64 * n + 64], &mut qh[32 * n..32 * n + 32]);
        for k in 0..32 {
            let (a, b, c, e) = (l[j + k], l[j + k + 32], l[j + k + 64], l[j + k + 96]);
            ql[k] = (a & 0xF) | ((c & 0xF) << 4);
            ql[k + 32] = (b & 0xF) | ((e & 0xF) << 4);
            qh[k] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
        }
    }
    dd.copy_from_slice(&d.1);
}
