//! Row-wise kernels: LayerNorm, QuickGELU, fused multi-head attention, L2 normalisation.

use crate::gemm::{gemm_seq, pack_rows, pack_rows_as_columns, panel_len, Epilogue};
use crate::par::{Parallel, SyncPtr};
use crate::simd;

/// `out[r] = (x[r] − mean) / sqrt(var + eps) · w + b` for each row of width `d` (biased variance).
pub fn layer_norm(x: &[f32], out: &mut [f32], d: usize, w: &[f32], b: &[f32], eps: f32) {
    #[cfg(target_arch = "x86_64")]
    if simd::isa() != simd::Isa::PORTABLE {
        // SAFETY: AVX2 and FMA detected (every non-portable ISA has them).
        unsafe { layer_norm_avx2(x, out, d, w, b, eps) };
        return;
    }
    layer_norm_rows(x, out, d, w, b, eps);
}

/// [`layer_norm_rows`] compiled for AVX2: the same operations in the same order (the eight
/// partial sums are one 8-lane register), so the same bits, about twice as fast.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn layer_norm_avx2(x: &[f32], out: &mut [f32], d: usize, w: &[f32], b: &[f32], eps: f32) {
    layer_norm_rows(x, out, d, w, b, eps);
}

#[inline(always)]
fn layer_norm_rows(x: &[f32], out: &mut [f32], d: usize, w: &[f32], b: &[f32], eps: f32) {
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        layer_norm_row(xr, or, w, b, eps);
    }
}

/// Mean and 1/sqrt(var + eps) of one row.
#[inline(always)]
fn ln_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let d = x.len() as f32;
    let mean = sum8(x, |v| v) / d;
    let var = sum8(x, |v| (v - mean) * (v - mean)) / d;
    (mean, 1.0 / libm::sqrtf(var + eps))
}

/// Layer norm of each `w.len()`-wide row of `x`, in place.
pub fn layer_norm_in_place(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let (mean, inv) = ln_stats(x, eps);
    for ((v, &w), &b) in x.iter_mut().zip(w).zip(b) {
        *v = (*v - mean) * inv * w + b;
    }
}

/// Layer norm of one row into `out`.
#[inline(always)]
pub fn layer_norm_row(x: &[f32], out: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let (mean, inv) = ln_stats(x, eps);
    for (((o, &v), &w), &b) in out.iter_mut().zip(x).zip(w).zip(b) {
        *o = (v - mean) * inv * w + b;
    }
}

