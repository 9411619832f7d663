//! Which SIMD code path runs (chosen once), and the vectorised element-wise math shared by the
//! GEMM epilogue and attention: `exp` (for QuickGELU and softmax), row max.
//!
//! `exp` is Cephes' single-precision scheme: `x = n·ln2 + r` (ln2 split in two constants),
//! a degree-6 polynomial for `e^r` on |r| ≤ ln2/2, and `2^n` built in the exponent bits. Its error
//! against libm's correctly rounded `expf` is ≤ 2 ulp over the range used here (tested below).

use core::sync::atomic::{AtomicU8, Ordering};

/// A SIMD code path this CPU can run: a token that only detection makes ([`isa`], [`available`],
/// [`Isa::from_env_value`], which refuse a path the CPU lacks) or [`Isa::PORTABLE`] (plain Rust,
/// runs anywhere). The safe functions that take one ([`bias_act`], [`quick_gelu_slice`],
/// [`exp_scaled_sum`], `gemm::gemm_isa`) therefore never run an instruction the CPU lacks: safe
/// code has no other way to make an `Isa`.
///
/// ```compile_fail
/// // The paths are private: no safe code outside this module names one.
/// let _ = maple_core::simd::Isa(maple_core::simd::Path::Avx512);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Isa(Path);

/// The code paths (crate-internal: kernels match on them; only this module wraps one in an
/// [`Isa`], after detection).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Path {
    /// AVX-512F (+ FMA): 16-lane kernels.
    Avx512,
    /// AVX2 + FMA + F16C: 8-lane kernels.
    Avx2,
    /// Plain Rust (any target, `no_std` without target features).
    Portable,
}

/// Why [`Isa::from_env_value`] gave no path.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IsaRefusal {
    /// The value names no path (`avx512`, `avx2` and `portable` are the names).
    Unknown,
    /// The path exists but this CPU cannot run it.
    Unsupported,
}

impl Isa {
    /// The plain-Rust path: every CPU runs it.
    pub const PORTABLE: Isa = Isa(Path::Portable);

    /// The path a `MAPLE_SIMD` value (`avx512`, `avx2`, `portable`) names, if this CPU runs it.
    pub fn from_env_value(v: &str) -> Result<Isa, IsaRefusal> {
        let path = match v {
            "avx512" => Path::Avx512,
            "avx2" => Path::Avx2,
            "portable" => Path::Portable,
            _ => return Err(IsaRefusal::Unknown),
        };
        available()
            .into_iter()
            .find(|i| i.0 == path)
            .ok_or(IsaRefusal::Unsupported)
    }

    /// How `MAPLE_SIMD` names it.
    pub fn name(self) -> &'static str {
        match self.0 {
            Path::Avx512 => "avx512",
            Path::Avx2 => "avx2+fma",
            Path::Portable => "portable",
        }
    }

    /// Its path, for a kernel to dispatch on.
    pub(crate) fn path(self) -> Path {
        self.0
    }
}

static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// The best path this CPU supports (detected at run time with `std`, from the compile-time
/// target features without). With `std`, `MAPLE_SIMD=avx512|avx2|portable` picks another
/// supported one (for benchmarks and for checking the fallbacks); it also governs the int8
/// (VNNI) and bf16 kernels, which run only on the `avx512` path. The first call may allocate (std
/// reads the environment), so workspaces call it before any forward pass.
pub fn isa() -> Isa {
    match CHOSEN.load(Ordering::Relaxed) {
        1 => Isa(Path::Avx512),
        2 => Isa(Path::Avx2),
        3 => Isa(Path::Portable),
        _ => {
            let i = detect();
            CHOSEN.store(
                match i.0 {
                    Path::Avx512 => 1,
                    Path::Avx2 => 2,
                    Path::Portable => 3,
                },
                Ordering::Relaxed,
            );
            i
        }
    }
}

