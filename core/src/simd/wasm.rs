//! wasm32 SIMD128 kernels (compiled in when the build enables `simd128`, as the browser build
//! does: a wasm module is validated whole, so there is no run-time choice inside one build).
//!
//! SIMD128 has no fused multiply-add, so these kernels multiply and add in two roundings (the
//! browser package also ships a build with relaxed SIMD, whose `f32x4.relaxed_madd` the GEMM
//! and `exp`'s polynomial use instead: fused where the machine has FMA, the engine's choice, so
//! not bit-exact):
//! - Element-wise math: Cephes' `exp` in its original unfused form (within 2 ulp of a correctly
//!   rounded `expf`, tested in `simd::tests`, in both builds); the tails go through the same
//!   vector code on a padded copy, so a value does not depend on where it falls in the slice.
//!   The relaxed build's fused polynomial made softmax's exp and QuickGELU about a fifth faster
//!   in Node (best of 6 runs of `kernels`: 1.04 → 0.81 ms and 1.26 → 0.97 ms).
//! - f32 GEMM micro-kernel: [`MR`] = 2 rows × 16 columns (4 registers a row), the portable kernel's
//!   products and sums in the same order, so the same bits (without relaxed SIMD).
//!
//! - int8 tile: SIMD128 has no byte dot product, so the operands go to 16 bits once, outside the
//!   inner loop: each weight matrix's panels are widened when it is quantized
//!   ([`widen_q8_panels`]: `[panel][k/2][16][2]` i16, each column's k-pairs side by side) and each
//!   activation row when it is quantized ([`quantize_row`] writes u16). The loop is then loads,
//!   broadcasts and `i32x4.dot_i16x8_s`, each i32 lane one column's whole sum; the epilogue
//!   (scales, bias, accumulation, QuickGELU) runs in registers. Integer sums: exact, so the same
//!   result as every other int8 kernel. Widening inside the loop, as this tile first did, ran at
//!   42 GOP/s in Node on fc1's shape; widened once, 68.
//! - Row maximum ([`max`]) and weight quantization ([`quantize_weight_row`]): there because
//!   `f32::max` on one float is a call under wasm (its `f32.max` keeps NaN, Rust's skips it),
//!   and `roundf` a software routine; both give the portable code's values.
//!
//! The intrinsics on values are safe functions here (the whole build has `simd128`); only the
//! loads and stores through pointers are `unsafe`.
#![allow(clippy::needless_range_loop)] // register arrays indexed in lockstep

use super::{EXP_HI, EXP_LO, LN2_HI, LN2_LO, LOG2E, P};
use crate::gemm::{Act, Epilogue, NR};
use crate::lowp::{Tile, MR as Q8_MR};
use alloc::vec;
use alloc::vec::Vec;
use core::arch::wasm32::*;

/// Rows of the f32 micro-kernel: 8 accumulators + 4 B registers + 1 broadcast fit the 16 vector
/// registers of an x86-64 machine under the engine; more rows spill. Measured in Node 20 on Zen 4
/// (`tools/bench/kernels-wasm.sh`, fc1's shape): 2 rows 33 GFLOP/s, 3 rows 25, 4 rows 19–25,
/// 6 rows 11.
pub(crate) const MR: usize = 2;

/// `a·b + c`: one fused instruction where the build has relaxed SIMD (on engines whose machine
/// has FMA; relaxed SIMD lets the engine choose), else a multiply and an add.
#[inline(always)]
fn madd(a: v128, b: v128, c: v128) -> v128 {
    #[cfg(target_feature = "relaxed-simd")]
    {
        f32x4_relaxed_madd(a, b, c)
    }
    #[cfg(not(target_feature = "relaxed-simd"))]
    {
        f32x4_add(f32x4_mul(a, b), c)
    }
}

/// Cephes' `exp` on 4 lanes, unfused but for the relaxed build's polynomial. A NaN stays NaN
/// ([`clamp_exp`]). The power of two is built from `n` by adding 2²³ + 127 and shifting the
/// float's bits: exact for the whole numbers `n` is, one instruction where
/// `i32x4.trunc_sat_f32x4` costs several under V8.
#[inline(always)]
fn exp4(x: v128) -> v128 {
    exp4n([x], clamp_exp)[0]
}