/// `Σ f(x[i])` with 8 interleaved partial sums (`x[i]` into sum `i % 8`; vectorisable, and more
/// accurate than one running sum).
#[inline(always)]
fn sum8(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let c = x.chunks_exact(8);
    let tail = c.remainder();
    for ch in c {
        for j in 0..8 {
            acc[j] += f(ch[j]);
        }
    }
    for (j, &v) in tail.iter().enumerate() {
        acc[j] += f(v);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// Per-thread scratch floats [`attention`] needs for sequences of `t` rows and head width `hd`:
/// the score matrix `[t, t]`, `Kᵀ` packed as GEMM panels, and `V` packed as panels.
pub fn attention_scratch_len(t: usize, hd: usize) -> usize {
    t * t + panel_len(hd, t) + panel_len(t, hd)
}

/// The softmax probabilities `P = softmax(Q·Kᵀ / √hd)` of head `h` of one sequence for the query
/// rows `q.start..q.end`, into `p` (`[q.len(), t]`; `causal`: query i sees keys 0..=i, the rest
/// of its row is zero). `rows` is the sequence's fused qkv `[t, 3d]`; `kbuf` holds the packed
/// `Kᵀ`. The forward (all rows, or the rows a tower's pooling reads) and the backward
/// ([`crate::train::attention_backward`]) compute P with this one function.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_probs(
    isa: simd::Isa,
    rows: &[f32],
    d: usize,
    h: usize,
    hd: usize,
    t: usize,
    causal: bool,
    q: core::ops::Range<usize>,
    kbuf: &mut [f32],
    p: &mut [f32],
) {
    let scale = 1.0 / libm::sqrtf(hd as f32);
    let kt = pack_rows_as_columns(kbuf, hd, t, |j| &rows[j * 3 * d + d + h * hd..]);
    // SAFETY: `p` holds [q.len(), t] floats.
    unsafe {
        gemm_seq(
            isa,
            &rows[q.start * 3 * d + h * hd..],
            3 * d,
            q.len(),
            kt,
            p.as_mut_ptr(),
            t,
            Epilogue::store(None),
        )
    };
    for (i, row) in q.zip(p.chunks_exact_mut(t)) {
        let lim = if causal { i + 1 } else { t };
        let mx = simd::max(&row[..lim]);
        let sum = simd::exp_scaled_sum(isa, &mut row[..lim], scale, mx * scale);
        let inv = 1.0 / sum;
        row[..lim].iter_mut().for_each(|x| *x *= inv);
        row[lim..].fill(0.0);
    }
}

/// Multi-head attention on a fused `qkv [batch·t, 3d]` buffer (q | k | v per row), writing
/// `out [batch·t, d]`. One (sequence, head) pair per work item, as three steps on the GEMM
/// kernels: `S = Q·Kᵀ` (`[t, t]`), a softmax per row of `S·scale` (`causal`: query i sees keys
/// 0..=i, the rest of the row is zero), then `out = P·V`. `scratch` holds
/// `threads · attention_scratch_len(t, d / heads)` floats.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    par: &Parallel,
    qkv: &[f32],
    out: &mut [f32],
    batch: usize,
    t: usize,
    d: usize,
    heads: usize,
    causal: bool,
    scratch: &mut [f32],
) {
    attention_rows(par, qkv, out, batch, t, d, heads, causal, 0..t, scratch)
}

/// [`attention`] for the query rows `q` of each sequence only (every key and value still
/// counts): `out [batch·q.len(), d]`, sequence by sequence. A tower's last layer needs no more
/// than the rows its pooling reads (the class token, one row in 197).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_rows(
    par: &Parallel,
    qkv: &[f32],
    out: &mut [f32],
    batch: usize,
    t: usize,
    d: usize,
    heads: usize,
    causal: bool,
    q: core::ops::Range<usize>,
    scratch: &mut [f32],
) {
    let (hd, nq) = (d / heads, q.len());
    let per = attention_scratch_len(t, hd);
    assert!(q.end <= t, "attention query rows");
    assert!(qkv.len() >= batch * t * 3 * d && out.len() >= batch * nq * d);
    assert!(scratch.len() >= par.threads() * per, "attention scratch");
    let isa = simd::isa();
    let op = SyncPtr(out.as_mut_ptr());
    let sp = SyncPtr(scratch.as_mut_ptr());
    // One (sequence, head) per unit, to whichever thread is free.
    par.run_units(batch * heads, &|tid, unit| {
        // SAFETY: each thread owns its scratch slice, and each unit its (sequence, head)
        // block of `out`; the blocks are disjoint.
        let sc = unsafe { core::slice::from_raw_parts_mut(sp.get().add(tid * per), per) };
        let (s, rest) = sc.split_at_mut(t * t);
        let (kbuf, vbuf) = rest.split_at_mut(panel_len(hd, t));
        let (bi, h) = (unit / heads, unit % heads);
        let rows = &qkv[bi * t * 3 * d..(bi + 1) * t * 3 * d];
        attention_probs(isa, rows, d, h, hd, t, causal, q.clone(), kbuf, s);
        let vp = pack_rows(vbuf, t, hd, |kk| &rows[kk * 3 * d + 2 * d + h * hd..]);
        // SAFETY: rows bi·nq.. of `out`, columns h·hd..(h+1)·hd belong to this unit alone.
        unsafe {
            let o = op.get().add(bi * nq * d + h * hd);
            gemm_seq(isa, s, t, nq, vp, o, d, Epilogue::store(None))
        };
    });
}

