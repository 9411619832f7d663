//! aarch64 kernels. Advanced SIMD (NEON, with fused multiply-add) is part of every AArch64 CPU
//! an OS runs on, so [`super::Path::Neon`] is always there; `dotprod` (`sdot`) and `i8mm`
//! (`usdot`) are detected at run time for the int8 tiles.
//!
//! - Element-wise math: the scalar twin's own sequence of operations on four lanes (the same
//!   fused steps in `exp`, the same unfused `x·scale − shift` in softmax), so the same bits.
//! - f32 GEMM micro-kernel: up to 6 rows × 16 columns, 24 accumulators of the 32 registers;
//!   per k one 64-byte B row (4 registers) and one broadcast A value per row.
//! - int8: the panel format is x86's (`[k/4][NR][4]` bytes, docs/architecture.md): one 16-byte
//!   register is 4 columns × 4 k-values, which is exactly what `sdot`/`usdot` multiply against a
//!   broadcast of 4 activation bytes. `usdot` takes the u8 activations as they are; `sdot` is
//!   signed × signed, so the activations go in as `ua − 128` and `128 · Σ_k qw[k, j]` (the column
//!   sum the format already stores) is added back: the integer sums are exact either way, so
//!   every int8 kernel gives the same result.
#![allow(clippy::needless_range_loop)] // register arrays indexed in lockstep

use super::{exp, gelu1, EXP_HI, EXP_LO, LN2_HI, LN2_LO, LOG2E, P};
use crate::gemm::NR;
use crate::lowp::MR;
use core::arch::aarch64::*;

/// NEON (always, on a hosted AArch64 target; checked rather than assumed).
pub(super) fn has_neon() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_aarch64_feature_detected!("neon")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(target_feature = "neon")
    }
}

/// The `sdot` instruction (FEAT_DotProd).
pub(super) fn has_dotprod() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(target_feature = "dotprod")
    }
}

/// The `usdot` instruction (FEAT_I8MM).
pub(super) fn has_i8mm() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_aarch64_feature_detected!("i8mm")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(target_feature = "i8mm")
    }
}

/// The `bfdot` instruction (FEAT_BF16).
pub(crate) fn has_bf16() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_aarch64_feature_detected!("bf16")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(target_feature = "bf16")
    }
}

/// [`super::exp`] on 4 lanes, step for step (every `fmaf` there is one fused instruction here).
/// A NaN stays NaN: `fmax`/`fmin` return NaN when either operand is one.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn exp4(x: float32x4_t) -> float32x4_t {
    let x = vminq_f32(vdupq_n_f32(EXP_HI), vmaxq_f32(vdupq_n_f32(EXP_LO), x));
    let n = vrndmq_f32(vfmaq_f32(vdupq_n_f32(0.5), x, vdupq_n_f32(LOG2E)));
    let r = vfmsq_f32(x, n, vdupq_n_f32(LN2_HI));
    let r = vfmsq_f32(r, n, vdupq_n_f32(LN2_LO));
    let mut y = vdupq_n_f32(P[0]);
    for &c in &P[1..] {
        y = vfmaq_f32(vdupq_n_f32(c), y, r);
    }
    let y = vaddq_f32(vfmaq_f32(r, y, vmulq_f32(r, r)), vdupq_n_f32(1.0));
    let e = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)));
    vmulq_f32(y, vreinterpretq_f32_s32(e))
}

/// [`super::quick_gelu_slice`]: `x / (1 + exp(−1.702 x))`, 4 lanes at a time.
#[target_feature(enable = "neon")]
pub(super) unsafe fn gelu(v: &mut [f32]) {
    let mut c = v.chunks_exact_mut(4);
    for x in &mut c {
        let p = x.as_mut_ptr();
        let a = vld1q_f32(p);
        let e = exp4(vmulq_f32(a, vdupq_n_f32(-1.702)));
        vst1q_f32(p, vdivq_f32(a, vaddq_f32(vdupq_n_f32(1.0), e)));
    }
    for x in c.into_remainder() {
        *x = gelu1(*x);
    }
}

/// [`super::exp_scaled_sum`]: the values bit for bit as the portable path's; the sum in four
/// lanes, then added pairwise.
#[target_feature(enable = "neon")]
pub(super) unsafe fn exp_sum(v: &mut [f32], scale: f32, shift: f32) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    let mut c = v.chunks_exact_mut(4);
    for x in &mut c {
        let p = x.as_mut_ptr();
        let a = vsubq_f32(
            vmulq_f32(vld1q_f32(p), vdupq_n_f32(scale)),
            vdupq_n_f32(shift),
        );
        let e = exp4(a);
        vst1q_f32(p, e);
        acc = vaddq_f32(acc, e);
    }
    let mut s = vaddvq_f32(acc);
    for x in c.into_remainder() {
        *x = exp(*x * scale - shift);
        s += *x;
    }
    s
}

