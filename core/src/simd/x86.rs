//! x86-64 kernels: AVX2+FMA (8 lanes) and AVX-512F (16 lanes) element-wise math and f32 GEMM
//! micro-kernels, and the feature checks behind [`super::Path::Avx2`], [`super::Path::Avx512`] and
//! [`super::Int8Kernel::Vnni`].
#![allow(clippy::needless_range_loop)] // register arrays indexed in lockstep

use super::*;
use crate::gemm::NR;
use core::arch::x86_64::*;

/// AVX2, FMA and F16C (the AVX2 path's needs; F16C widens f16 weights).
pub(super) fn has_avx2_fma_f16c() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(all(
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        ))
    }
}

/// AVX-512F.
pub(super) fn has_avx512f() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(target_feature = "avx512f")
    }
}

/// AVX-512 VNNI with AVX-512BW (the int8 kernel's needs; detected with `std` only, as before).
pub(super) fn has_vnni() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(feature = "std"))]
    {
        false
    }
}

macro_rules! exp_body {
    ($x:expr, $set1:ident, $min:ident, $max:ident, $fmadd:ident, $fnmadd:ident, $mul:ident,
     $round:expr, $cvt:ident, $add_epi:ident, $slli:ident, $cast:ident, $seti:ident) => {{
        // The limits first: min/max return their second operand when one is NaN, so a NaN
        // stays NaN, as the scalar twin's `clamp` keeps it (the NaN checks downstream rely
        // on it).
        let x = $min($set1(EXP_HI), $max($set1(EXP_LO), $x));
        let n = $round($fmadd(x, $set1(LOG2E), $set1(0.5)));
        let r = $fnmadd(n, $set1(LN2_HI), x);
        let r = $fnmadd(n, $set1(LN2_LO), r);
        let mut y = $set1(P[0]);
        y = $fmadd(y, r, $set1(P[1]));
        y = $fmadd(y, r, $set1(P[2]));
        y = $fmadd(y, r, $set1(P[3]));
        y = $fmadd(y, r, $set1(P[4]));
        y = $fmadd(y, r, $set1(P[5]));
        let r2 = $mul(r, r);
        y = $fmadd(y, r2, r);
        y = $fmadd(y, $set1(1.0), $set1(1.0)); // y + 1, rounded once as the scalar does
        let e = $slli::<23>($add_epi($cvt(n), $seti(127)));
        $mul(y, $cast(e))
    }};
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp8(x: __m256) -> __m256 {
    exp_body!(
        x,
        _mm256_set1_ps,
        _mm256_min_ps,
        _mm256_max_ps,
        _mm256_fmadd_ps,
        _mm256_fnmadd_ps,
        _mm256_mul_ps,
        |v| _mm256_floor_ps(v),
        _mm256_cvtps_epi32,
        _mm256_add_epi32,
        _mm256_slli_epi32,
        _mm256_castsi256_ps,
        _mm256_set1_epi32
    )
}

#[inline]
#[target_feature(enable = "avx512f")]
fn exp16(x: __m512) -> __m512 {
    exp_body!(
        x,
        _mm512_set1_ps,
        _mm512_min_ps,
        _mm512_max_ps,
        _mm512_fmadd_ps,
        _mm512_fnmadd_ps,
        _mm512_mul_ps,
        |v| _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(v),
        _mm512_cvtps_epi32,
        _mm512_add_epi32,
        _mm512_slli_epi32,
        _mm512_castsi512_ps,
        _mm512_set1_epi32
    )
}

#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn gelu256(v: &mut [f32]) {
    let mut c = v.chunks_exact_mut(8);
    for x in &mut c {
        let p = x.as_mut_ptr();
        let a = _mm256_loadu_ps(p);
        let e = exp8(_mm256_mul_ps(a, _mm256_set1_ps(-1.702)));
        _mm256_storeu_ps(p, _mm256_div_ps(a, _mm256_add_ps(_mm256_set1_ps(1.0), e)));
    }
    for x in c.into_remainder() {
        *x = gelu1(*x);
    }
}

/// QuickGELU of 16 lanes: `a / (1 + exp(-1.702 a))`.
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) fn gelu16(a: __m512) -> __m512 {
    let e = exp16(_mm512_mul_ps(a, _mm512_set1_ps(-1.702)));
    _mm512_div_ps(a, _mm512_add_ps(_mm512_set1_ps(1.0), e))
}

#[target_feature(enable = "avx512f")]
pub(super) unsafe fn gelu512(v: &mut [f32]) {
    let mut c = v.chunks_exact_mut(16);
    for x in &mut c {
        let p = x.as_mut_ptr();
        _mm512_storeu_ps(p, gelu16(_mm512_loadu_ps(p)));
    }
    let rest = c.into_remainder();
    let (m, p) = (tail_mask(rest.len()), rest.as_mut_ptr());
    _mm512_mask_storeu_ps(p, m, gelu16(_mm512_maskz_loadu_ps(m, p)));
}

/// Writes `v + bias` (16 lanes; `bias` may be null), added to what `out` holds if
/// `accumulate`, then QuickGELU'd if `gelu`: the same operations, in the same order, as a
/// scalar epilogue followed by [`super::quick_gelu_slice`].
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn store16(
    out: *mut f32,
    mut v: __m512,
    bias: *const f32,
    gelu: bool,
    accumulate: bool,
) {
    if !bias.is_null() {
        v = _mm512_add_ps(v, _mm512_loadu_ps(bias));
    }
    if accumulate {
        v = _mm512_add_ps(_mm512_loadu_ps(out), v);
    }
    if gelu {
        v = gelu16(v);
    }
    _mm512_storeu_ps(out, v);
}