/// [`exp4`] on `N` vectors at once, each step on all of them before the next: the same
/// operations on each lane, so the same values, but `N` independent chains side by side for the
/// CPU (one chain is ~70 cycles of latency, and an out-of-order core holds only a few of them).
/// `clamp` puts `x` in exp's range: [`clamp_exp`], or for QuickGELU [`clamp_exp_cheap`].
#[inline(always)]
fn exp4n<const N: usize>(x: [v128; N], clamp: impl Fn(v128) -> v128) -> [v128; N] {
    let each = |f: &dyn Fn(usize) -> v128| -> [v128; N] { core::array::from_fn(f) };
    let x = each(&|i| clamp(x[i]));
    let n = each(&|i| {
        f32x4_floor(f32x4_add(
            f32x4_mul(x[i], f32x4_splat(LOG2E)),
            f32x4_splat(0.5),
        ))
    });
    let r = each(&|i| f32x4_sub(x[i], f32x4_mul(n[i], f32x4_splat(LN2_HI))));
    let r = each(&|i| f32x4_sub(r[i], f32x4_mul(n[i], f32x4_splat(LN2_LO))));
    // The polynomial through `madd`: fused in the relaxed build (on machines with FMA), the
    // same two roundings as before otherwise.
    let mut y = [f32x4_splat(P[0]); N];
    for &c in &P[1..] {
        y = each(&|i| madd(y[i], r[i], f32x4_splat(c)));
    }
    let y = each(&|i| madd(y[i], f32x4_mul(r[i], r[i]), r[i]));
    let y = each(&|i| f32x4_add(y[i], f32x4_splat(1.0)));
    // n + 127 ∈ [0, 255] lands in the low mantissa bits of 2²³ + n + 127; shifted by 23 it is the
    // exponent field of 2ⁿ (the 2²³ exponent bits fall off the top).
    each(&|i| {
        let e = i32x4_shl(f32x4_add(n[i], f32x4_splat(8_388_608.0 + 127.0)), 23);
        f32x4_mul(y[i], e)
    })
}

/// The larger of `a` and `b`, lane by lane. Without relaxed SIMD: `pmax` (`a < b ? b : a`), one
/// instruction under V8 where `f32x4.max` costs several; a NaN in `b` gives `a`, a NaN in `a`
/// stays. With relaxed SIMD, LLVM may take `pmax` for the relaxed max, whose NaN handling is the
/// machine's, so that build uses `f32x4.max` (NaN in either gives NaN).
#[inline(always)]
fn vmax(a: v128, b: v128) -> v128 {
    #[cfg(not(target_feature = "relaxed-simd"))]
    {
        f32x4_pmax(a, b)
    }
    #[cfg(target_feature = "relaxed-simd")]
    {
        f32x4_max(a, b)
    }
}

/// The smaller of `a` and `b`, as [`vmax`]: `pmin` (`b < a ? b : a`) or, with relaxed SIMD,
/// `f32x4.min`.
#[inline(always)]
fn vmin(a: v128, b: v128) -> v128 {
    #[cfg(not(target_feature = "relaxed-simd"))]
    {
        f32x4_pmin(a, b)
    }
    #[cfg(target_feature = "relaxed-simd")]
    {
        f32x4_min(a, b)
    }
}

/// `x` clamped to exp's range, a NaN kept (`x` is the operand [`vmax`] and [`vmin`] keep).
#[inline(always)]
fn clamp_exp(x: v128) -> v128 {
    vmin(vmax(x, f32x4_splat(EXP_LO)), f32x4_splat(EXP_HI))
}

/// `x` clamped to exp's range by `pmax`/`pmin`: one instruction each under V8, where the relaxed
/// build's NaN-keeping [`vmax`]/[`vmin`] take 8 (16 of QuickGELU's 40). A NaN lane may come out
/// as either bound (the relaxed build may run the machine's min/max), so only for callers whose
/// result is NaN on a NaN lane through another operand: QuickGELU's `x / (1 + e)`.
#[inline(always)]
fn clamp_exp_cheap(x: v128) -> v128 {
    f32x4_pmin(f32x4_pmax(x, f32x4_splat(EXP_LO)), f32x4_splat(EXP_HI))
}