/// The f32 GEMM micro-kernel (`gemm::Kernel`): `mr` ≤ 6 rows.
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
    dispatch!(mr, k, (kc, a, lda, b, c, ldc, load); 1 2 3 4 5 6)
}

/// R × 16 tile in 4R registers; per k: 4 B loads, R broadcasts, 4R FMAs.
#[target_feature(enable = "neon")]
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
    let mut acc = [[vdupq_n_f32(0.0); 4]; R];
    if load {
        for i in 0..R {
            for q in 0..4 {
                acc[i][q] = vld1q_f32(c.add(i * ldc + 4 * q));
            }
        }
    }
    for p in 0..kc {
        let bp = b.add(p * NR);
        let bv = [
            vld1q_f32(bp),
            vld1q_f32(bp.add(4)),
            vld1q_f32(bp.add(8)),
            vld1q_f32(bp.add(12)),
        ];
        for i in 0..R {
            let av = vld1q_dup_f32(a.add(i * lda + p));
            for q in 0..4 {
                acc[i][q] = vfmaq_f32(acc[i][q], av, bv[q]);
            }
        }
    }
    for i in 0..R {
        for q in 0..4 {
            vst1q_f32(c.add(i * ldc + 4 * q), acc[i][q]);
        }
    }
}

/// The int8 tile (`q8`'s `tile_portable`, same sums): `acc[i][j] = Σ_k a[i·k4 + k] ·
/// b[(k/4)·NR·4 + j·4 + k%4]` for `i < mr`, with `usdot` (i8mm) if `usdot`, else `sdot`
/// (dotprod) and the column sums `sums` (one panel's) to undo the shift.
///
/// # Safety
/// The CPU has i8mm (`usdot`) or dotprod (`!usdot`); `a` holds `mr · k4` bytes, `b` `k4 · NR`,
/// `sums` `NR`; `mr ≤ MR`; `k4` is a multiple of 4.
pub(crate) unsafe fn q8_tile(
    usdot: bool,
    mr: usize,
    k4: usize,
    a: &[u8],
    b: &[i8],
    sums: &[i32],
    acc: &mut [[i32; NR]; MR],
) {
    debug_assert!(mr <= MR && a.len() >= mr * k4 && b.len() >= k4 * NR && sums.len() >= NR);
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    let mut i = 0;
    while i < mr {
        let rows = (mr - i).min(4);
        let out = acc[i..].as_mut_ptr();
        let at = ap.add(i * k4);
        match (usdot, rows) {
            (true, 4) => dots_u::<4>(k4, at, bp, out),
            (true, 3) => dots_u::<3>(k4, at, bp, out),
            (true, 2) => dots_u::<2>(k4, at, bp, out),
            (true, _) => dots_u::<1>(k4, at, bp, out),
            (false, 4) => dots_s::<4>(k4, at, bp, out),
            (false, 3) => dots_s::<3>(k4, at, bp, out),
            (false, 2) => dots_s::<2>(k4, at, bp, out),
            (false, _) => dots_s::<1>(k4, at, bp, out),
        }
        i += rows;
    }
    if !usdot {
        for row in acc.iter_mut().take(mr) {
            for (v, &s) in row.iter_mut().zip(sums) {
                *v += 128 * s;
            }
        }
    }
}

/// `usdot`: u8 × s8 dot products of 4 bytes into each 32-bit lane.
#[inline]
#[target_feature(enable = "neon,i8mm")]
unsafe fn usdot(acc: int32x4_t, a: uint8x16_t, b: int8x16_t) -> int32x4_t {
    let mut r = acc;
    // SAFETY: i8mm enabled on this function (the caller's contract); registers only.
    core::arch::asm!("usdot {0:v}.4s, {1:v}.16b, {2:v}.16b", inout(vreg) r, in(vreg) a,
        in(vreg) b, options(pure, nomem, nostack));
    r
}

/// `sdot`: s8 × s8 dot products of 4 bytes into each 32-bit lane.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut r = acc;
    // SAFETY: dotprod enabled on this function (the caller's contract); registers only.
    core::arch::asm!("sdot {0:v}.4s, {1:v}.16b, {2:v}.16b", inout(vreg) r, in(vreg) a,
        in(vreg) b, options(pure, nomem, nostack));
    r
}

/// One panel's B row of 4 k-values: 16 columns in 4 registers.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn b_quad(bp: *const i8, q: usize) -> [int8x16_t; 4] {
    let p = bp.add(q * NR * 4);
    [
        vld1q_s8(p),
        vld1q_s8(p.add(16)),
        vld1q_s8(p.add(32)),
        vld1q_s8(p.add(48)),
    ]
}

