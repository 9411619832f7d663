//! wasm32 SIMD128 kernels (compiled in when the build enables `simd128`, as the browser build
//! does: a wasm module is validated whole, so there is no run-time choice inside one build).
//!
//! SIMD128 has no fused multiply-add, so these kernels multiply and add in two roundings (the
//! browser package also ships a build with relaxed SIMD, whose `f32x4.relaxed_madd` the GEMM
//! uses instead: fused where the machine has FMA, the engine's choice, so not bit-exact):
//! - Element-wise math: Cephes' `exp` in its original unfused form (within 2 ulp of a correctly
//!   rounded `expf`, tested in `simd::tests`); the tails go through the same vector code on a
//!   padded copy, so a value does not depend on where it falls in the slice.
//! - f32 GEMM micro-kernel: [`MR`] = 2 rows × 16 columns (4 registers a row), the portable kernel's
//!   products and sums in the same order, so the same bits (without relaxed SIMD).
//!
//! - int8 tile: SIMD128 has no byte dot product, so each 16-byte B register (4 columns × 4 k) is
//!   widened to two 8-lane i16 vectors once per k-quad, and `i32x4.dot_i16x8_s` multiplies them
//!   by a row's 4 activation bytes (widened and repeated): each i32 lane then holds 2 of a
//!   column's 4 products, and the pairs are added at the end. Integer sums: exact, so the same
//!   result as every other int8 kernel.
//!
//! The intrinsics on values are safe functions here (the whole build has `simd128`); only the
//! loads and stores through pointers are `unsafe`.
#![allow(clippy::needless_range_loop)] // register arrays indexed in lockstep

use super::{EXP_HI, EXP_LO, LN2_HI, LN2_LO, LOG2E, P};
use crate::gemm::NR;
use crate::lowp::MR as Q8_MR;
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

/// Cephes' `exp` on 4 lanes, unfused. A NaN stays NaN (`f32x4.min`/`max` return NaN when either
/// operand is one).
#[inline]
fn exp4(x: v128) -> v128 {
    let x = f32x4_min(f32x4_splat(EXP_HI), f32x4_max(f32x4_splat(EXP_LO), x));
    let n = f32x4_floor(f32x4_add(
        f32x4_mul(x, f32x4_splat(LOG2E)),
        f32x4_splat(0.5),
    ));
    let r = f32x4_sub(x, f32x4_mul(n, f32x4_splat(LN2_HI)));
    let r = f32x4_sub(r, f32x4_mul(n, f32x4_splat(LN2_LO)));
    let mut y = f32x4_splat(P[0]);
    for &c in &P[1..] {
        y = f32x4_add(f32x4_mul(y, r), f32x4_splat(c));
    }
    let y = f32x4_add(f32x4_mul(y, f32x4_mul(r, r)), r);
    let y = f32x4_add(y, f32x4_splat(1.0));
    let e = i32x4_shl(i32x4_add(i32x4_trunc_sat_f32x4(n), i32x4_splat(127)), 23);
    f32x4_mul(y, e)
}

#[inline]
fn gelu4(a: v128) -> v128 {
    let e = exp4(f32x4_mul(a, f32x4_splat(-1.702)));
    f32x4_div(a, f32x4_add(f32x4_splat(1.0), e))
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

/// The int8 tile (`q8`'s `tile_portable`, same sums): `acc[i][j] = Σ_k a[i·k4 + k] ·
/// b[(k/4)·NR·4 + j·4 + k%4]` for `i < mr`.
///
/// # Safety
/// `a` holds `mr · k4` bytes, `b` `k4 · NR`; `mr ≤ MR`; `k4` is a multiple of 4.
pub(crate) unsafe fn q8_tile(
    mr: usize,
    k4: usize,
    a: &[u8],
    b: &[i8],
    acc: &mut [[i32; NR]; Q8_MR],
) {
    debug_assert!(mr <= Q8_MR && a.len() >= mr * k4 && b.len() >= k4 * NR);
    let mut i = 0;
    while i + 2 <= mr {
        q8_rows::<2>(k4, a.as_ptr().add(i * k4), b.as_ptr(), &mut acc[i..i + 2]);
        i += 2;
    }
    if i < mr {
        q8_rows::<1>(k4, a.as_ptr().add(i * k4), b.as_ptr(), &mut acc[i..i + 1]);
    }
}

/// R rows: 8R accumulators (column pairs' partial sums), the panel's k-quad widened once.
unsafe fn q8_rows<const R: usize>(k4: usize, ap: *const u8, bp: *const i8, out: &mut [[i32; NR]]) {
    let mut s = [[i32x4_splat(0); 8]; R];
    for q in 0..k4 / 4 {
        let bq = bp.add(q * NR * 4) as *const v128;
        let mut w = [i16x8_splat(0); 8];
        for t in 0..4 {
            let v = v128_load(bq.add(t));
            w[2 * t] = i16x8_extend_low_i8x16(v);
            w[2 * t + 1] = i16x8_extend_high_i8x16(v);
        }
        for r in 0..R {
            // The row's 4 bytes in both halves, widened: [a0 a1 a2 a3 a0 a1 a2 a3] as i16.
            let quad = v128_load32_splat(ap.add(r * k4 + 4 * q) as *const u32);
            let av = u16x8_extend_low_u8x16(quad);
            for h in 0..8 {
                s[r][h] = i32x4_add(s[r][h], i32x4_dot_i16x8(av, w[h]));
            }
        }
    }
    // Lane pairs (0, 1) and (2, 3) of s[r][h] are columns 2h and 2h + 1.
    for r in 0..R {
        for h in 0..8 {
            let v = s[r][h];
            out[r][2 * h] = i32x4_extract_lane::<0>(v) + i32x4_extract_lane::<1>(v);
            out[r][2 * h + 1] = i32x4_extract_lane::<2>(v) + i32x4_extract_lane::<3>(v);
        }
    }
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