/// `roundf` on 4 lanes (half away from zero; NaN stays NaN): truncation, plus ±1 with `x`'s
/// sign where the fraction's magnitude is ≥ ½ (`x − trunc(x)` is exact), so libm's values.
#[inline(always)]
fn roundf4(x: v128) -> v128 {
    let t = f32x4_trunc(x);
    let up = f32x4_ge(f32x4_abs(f32x4_sub(x, t)), f32x4_splat(0.5));
    let step = v128_or(f32x4_splat(1.0), v128_and(x, f32x4_splat(-0.0)));
    f32x4_add(t, v128_and(up, step))
}

/// QuickGELU, `a · σ(1.702a) = a / (1 + e^(−1.702a))`. A NaN `a` gives NaN whatever `e` is, so
/// exp's argument takes the cheap clamp; for every other `a` the clamp is the same as
/// [`clamp_exp`]'s.
#[inline]
fn gelu4(a: v128) -> v128 {
    gelu4n([a])[0]
}

/// [`gelu4`] on `N` vectors side by side, as [`exp4n`].
#[inline(always)]
fn gelu4n<const N: usize>(a: [v128; N]) -> [v128; N] {
    let e: [v128; N] = exp4n(
        core::array::from_fn(|i| f32x4_mul(a[i], f32x4_splat(-1.702))),
        clamp_exp_cheap,
    );
    core::array::from_fn(|i| f32x4_div(a[i], f32x4_add(f32x4_splat(1.0), e[i])))
}

/// Runs `f` over `v` four lanes at a time, the tail on a zero-padded copy; returns the lanes' sum
/// of what `f` produced (the tail's padding left out).
#[inline]
fn map4(v: &mut [f32], f: impl Fn(v128) -> v128) -> f32 {
    let mut acc = f32x4_splat(0.0);
    let mut c = v.chunks_exact_mut(4);
    for x in &mut c {
        let p = x.as_mut_ptr() as *mut v128;
        // SAFETY: a chunk of 4 floats is 16 bytes; unaligned access is allowed in wasm.
        let y = f(unsafe { v128_load(p) });
        unsafe { v128_store(p, y) };
        acc = f32x4_add(acc, y);
    }
    let rest = c.into_remainder();
    let mut s = (f32x4_extract_lane::<0>(acc) + f32x4_extract_lane::<2>(acc))
        + (f32x4_extract_lane::<1>(acc) + f32x4_extract_lane::<3>(acc));
    if !rest.is_empty() {
        let mut pad = [0.0f32; 4];
        pad[..rest.len()].copy_from_slice(rest);
        // SAFETY: `pad` is 16 bytes.
        let y = f(unsafe { v128_load(pad.as_ptr() as *const v128) });
        unsafe { v128_store(pad.as_mut_ptr() as *mut v128, y) };
        rest.copy_from_slice(&pad[..rest.len()]);
        for &x in rest.iter() {
            s += x;
        }
    }
    s
}

/// [`super::max`] on 16 lanes (4 registers), through [`vmax`] with the running maximum first:
/// without relaxed SIMD a NaN element is skipped as `f32::max` skips it, the same result as the
/// portable loop; with relaxed SIMD a row holding one gives NaN. Under V8 `f32::max` on one float
/// is a call (wasm's `f32.max` propagates NaN, Rust's skips it), which was 5% of the int8 tower.
pub(super) fn max(v: &[f32]) -> f32 {
    let mut m = [f32x4_splat(f32::NEG_INFINITY); 4];
    let mut c = v.chunks_exact(16);
    for x in &mut c {
        let p = x.as_ptr() as *const v128;
        for (j, m) in m.iter_mut().enumerate() {
            // SAFETY: 16 floats are 4 vectors; unaligned access is allowed in wasm.
            *m = vmax(*m, unsafe { v128_load(p.add(j)) });
        }
    }
    let mut r = vmax(vmax(m[0], m[1]), vmax(m[2], m[3]));
    let mut rest = c.remainder().chunks_exact(4);
    for x in &mut rest {
        // SAFETY: 4 floats.
        r = vmax(r, unsafe { v128_load(x.as_ptr() as *const v128) });
    }
    for &x in rest.remainder() {
        r = vmax(r, f32x4_splat(x));
    }
    let r = vmax(r, i32x4_shuffle::<2, 3, 0, 1>(r, r));
    f32x4_extract_lane::<0>(vmax(r, i32x4_shuffle::<1, 0, 3, 2>(r, r)))
}