/// 4 bytes of row `i` at k-quad `q`, in every 32-bit lane.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn a_quad(ap: *const u8, k4: usize, i: usize, q: usize) -> uint32x4_t {
    vdupq_n_u32((ap.add(i * k4 + 4 * q) as *const u32).read_unaligned())
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn store_rows<const R: usize>(s: &[[int32x4_t; 4]; R], out: *mut [i32; NR]) {
    for i in 0..R {
        let o = (*out.add(i)).as_mut_ptr();
        for t in 0..4 {
            vst1q_s32(o.add(4 * t), s[i][t]);
        }
    }
}

#[target_feature(enable = "neon,i8mm")]
unsafe fn dots_u<const R: usize>(k4: usize, ap: *const u8, bp: *const i8, out: *mut [i32; NR]) {
    let mut s = [[vdupq_n_s32(0); 4]; R];
    for q in 0..k4 / 4 {
        let bv = b_quad(bp, q);
        for i in 0..R {
            let av = vreinterpretq_u8_u32(a_quad(ap, k4, i, q));
            for t in 0..4 {
                s[i][t] = usdot(s[i][t], av, bv[t]);
            }
        }
    }
    store_rows(&s, out);
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn dots_s<const R: usize>(k4: usize, ap: *const u8, bp: *const i8, out: *mut [i32; NR]) {
    let mut s = [[vdupq_n_s32(0); 4]; R];
    let flip = vdupq_n_u32(0x8080_8080);
    for q in 0..k4 / 4 {
        let bv = b_quad(bp, q);
        for i in 0..R {
            // u − 128 as a signed byte is u with its top bit flipped.
            let av = vreinterpretq_s8_u32(veorq_u32(a_quad(ap, k4, i, q), flip));
            for t in 0..4 {
                s[i][t] = sdot(s[i][t], av, bv[t]);
            }
        }
    }
    store_rows(&s, out);
}

/// The bf16 tile (`bf16`'s `tile_portable`, same pairs): `acc[i][j] = Σ_q (a[i,2q]·b[q,j,0] +
/// a[i,2q+1]·b[q,j,1])` for `i < mr`, with `bfdot`. The panel format `[k/2][16][2]` is `bfdot`'s
/// operand as it is: a 16-byte row holds 4 columns' k-pairs, against one row's pair in every
/// lane. `bfdot` rounds each pair's sum its own way (Arm's BFDotAdd), so the sums differ from the
/// portable twin's by roundings, as AVX-512 BF16's do.
///
/// # Safety
/// The CPU has bf16; `a` holds `mr · 2k2` values, `b` `k2 · 2NR`; `mr ≤ MR`.
pub(crate) unsafe fn bf16_tile(
    mr: usize,
    k2: usize,
    a: &[u16],
    b: &[u16],
    acc: &mut [[f32; NR]; MR],
) {
    debug_assert!(mr <= MR && a.len() >= mr * 2 * k2 && b.len() >= k2 * 2 * NR);
    let mut i = 0;
    while i < mr {
        let rows = (mr - i).min(4);
        let (at, out) = (a.as_ptr().add(i * 2 * k2), acc[i..].as_mut_ptr());
        dispatch!(rows, bf16_rows, (k2, at, b.as_ptr(), out); 1 2 3 4);
        i += rows;
    }
}

/// `bfdot`: each f32 lane plus its pair of bf16 products.
#[inline]
#[target_feature(enable = "neon,bf16")]
unsafe fn bfdot(acc: float32x4_t, a: uint16x8_t, b: uint16x8_t) -> float32x4_t {
    let mut r = acc;
    // SAFETY: bf16 enabled on this function (the caller's contract); registers only.
    core::arch::asm!("bfdot {0:v}.4s, {1:v}.8h, {2:v}.8h", inout(vreg) r, in(vreg) a,
        in(vreg) b, options(pure, nomem, nostack));
    r
}

/// R rows × 16 columns in 4R registers; per k-pair 4 B loads, R pairs (one 32-bit load each, in
/// every lane), 4R `bfdot`s.
#[target_feature(enable = "neon,bf16")]
unsafe fn bf16_rows<const R: usize>(
    k2: usize,
    ap: *const u16,
    bp: *const u16,
    out: *mut [f32; NR],
) {
    let mut s = [[vdupq_n_f32(0.0); 4]; R];
    for q in 0..k2 {
        let p = bp.add(q * 2 * NR);
        let w = [
            vld1q_u16(p),
            vld1q_u16(p.add(8)),
            vld1q_u16(p.add(16)),
            vld1q_u16(p.add(24)),
        ];
        for i in 0..R {
            let pair = (ap.add(i * 2 * k2 + 2 * q) as *const u32).read_unaligned();
            let av = vreinterpretq_u16_u32(vdupq_n_u32(pair));
            for t in 0..4 {
                s[i][t] = bfdot(s[i][t], w[t], av);
            }
        }
    }
    for i in 0..R {
        let o = (*out.add(i)).as_mut_ptr();
        for t in 0..4 {
            vst1q_f32(o.add(4 * t), s[i][t]);
        }
    }
}