/// The paths this machine can run, best first (tests run each).
pub fn available() -> alloc::vec::Vec<Isa> {
    let best = detect_hw();
    [Path::Avx512, Path::Avx2, Path::Portable]
        .into_iter()
        .filter(|p| rank(*p) >= rank(best))
        .map(Isa)
        .collect()
}

fn rank(p: Path) -> u8 {
    match p {
        Path::Avx512 => 0,
        Path::Avx2 => 1,
        Path::Portable => 2,
    }
}

fn detect() -> Isa {
    #[cfg(feature = "std")]
    if let Some(Ok(i)) = std::env::var("MAPLE_SIMD")
        .ok()
        .map(|v| Isa::from_env_value(&v))
    {
        return i;
    }
    Isa(detect_hw())
}

fn detect_hw() -> Path {
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    {
        let avx2 = std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c");
        if avx2 && std::is_x86_feature_detected!("avx512f") {
            return Path::Avx512;
        }
        if avx2 {
            return Path::Avx2;
        }
        Path::Portable
    }
    #[cfg(all(target_arch = "x86_64", not(feature = "std")))]
    {
        if cfg!(all(
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c",
            target_feature = "avx512f"
        )) {
            Path::Avx512
        } else if cfg!(all(
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        )) {
            Path::Avx2
        } else {
            Path::Portable
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Path::Portable
    }
}

// Cephes expf constants.
const EXP_HI: f32 = 88.376_26;
const EXP_LO: f32 = -87.336_55;
const LOG2E: f32 = core::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5e-1,
];