/// [`super::quick_gelu_slice`] on 4 lanes.
pub(super) fn gelu(v: &mut [f32]) {
    map4(v, gelu4);
}

/// [`super::exp_scaled_sum`] on 4 lanes: `exp(x·scale − shift)`, multiplied then subtracted as
/// the portable path does.
pub(super) fn exp_sum(v: &mut [f32], scale: f32, shift: f32) -> f32 {
    let (sc, sh) = (f32x4_splat(scale), f32x4_splat(shift));
    map4(v, |x| exp4(f32x4_sub(f32x4_mul(x, sc), sh)))
}

/// The f32 GEMM micro-kernel (`gemm::Kernel`): `mr` ≤ [`MR`] rows.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn kernel(
    mr: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    const { assert!(MR == 2) };
    dispatch!(mr, k, (kc, a, lda, b, c, ldc, load); 1 2)
}

/// R × 16 tile in 4R registers; per k: 4 B loads, R broadcasts, 4R multiplies and adds.
unsafe fn k<const R: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    const { assert!(NR == 16) };
    let mut acc = [[f32x4_splat(0.0); 4]; R];
    if load {
        for i in 0..R {
            for q in 0..4 {
                acc[i][q] = v128_load(c.add(i * ldc + 4 * q) as *const v128);
            }
        }
    }
    for p in 0..kc {
        let bp = b.add(p * NR) as *const v128;
        let bv = [
            v128_load(bp),
            v128_load(bp.add(1)),
            v128_load(bp.add(2)),
            v128_load(bp.add(3)),
        ];
        for i in 0..R {
            let av = v128_load32_splat(a.add(i * lda + p) as *const u32);
            for q in 0..4 {
                acc[i][q] = madd(av, bv[q], acc[i][q]);
            }
        }
    }
    for i in 0..R {
        for q in 0..4 {
            v128_store(c.add(i * ldc + 4 * q) as *mut v128, acc[i][q]);
        }
    }
}

/// The int8 panels widened for the SIMD128 tile: `[panel][k4/2][NR][2]` i16 (each column's
/// k-pairs side by side), from `q8`'s `[panel][k4/4][NR][4]` bytes. Built once per matrix, so
/// the tile's inner loop is loads and `i32x4.dot_i16x8_s` only (widening each panel per tile
/// cost 13% of the GEMM, measured in Node). Twice the bytes of the int8 panels.
pub(crate) fn widen_q8_panels(data: &[i8], k4: usize) -> Vec<i16> {
    let mut wide = vec![0i16; data.len()];
    // Per panel (k4 · NR bytes): k-quad q, column j, lane u → k-pair (4q + u) / 2, slot u % 2.
    for (src, dst) in data
        .chunks_exact(k4 * NR)
        .zip(wide.chunks_exact_mut(k4 * NR))
    {
        for (q, quad) in src.chunks_exact(4 * NR).enumerate() {
            for (j, col) in quad.chunks_exact(4).enumerate() {
                for (u, &v) in col.iter().enumerate() {
                    dst[(2 * q + u / 2) * 2 * NR + 2 * j + u % 2] = v as i16;
                }
            }
        }
    }
    wide
}

/// The int8 tile (`q8`'s `tile_portable`, same sums) on [`widen_q8_panels`]' panel `w`:
/// `acc[i][j] = Σ_k A[i][k] · W[k][j]` for `i < mr`, A as [`quantize_row`] writes it (`k4`
/// u16 values a row, little-endian bytes).
///
/// # Safety
/// `a` holds `mr · 2k4` bytes, `w` `k4 · NR` values; `mr ≤ MR`; `k4` is a multiple of 4.
pub(crate) unsafe fn q8_tile(
    mr: usize,
    k4: usize,
    a: &[u8],
    w: &[i16],
    acc: &mut [[i32; NR]; Q8_MR],
) {
    debug_assert!(mr <= Q8_MR && a.len() >= 2 * mr * k4 && w.len() >= k4 * NR);
    each_row_sums(mr, k4, a, w, |i, rows| {
        for (r, s) in rows.iter().enumerate() {
            for t in 0..4 {
                v128_store(acc[i + r].as_mut_ptr().add(4 * t) as *mut v128, s[t]);
            }
        }
    });
}