/// [`super::bias_act`]: 16 lanes at a time, the tail as the scalar code does it.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn bias_act512(v: &mut [f32], bias: Option<&[f32]>, gelu: bool) {
    let n16 = v.len() / 16 * 16;
    let p = v.as_mut_ptr();
    for j in (0..n16).step_by(16) {
        let mut x = _mm512_loadu_ps(p.add(j));
        if let Some(b) = bias {
            x = _mm512_add_ps(x, _mm512_loadu_ps(b.as_ptr().add(j)));
        }
        if gelu {
            x = gelu16(x);
        }
        _mm512_storeu_ps(p.add(j), x);
    }
    for (j, x) in v.iter_mut().enumerate().skip(n16) {
        if let Some(b) = bias {
            *x += b[j];
        }
        if gelu {
            *x = gelu1(*x);
        }
    }
}

#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn exp_sum256(v: &mut [f32], scale: f32, shift: f32) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut c = v.chunks_exact_mut(8);
    for x in &mut c {
        let p = x.as_mut_ptr();
        let a = _mm256_fmsub_ps(
            _mm256_loadu_ps(p),
            _mm256_set1_ps(scale),
            _mm256_set1_ps(shift),
        );
        let e = exp8(a);
        _mm256_storeu_ps(p, e);
        acc = _mm256_add_ps(acc, e);
    }
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    let mut s = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for x in c.into_remainder() {
        *x = exp(libm::fmaf(*x, scale, -shift));
        s += *x;
    }
    s
}

#[target_feature(enable = "avx512f")]
pub(super) unsafe fn exp_sum512(v: &mut [f32], scale: f32, shift: f32) -> f32 {
    let mut acc = _mm512_setzero_ps();
    let mut c = v.chunks_exact_mut(16);
    for x in &mut c {
        let p = x.as_mut_ptr();
        let a = _mm512_fmsub_ps(
            _mm512_loadu_ps(p),
            _mm512_set1_ps(scale),
            _mm512_set1_ps(shift),
        );
        let e = exp16(a);
        _mm512_storeu_ps(p, e);
        acc = _mm512_add_ps(acc, e);
    }
    let mut s = _mm512_reduce_add_ps(acc);
    // The tail in one masked vector (the scalar twin's values), summed in order as the
    // scalar code does.
    let rest = c.into_remainder();
    let m = tail_mask(rest.len());
    let p = rest.as_mut_ptr();
    let a = _mm512_fmsub_ps(
        _mm512_maskz_loadu_ps(m, p),
        _mm512_set1_ps(scale),
        _mm512_set1_ps(shift),
    );
    _mm512_mask_storeu_ps(p, m, exp16(a));
    for x in rest {
        s += *x;
    }
    s
}

/// The lanes `0..n` (`n < 16`).
#[inline]
fn tail_mask(n: usize) -> __mmask16 {
    debug_assert!(n < 16);
    ((1u32 << n) - 1) as __mmask16
}

// The f32 GEMM micro-kernels (`gemm::Kernel`).

#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn kernel_avx2(
    mr: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    dispatch!(mr, k256, (kc, a, lda, b, c, ldc, load); 1 2 3 4 5 6)
}

#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn kernel_avx512(
    mr: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    dispatch!(mr, k512, (kc, a, lda, b, c, ldc, load); 1 2 3 4 5 6 7 8 9 10 11 12)
}

/// R × 16 tile in 2R ymm accumulators; per k: two B loads, R broadcasts, 2R FMAs.
#[target_feature(enable = "avx2,fma")]
unsafe fn k256<const R: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    const { assert!(NR == 16) };
    let mut lo = [_mm256_setzero_ps(); R];
    let mut hi = [_mm256_setzero_ps(); R];
    if load {
        for i in 0..R {
            lo[i] = _mm256_loadu_ps(c.add(i * ldc));
            hi[i] = _mm256_loadu_ps(c.add(i * ldc + 8));
        }
    }
    for p in 0..kc {
        let b0 = _mm256_loadu_ps(b.add(p * NR));
        let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
        for i in 0..R {
            let av = _mm256_broadcast_ss(&*a.add(i * lda + p));
            lo[i] = _mm256_fmadd_ps(av, b0, lo[i]);
            hi[i] = _mm256_fmadd_ps(av, b1, hi[i]);
        }
    }
    for i in 0..R {
        _mm256_storeu_ps(c.add(i * ldc), lo[i]);
        _mm256_storeu_ps(c.add(i * ldc + 8), hi[i]);
    }
}

/// R × 16 tile in R zmm accumulators; per k: one B load, R broadcast-FMAs.
#[target_feature(enable = "avx512f")]
unsafe fn k512<const R: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    const { assert!(NR == 16) };
    let mut acc = [_mm512_setzero_ps(); R];
    if load {
        for i in 0..R {
            acc[i] = _mm512_loadu_ps(c.add(i * ldc));
        }
    }
    for p in 0..kc {
        let bv = _mm512_loadu_ps(b.add(p * NR));
        for i in 0..R {
            let av = _mm512_set1_ps(*a.add(i * lda + p));
            acc[i] = _mm512_fmadd_ps(av, bv, acc[i]);
        }
    }
    for i in 0..R {
        _mm512_storeu_ps(c.add(i * ldc), acc[i]);
    }
}

#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn widen_f16c(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        i += 8;
    }
    while i < n {
        dst[i] = half::f16::from_bits(src[i]).to_f32();
        i += 1;
    }
}