/// Scalar twin of the vector `exp` (same steps, same rounding), used for tails and `Portable`.
#[inline]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(EXP_LO, EXP_HI);
    let n = libm::floorf(libm::fmaf(x, LOG2E, 0.5));
    let r = libm::fmaf(-n, LN2_LO, libm::fmaf(-n, LN2_HI, x));
    let mut y = P[0];
    for &c in &P[1..] {
        y = libm::fmaf(y, r, c);
    }
    let y = libm::fmaf(y, r * r, r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `v[j] += bias[j]`, then QuickGELU if `gelu`, in one pass over `v` (a GEMM's output row just
/// written, still in L1): the same values as the add followed by [`quick_gelu_slice`].
pub fn bias_act(isa: Isa, v: &mut [f32], bias: Option<&[f32]>, gelu: bool) {
    if let Some(b) = bias {
        assert!(b.len() >= v.len(), "bias_act: bias shorter than the row");
    }
    match isa.path() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: only detection makes an AVX-512 `Isa`; bias covers v (checked above).
        Path::Avx512 => unsafe { x86::bias_act512(v, bias, gelu) },
        _ => {
            if let Some(b) = bias {
                v.iter_mut().zip(b).for_each(|(x, &bb)| *x += bb);
            }
            if gelu {
                quick_gelu_slice(isa, v);
            }
        }
    }
}

/// `x · sigmoid(1.702 x)` (CLIP's activation, docs/model.md §4) over a slice.
pub fn quick_gelu_slice(isa: Isa, v: &mut [f32]) {
    match isa.path() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: only detection makes an AVX-512 or AVX2+FMA `Isa`.
        Path::Avx512 => unsafe { x86::gelu512(v) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Path::Avx2 => unsafe { x86::gelu256(v) },
        _ => v.iter_mut().for_each(|x| *x = gelu1(*x)),
    }
}

#[inline]
fn gelu1(x: f32) -> f32 {
    x / (1.0 + exp(-1.702 * x))
}

/// `v[i] = exp(v[i]·scale − shift)`; returns the sum (softmax's numerator and denominator).
pub fn exp_scaled_sum(isa: Isa, v: &mut [f32], scale: f32, shift: f32) -> f32 {
    match isa.path() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: only detection makes an AVX-512 or AVX2+FMA `Isa`.
        Path::Avx512 => unsafe { x86::exp_sum512(v, scale, shift) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Path::Avx2 => unsafe { x86::exp_sum256(v, scale, shift) },
        _ => {
            let mut s = 0.0;
            for x in v.iter_mut() {
                *x = exp(*x * scale - shift);
                s += *x;
            }
            s
        }
    }
}

/// Largest element (−∞ for an empty slice).
pub fn max(v: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 8];
    let mut c = v.chunks_exact(8);
    for x in &mut c {
        for l in 0..8 {
            m[l] = m[l].max(x[l]);
        }
    }
    let mut r = m.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &x in c.remainder() {
        r = r.max(x);
    }
    r
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::*;
    use core::arch::x86_64::*;

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_within_two_ulp_of_libm() {
        let xs: Vec<f32> = (-87_000..=88_000).map(|i| i as f32 * 1e-3).collect();
        for isa in available() {
            let mut v = xs.clone();
            exp_scaled_sum(isa, &mut v, 1.0, 0.0);
            for (&x, &y) in xs.iter().zip(&v) {
                let want = libm::expf(x);
                assert!(ulps(y, want) <= 2, "{isa:?} exp({x}) = {y}, libm {want}");
            }
        }
        // Far outside the range: clamped, finite, no NaN.
        assert!(exp(-1000.0) >= 0.0 && exp(-1000.0) < 1e-37);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn quick_gelu_values() {
        // x·σ(1.702x) at x = 1: 1 / (1 + e^-1.702) = 0.84579576..., on every path (the 16
        // copies fill one vector and leave the scalar tail nothing).
        for isa in available() {
            let quick_gelu = |x: f32| {
                let mut v = [x; 16];
                quick_gelu_slice(isa, &mut v);
                v[0]
            };
            assert!((quick_gelu(1.0) - 0.845_795_77).abs() < 1e-6);
            assert_eq!(quick_gelu(0.0), 0.0);
            assert!(quick_gelu(-20.0).abs() < 1e-12);
        }
    }

    #[test]
    fn avx512_exp_and_gelu_equal_their_scalar_twins_bit_for_bit_tails_and_nan_included() {
        let Some(avx512) = available().into_iter().find(|i| i.path() == Path::Avx512) else {
            return;
        };
        for n in 0..50 {
            // Every 7th value NaN (in the vector body and in the tails).
            let xs: Vec<f32> = (0..n)
                .map(|i| match i % 7 {
                    3 => f32::NAN,
                    _ => (i as f32 - 23.0) * 0.731,
                })
                .collect();
            let mut g = xs.clone();
            quick_gelu_slice(avx512, &mut g);
            let mut e = xs.clone();
            exp_scaled_sum(avx512, &mut e, 0.37, 1.5);
            for i in 0..n {
                if xs[i].is_nan() {
                    assert!(g[i].is_nan() && e[i].is_nan(), "NaN lost: n={n} i={i}");
                    continue;
                }
                assert_eq!(g[i].to_bits(), gelu1(xs[i]).to_bits(), "gelu n={n} i={i}");
                let want = exp(libm::fmaf(xs[i], 0.37, -1.5));
                assert_eq!(e[i].to_bits(), want.to_bits(), "exp n={n} i={i}");
            }
        }
    }

    #[test]
    fn gelu_and_softmax_sum_agree_across_paths() {
        let xs: Vec<f32> = (0..1001).map(|i| (i as f32 - 500.0) * 0.037).collect();
        for isa in available() {
            let mut g = xs.clone();
            quick_gelu_slice(isa, &mut g);
            for (&x, &y) in xs.iter().zip(&g) {
                let want = x as f64 / (1.0 + (-1.702 * x as f64).exp());
                assert!(
                    (y as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "{isa:?} {x}"
                );
            }
            let mut e = xs.clone();
            let mx = max(&e);
            let s = exp_scaled_sum(isa, &mut e, 0.5, 0.5 * mx);
            let want: f64 = xs
                .iter()
                .map(|&x| (0.5 * (x as f64 - mx as f64)).exp())
                .sum();
            assert!(
                (s as f64 - want).abs() <= 1e-5 * want,
                "{isa:?} {s} vs {want}"
            );
        }
    }
}