/// [`q8_dots`] over a tile's `mr` rows, two at a time (one left over), handing `f` the first
/// row's index and the rows' sums (two rows a call, so what `f` sets up, such as QuickGELU's
/// constants, serves 32 values).
///
/// # Safety
/// As [`q8_tile`].
#[inline(always)]
unsafe fn each_row_sums(
    mr: usize,
    k4: usize,
    a: &[u8],
    w: &[i16],
    mut f: impl FnMut(usize, &[[v128; 4]]),
) {
    let mut i = 0;
    while i < mr {
        let ap = a.as_ptr().add(2 * i * k4);
        if i + 2 <= mr {
            f(i, &q8_dots::<2>(k4, ap, w.as_ptr()));
            i += 2;
        } else {
            f(i, &q8_dots::<1>(k4, ap, w.as_ptr()));
            i += 1;
        }
    }
}

/// A whole panel's tile, finished in registers: `q8`'s epilogue (the same multiplications
/// and additions in the same order, so the same bits), then bias, accumulation and QuickGELU
/// (the same [`gelu4`] as [`gelu`]) before each row is stored.
///
/// # Safety
/// As [`q8_tile`]; `t` spans NR columns; `sa` holds `2 · mr` values; `scale`, `colsum` and the
/// bias reach column `t.n0() + NR`.
pub(crate) unsafe fn q8_tile_then_epilogue(
    t: &mut Tile,
    k4: usize,
    a: &[u8],
    w: &[i16],
    sa: &[f32],
    (scale, colsum): (&[f32], &[i32]),
    ep: &Epilogue<'_>,
) {
    let (n0, mr) = (t.n0(), t.mr());
    assert!(t.nv() == NR && scale.len() >= n0 + NR && colsum.len() >= n0 + NR);
    assert!(sa.len() >= 2 * mr && a.len() >= 2 * mr * k4 && w.len() >= k4 * NR);
    let bias = ep.bias.map(|b| &b[n0..n0 + NR]);
    let cs: [v128; 4] = core::array::from_fn(|q| {
        f32x4_convert_i32x4(v128_load(colsum.as_ptr().add(n0 + 4 * q) as *const v128))
    });
    let sw: [v128; 4] =
        core::array::from_fn(|q| v128_load(scale.as_ptr().add(n0 + 4 * q) as *const v128));
    let (out, ldc) = (t.out_ptr(), t.ldc());
    let gelu = ep.act == Act::QuickGelu;
    let finish = |i0: usize, rows: &[[v128; 4]]| {
        for (i, s) in (i0..).zip(rows) {
            let (s0, s1) = (f32x4_splat(sa[2 * i]), f32x4_splat(sa[2 * i + 1]));
            let o = out.add(i * ldc) as *mut v128;
            let v: [v128; 4] = core::array::from_fn(|q| {
                // bs · (s0 · acc + s1 · colsum), as the scalar epilogue computes it.
                let v = f32x4_add(
                    f32x4_mul(s0, f32x4_convert_i32x4(s[q])),
                    f32x4_mul(s1, cs[q]),
                );
                let mut v = f32x4_mul(sw[q], v);
                if let Some(b) = bias {
                    v = f32x4_add(v, v128_load(b.as_ptr().add(4 * q) as *const v128));
                }
                if ep.accumulate {
                    v = f32x4_add(v128_load(o.add(q)), v);
                }
                v
            });
            // The row's 16 values through QuickGELU side by side ([`gelu4n`]).
            let v = if gelu { gelu4n(v) } else { v };
            for (q, v) in v.into_iter().enumerate() {
                v128_store(o.add(q), v);
            }
        }
    };
    each_row_sums(mr, k4, a, w, finish);
}