/// Scales `v` to unit L2 norm (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let n = libm::sqrtf(v.iter().map(|x| x * x).sum::<f32>());
    if n > 0.0 {
        for x in v.iter_mut() {
            *x /= n;
        }
    }
}

/// Numerically stable softmax in place.
pub fn softmax(v: &mut [f32]) {
    let mx = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0.0;
    for x in v.iter_mut() {
        *x = libm::expf(*x - mx);
        s += *x;
    }
    for x in v.iter_mut() {
        *x /= s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::Rng;
    use alloc::vec;
    use alloc::vec::Vec;

    #[test]
    fn layer_norm_hand_case() {
        // x = [1, 2, 3, 4]: mean 2.5, var 1.25.
        let mut o = [0.0; 4];
        layer_norm(
            &[1.0, 2.0, 3.0, 4.0],
            &mut o,
            4,
            &[1.0, 2.0, 1.0, 1.0],
            &[0.0, 0.0, 0.0, 1.0],
            1e-5,
        );
        let s = 1.0 / (1.25f64 + 1e-5).sqrt();
        let want = [-1.5 * s, -0.5 * s * 2.0, 0.5 * s, 1.5 * s + 1.0];
        for (a, b) in o.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6);
        }
    }

    /// Naive attention in f64 as the independent check.
    fn naive(qkv: &[f32], b: usize, t: usize, d: usize, h: usize, causal: bool) -> Vec<f32> {
        let hd = d / h;
        let mut out = vec![0.0f32; b * t * d];
        for bi in 0..b {
            for hh in 0..h {
                for i in 0..t {
                    let lim = if causal { i + 1 } else { t };
                    let q = |c: usize| qkv[(bi * t + i) * 3 * d + hh * hd + c] as f64;
                    let s: Vec<f64> = (0..lim)
                        .map(|j| {
                            (0..hd)
                                .map(|c| q(c) * qkv[(bi * t + j) * 3 * d + d + hh * hd + c] as f64)
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let mx = s.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..hd {
                        let v: f64 = (0..lim)
                            .map(|j| {
                                e[j] / z * qkv[(bi * t + j) * 3 * d + 2 * d + hh * hd + c] as f64
                            })
                            .sum();
                        out[(bi * t + i) * d + hh * hd + c] = v as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_naive() {
        let mut r = Rng::new(9);
        for &(b, t, d, h, causal) in &[
            (1, 1, 16, 2, true),
            (2, 9, 24, 3, false),
            (3, 13, 64, 2, true),
        ] {
            let qkv: Vec<f32> = (0..b * t * 3 * d).map(|_| r.uniform(2.0)).collect();
            let par = Parallel::sequential();
            let mut out = vec![0.0; b * t * d];
            let mut sc = vec![0.0; attention_scratch_len(t, d / h)];
            attention(&par, &qkv, &mut out, b, t, d, h, causal, &mut sc);
            let want = naive(&qkv, b, t, d, h, causal);
            for (x, y) in out.iter().zip(&want) {
                assert!((x - y).abs() < 1e-5, "{x} vs {y}");
            }
            // Some query rows only (a tower's last layer): those rows of the naive result.
            for q in [0..1, t / 2..t, t - 1..t] {
                let nq = q.len();
                let mut rows = vec![f32::NAN; b * nq * d];
                attention_rows(
                    &par,
                    &qkv,
                    &mut rows,
                    b,
                    t,
                    d,
                    h,
                    causal,
                    q.clone(),
                    &mut sc,
                );
                for bi in 0..b {
                    for (i, qi) in q.clone().enumerate() {
                        let got = &rows[(bi * nq + i) * d..][..d];
                        let want = &want[(bi * t + qi) * d..][..d];
                        for (x, y) in got.iter().zip(want) {
                            assert!((x - y).abs() < 1e-5, "rows {q:?}: {x} vs {y}");
                        }
                    }
                }
            }
        }
    }
}
