//! wasm32 SIMD128 kernels (compiled in when the build enables `simd128`, as the browser build
//! does: a wasm module is validated whole, so there is no run-time choice inside one build).
//!
//! SIMD128 has no fused multiply-add, so these kernels multiply and add in two roundings:
//! - Element-wise math: Cephes' `exp` in its original unfused form (within 2 ulp of a correctly
//!   rounded `expf`, tested in `simd::tests`); the tails go through the same vector code on a
//!   padded copy, so a value does not depend on where it falls in the slice.
//! - f32 GEMM micro-kernel: [`MR`] = 2 rows × 16 columns (4 registers a row), the portable kernel's
//!   products and sums in the same order, so the same bits.
//!
//! The intrinsics on values are safe functions here (the whole build has `simd128`); only the
//! loads and stores through pointers are `unsafe`.
#![allow(clippy::needless_range_loop)] // register arrays indexed in lockstep

use super::{EXP_HI, EXP_LO, LN2_HI, LN2_LO, LOG2E, P};
use crate::gemm::NR;
use core::arch::wasm32::*;

/// Rows of the f32 micro-kernel: 8 accumulators + 4 B registers + 1 broadcast fit the 16 vector
/// registers of an x86-64 machine under the engine; more rows spill. Measured in Node 20 on Zen 4
/// (`tools/bench/kernels-wasm.sh`, fc1's shape): 2 rows 33 GFLOP/s, 3 rows 25, 4 rows 19–25,
/// 6 rows 11.
pub(crate) const MR: usize = 2;

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
    match mr {
        2 => k::<2>(kc, a, lda, b, c, ldc, load),
        _ => k::<1>(kc, a, lda, b, c, ldc, load),
    }
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
                acc[i][q] = f32x4_add(acc[i][q], f32x4_mul(av, bv[q]));
            }
        }
    }
    for i in 0..R {
        for q in 0..4 {
            v128_store(c.add(i * ldc + 4 * q) as *mut v128, acc[i][q]);
        }
    }
}