/// R rows × 16 columns in 4R accumulators (each lane one column's whole sum): per k-pair 4
/// loads of the widened panel, R broadcast loads of the rows' activation pairs (16 bits each),
/// 4R dot products.
/// Two rows fit the 16 vector registers of an x86-64 machine under the engine; the loop runs
/// about 11 of a Zen 4 core's 16 multiply-adds per cycle (`vpmaddwd` at 2 per cycle) in Node.
///
/// The panel's address runs as an integer, made a pointer in each step: LLVM's loop strength
/// reduction cannot see through that cast, so the 4 loads keep one base and the offsets 0, 16,
/// 32 and 48 in the wasm load's immediate, which V8 folds into the x86 address. Through a pointer
/// (or an index) LLVM gives each load its own `i32.add` (wrapping, so V8 cannot fold it): 3 more
/// instructions per k-pair, and fc1's int8 GEMM in Node 2–3% slower.
#[inline(always)]
unsafe fn q8_dots<const R: usize>(k4: usize, ap: *const u8, w: *const i16) -> [[v128; 4]; R] {
    let mut s = [[i32x4_splat(0); 4]; R];
    // Bytes: k4 / 2 k-pairs of 4 vectors.
    let mut wa = w as usize;
    let end = wa + 32 * k4;
    // Row r's k-pairs (two u16 values, read as one u32) start k4 / 2 pairs after row r − 1's.
    let mut a: [*const u32; R] = core::array::from_fn(|r| (ap as *const u32).add(r * k4 / 2));
    while wa != end {
        let wp = wa as *const v128;
        let wv: [v128; 4] = core::array::from_fn(|q| v128_load(wp.add(q)));
        for r in 0..R {
            // The row's k-pair, repeated: [a0 a1 a0 a1 …] as i16.
            let av = v128_load32_splat(a[r]);
            for q in 0..4 {
                s[r][q] = i32x4_add(s[r][q], i32x4_dot_i16x8(av, wv[q]));
            }
            a[r] = a[r].add(1);
        }
        wa += 64;
    }
    s
}

/// `q8`'s `quantize_row` into 16-bit values (`q` holds 2 little-endian bytes a value, the
/// layout [`q8_tile`] reads), 16 values at a time, bit for bit for rows without NaN (as the VNNI
/// one; with relaxed SIMD the engine may take `pmin`/`pmax` as its own min/max, whose NaN
/// handling is the machine's), with `roundf` as [`roundf4`].
pub(crate) fn quantize_row(row: &[f32], q: &mut [u8]) -> (f32, f32) {
    let n = row.len().min(q.len() / 2);
    let (row, q) = (&row[..n], &mut q[..2 * n]);
    let (mut vlo, mut vhi) = (f32x4_splat(f32::MAX), f32x4_splat(f32::MIN));
    let mut chunks = row.chunks_exact(4);
    for c in &mut chunks {
        // SAFETY: 4 values.
        let v = unsafe { v128_load(c.as_ptr() as *const v128) };
        vlo = f32x4_pmin(vlo, v);
        vhi = f32x4_pmax(vhi, v);
    }
    let lanes = |v: v128| {
        [
            f32x4_extract_lane::<0>(v),
            f32x4_extract_lane::<1>(v),
            f32x4_extract_lane::<2>(v),
            f32x4_extract_lane::<3>(v),
        ]
    };
    let lo = lanes(vlo)
        .into_iter()
        .chain(chunks.remainder().iter().copied())
        .fold(f32::MAX, f32::min);
    let hi = lanes(vhi)
        .into_iter()
        .chain(chunks.remainder().iter().copied())
        .fold(f32::MIN, f32::max);
    let sc = crate::q8::row_scale(lo, hi);
    let inv = 1.0 / sc;
    let (l, s, zero, top) = (
        f32x4_splat(lo),
        f32x4_splat(inv),
        f32x4_splat(0.0),
        f32x4_splat(255.0),
    );
    let round = |v: v128| {
        let r = roundf4(f32x4_mul(f32x4_sub(v, l), s));
        i32x4_trunc_sat_f32x4(f32x4_pmin(top, f32x4_pmax(zero, r)))
    };
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: 16 values from i < n, 32 bytes from 2i < 2n.
        unsafe {
            let p = row.as_ptr().add(i) as *const v128;
            let v: [v128; 4] = core::array::from_fn(|j| round(v128_load(p.add(j))));
            let d = q.as_mut_ptr().add(2 * i) as *mut v128;
            v128_store(d, i16x8_narrow_i32x4(v[0], v[1]));
            v128_store(d.add(1), i16x8_narrow_i32x4(v[2], v[3]));
        }
        i += 16;
    }
    for (d, &v) in q[2 * i..].chunks_exact_mut(2).zip(&row[i..]) {
        d[0] = libm::roundf((v - lo) * inv).clamp(0.0, 255.0) as u8;
        d[1] = 0;
    }
    (sc, lo)
}

/// `q8`'s weight quantization, `roundf(v / s)` clamped to ±127, 16 values at a time; returns
/// how many it did (a multiple of 16; the caller does the rest). The same values: the same
/// division, `roundf` as [`roundf4`]. A NaN becomes 0, as `NaN as i8` does: masked to zero
/// before the clamp, so the relaxed build's min/max and conversion see no NaN.
pub(crate) fn quantize_weight_row(row: &[f32], s: f32, q: &mut [i8]) -> usize {
    let n = row.len().min(q.len()) / 16 * 16;
    let (sv, lo, hi) = (f32x4_splat(s), f32x4_splat(-127.0), f32x4_splat(127.0));
    let round = |v: v128| {
        let r = roundf4(f32x4_div(v, sv));
        let r = v128_and(r, f32x4_eq(r, r));
        i32x4_trunc_sat_f32x4(f32x4_min(f32x4_max(r, lo), hi))
    };
    for i in (0..n).step_by(16) {
        // SAFETY: 16 values from i, i + 16 ≤ n ≤ both lengths.
        unsafe {
            let p = row.as_ptr().add(i) as *const v128;
            let v: [v128; 4] = core::array::from_fn(|j| round(v128_load(p.add(j))));
            let b = i8x16_narrow_i16x8(
                i16x8_narrow_i32x4(v[0], v[1]),
                i16x8_narrow_i32x4(v[2], v[3]),
            );
            v128_store(q.as_mut_ptr().add(i) as *mut v128, b);
        }
    }
    n
}

/// f16 bits → f32, 8 at a time, exactly (`half`'s values: NaNs quieted with their payloads,
/// subnormals included):
/// the bits shifted into place and the exponent rebased, then the two edge cases fixed with
/// selects (Inf/NaN: exponent all ones; zero/subnormal: rebuilt through one float subtraction).
pub(crate) fn widen_f16(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let (src, dst) = (&src[..n], &mut dst[..n]);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: 8 halves (16 bytes) from i and 8 floats (32 bytes) from i are in bounds.
        unsafe {
            let h = v128_load(src.as_ptr().add(i) as *const v128);
            let p = dst.as_mut_ptr().add(i) as *mut v128;
            v128_store(p, widen4(u32x4_extend_low_u16x8(h)));
            v128_store(p.add(1), widen4(u32x4_extend_high_u16x8(h)));
        }
        i += 8;
    }
    for (d, &s) in dst[i..].iter_mut().zip(&src[i..]) {
        *d = half::f16::from_bits(s).to_f32();
    }
}

/// Four f16 values (one per 32-bit lane, high half zero) as f32.
#[inline]
fn widen4(h: v128) -> v128 {
    const SHIFTED_EXP: u32 = 0x7c00 << 13;
    let o = u32x4_shl(v128_and(h, u32x4_splat(0x7fff)), 13);
    let e = v128_and(o, u32x4_splat(SHIFTED_EXP));
    let o = i32x4_add(o, u32x4_splat((127 - 15) << 23));
    // Inf/NaN: the exponent goes to all ones.
    let inf_nan = i32x4_eq(e, u32x4_splat(SHIFTED_EXP));
    let o = v128_bitselect(i32x4_add(o, u32x4_splat((128 - 16) << 23)), o, inf_nan);
    // A NaN comes out quiet, as F16C and `half` make it.
    let nan = v128_andnot(
        inf_nan,
        i32x4_eq(v128_and(h, u32x4_splat(0x3ff)), u32x4_splat(0)),
    );
    let o = v128_or(o, v128_and(nan, u32x4_splat(0x0040_0000)));
    // Zero/subnormal: one more exponent step, then subtract 2^-14 as a float.
    let tiny = i32x4_eq(e, u32x4_splat(0));
    let sub = f32x4_sub(i32x4_add(o, u32x4_splat(1 << 23)), u32x4_splat(113 << 23));
    let o = v128_bitselect(sub, o, tiny);
    v128_or(o, u32x4_shl(v128_and(h, u32x4_splat(0x8000)), 16))
}
