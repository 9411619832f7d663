//! Which SIMD code path runs (chosen once), and the vectorised element-wise math shared by the
//! GEMM epilogue and attention: `exp` (for QuickGELU and softmax), row max.
//!
//! `exp` is Cephes' single-precision scheme: `x = n·ln2 + r` (ln2 split in two constants),
//! a degree-6 polynomial for `e^r` on |r| ≤ ln2/2, and `2^n` built in the exponent bits. Its error
//! against libm's correctly rounded `expf` is ≤ 2 ulp over the range used here (tested below).
//!
//! Each architecture's kernels live in one file beside this one (`simd/x86.rs`, `simd/neon.rs`,
//! `simd/wasm.rs`): element-wise math, the f32 GEMM micro-kernel and the int8 tiles. A new
//! architecture is a new file, a `Path` variant and its arm in `Path::supported`.

use core::sync::atomic::{AtomicU8, Ordering};

/// A micro-kernel's row count at run time → its const-generic instance: `dispatch!(mr, k,
/// (args...); 1 2 3)` calls `k::<mr>(args...)` for each listed count (callers never pass another).
#[cfg_attr(
    not(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        all(target_arch = "wasm32", target_feature = "simd128")
    )),
    allow(unused_macros)
)] // a build without SIMD kernels (scalar wasm) has no caller
macro_rules! dispatch {
    ($mr:expr, $f:ident, $args:tt; $($r:literal)*) => {
        match $mr {
            $($r => $f::<$r> $args,)*
            _ => unreachable!(),
        }
    };
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub(crate) mod wasm;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

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
/// [`Isa`], after detection). Every variant exists on every target so that `MAPLE_SIMD` can
/// name one this build lacks; [`Path::supported`] says no to it there.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Path {
    /// x86-64 AVX-512F (+ AVX2, FMA, F16C): 16-lane kernels.
    Avx512,
    /// x86-64 AVX2 + FMA + F16C: 8-lane kernels.
    Avx2,
    /// aarch64 Advanced SIMD (NEON, with FMA): 4-lane kernels; int8 through `sdot` (dotprod) or
    /// `usdot` (i8mm) where the CPU has them.
    Neon,
    /// wasm32 SIMD128 (a compile-time choice: the browser build enables it): 4-lane kernels,
    /// multiply and add unfused.
    Simd128,
    /// Plain Rust (any target, `no_std` without target features).
    Portable,
}

/// Why [`Isa::from_env_value`] gave no path.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IsaRefusal {
    /// The value names no path (see [`names`]).
    Unknown,
    /// The path exists but this CPU (or this build) cannot run it.
    Unsupported,
}

impl Path {
    /// Best first.
    const ALL: [Path; 5] = [
        Path::Avx512,
        Path::Avx2,
        Path::Neon,
        Path::Simd128,
        Path::Portable,
    ];

    /// How `MAPLE_SIMD` names it.
    fn env_name(self) -> &'static str {
        match self {
            Path::Avx512 => "avx512",
            Path::Avx2 => "avx2",
            Path::Neon => "neon",
            Path::Simd128 => "simd128",
            Path::Portable => "portable",
        }
    }

    /// Whether this CPU (and this build) runs it: the one place that decides.
    fn supported(self) -> bool {
        match self {
            Path::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => x86::has_avx2_fma_f16c(),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => x86::has_avx2_fma_f16c() && x86::has_avx512f(),
            #[cfg(target_arch = "aarch64")]
            Path::Neon => neon::has_neon(),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Path::Simd128 => true,
            _ => false,
        }
    }
}

/// The `MAPLE_SIMD` values that name a path of this architecture, best first (for messages).
pub fn names() -> alloc::vec::Vec<&'static str> {
    let arch: &[Path] = if cfg!(target_arch = "x86_64") {
        &[Path::Avx512, Path::Avx2]
    } else if cfg!(target_arch = "aarch64") {
        &[Path::Neon]
    } else if cfg!(target_arch = "wasm32") {
        &[Path::Simd128]
    } else {
        &[]
    };
    arch.iter()
        .chain(&[Path::Portable])
        .map(|p| p.env_name())
        .collect()
}

impl Isa {
    /// The plain-Rust path: every CPU runs it.
    pub const PORTABLE: Isa = Isa(Path::Portable);

    /// The path a `MAPLE_SIMD` value (one of [`names`]) names, if this CPU runs it.
    pub fn from_env_value(v: &str) -> Result<Isa, IsaRefusal> {
        let path = Path::ALL
            .into_iter()
            .find(|p| p.env_name() == v)
            .ok_or(IsaRefusal::Unknown)?;
        if path.supported() {
            Ok(Isa(path))
        } else {
            Err(IsaRefusal::Unsupported)
        }
    }

    /// Its name for people (and for reports).
    pub fn name(self) -> &'static str {
        match self.0 {
            Path::Avx2 => "avx2+fma",
            Path::Simd128 if cfg!(target_feature = "relaxed-simd") => "simd128+relaxed",
            p => p.env_name(),
        }
    }

    /// Its path, for a kernel to dispatch on.
    pub(crate) fn path(self) -> Path {
        self.0
    }
}

static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// The best path this CPU supports (detected at run time with `std`, from the compile-time
/// target features without). With `std`, `MAPLE_SIMD` (one of [`names`]) picks another
/// supported one (for benchmarks and for checking the fallbacks); it also governs the int8
/// and bf16 kernels, which run only on a SIMD path. The first call may allocate
/// (std reads the environment), so workspaces call it before any forward pass.
pub fn isa() -> Isa {
    match CHOSEN.load(Ordering::Relaxed) {
        0 => {
            let i = detect();
            let at = Path::ALL.iter().position(|p| *p == i.0).unwrap_or(4);
            CHOSEN.store(at as u8 + 1, Ordering::Relaxed);
            i
        }
        c => Isa(Path::ALL[(c as usize - 1).min(4)]),
    }
}

/// The paths this machine can run, best first (tests run each).
pub fn available() -> alloc::vec::Vec<Isa> {
    Path::ALL
        .into_iter()
        .filter(|p| p.supported())
        .map(Isa)
        .collect()
}

fn detect() -> Isa {
    #[cfg(feature = "std")]
    if let Some(Ok(i)) = std::env::var("MAPLE_SIMD")
        .ok()
        .map(|v| Isa::from_env_value(&v))
    {
        return i;
    }
    available().into_iter().next().unwrap_or(Isa::PORTABLE)
}

/// The int8 dot-product kernel (crate-internal like [`Path`]: made only from detection).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Int8Kernel {
    /// x86-64 AVX-512 VNNI `vpdpbusd` (u8 × s8), with AVX-512BW.
    Vnni,
    /// aarch64 i8mm `usdot` (u8 × s8).
    Usdot,
    /// aarch64 dotprod `sdot` (s8 × s8: activations shifted by −128, corrected by the column
    /// sums).
    Sdot,
    /// wasm32 SIMD128 `i32x4.dot_i16x8_s` on bytes widened to 16 bits.
    WasmDot,
    /// Plain Rust.
    Portable,
}

impl Int8Kernel {
    fn supported(self, path: Path) -> bool {
        match self {
            Int8Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Vnni => path == Path::Avx512 && x86::has_vnni(),
            #[cfg(target_arch = "aarch64")]
            Int8Kernel::Usdot => path == Path::Neon && neon::has_i8mm(),
            #[cfg(target_arch = "aarch64")]
            Int8Kernel::Sdot => path == Path::Neon && neon::has_dotprod(),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Int8Kernel::WasmDot => path == Path::Simd128,
            _ => {
                let _ = path;
                false
            }
        }
    }

    /// What a report calls it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Int8Kernel::Vnni => "avx512-vnni",
            Int8Kernel::Usdot => "neon-i8mm",
            Int8Kernel::Sdot => "neon-dotprod",
            Int8Kernel::WasmDot => "simd128-dot",
            Int8Kernel::Portable => "portable",
        }
    }
}

impl Int8Kernel {
    /// Best first.
    const ALL: [Int8Kernel; 5] = [
        Int8Kernel::Vnni,
        Int8Kernel::Usdot,
        Int8Kernel::Sdot,
        Int8Kernel::WasmDot,
        Int8Kernel::Portable,
    ];
}

/// The int8 kernels the chosen path can run, best first (tests run each).
#[cfg(test)]
pub(crate) fn int8_kernels() -> alloc::vec::Vec<Int8Kernel> {
    let path = isa().path();
    Int8Kernel::ALL
        .into_iter()
        .filter(|k| k.supported(path))
        .collect()
}

/// The int8 kernel `--precision int8` runs here: the best of [`int8_kernels`]. Asked once per
/// int8 GEMM, so it allocates nothing.
pub(crate) fn int8_kernel() -> Int8Kernel {
    let path = isa().path();
    Int8Kernel::ALL
        .into_iter()
        .find(|k| k.supported(path))
        .unwrap_or(Int8Kernel::Portable)
}

/// The name of the int8 kernel that runs here (for reports: `avx512-vnni`, `neon-i8mm`,
/// `neon-dotprod`, `simd128-dot`, `portable`).
pub fn int8_kernel_name() -> &'static str {
    int8_kernel().name()
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
        #[cfg(target_arch = "aarch64")]
        // SAFETY: only detection makes a NEON `Isa`.
        Path::Neon => unsafe { neon::gelu(v) },
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Path::Simd128 => wasm::gelu(v),
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
        #[cfg(target_arch = "aarch64")]
        // SAFETY: only detection makes a NEON `Isa`.
        Path::Neon => unsafe { neon::exp_sum(v, scale, shift) },
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Path::Simd128 => wasm::exp_sum(v, scale, shift),
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

/// Largest element (−∞ for an empty slice); a NaN element is skipped (except in the wasm build
/// with relaxed SIMD, where the result is then NaN).
pub fn max(v: &[f32]) -> f32 {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    return wasm::max(v);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    max_portable(v)
}

#[cfg_attr(
    all(target_arch = "wasm32", target_feature = "simd128"),
    allow(dead_code)
)]
fn max_portable(v: &[f32]) -> f32 {
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

    /// `max` (SIMD128 in the wasm build) against a fold with `f32::max` over every length up to
    /// 70, the maximum placed at each position; and with NaNs, which the fold skips (the relaxed
    /// wasm build returns NaN instead).
    #[test]
    fn max_is_the_largest_element() {
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        for n in 1..=70usize {
            for at in 0..n {
                let mut xs: Vec<f32> = (0..n).map(|i| -((i * 37 % 11) as f32) - 0.5).collect();
                xs[at] = 3.25;
                assert_eq!(max(&xs), 3.25, "n={n} at={at}");
                let want = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                assert_eq!(want, 3.25);
                xs[(at + 1) % n] = f32::NAN;
                let got = max(&xs);
                let skipped = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if cfg!(target_feature = "relaxed-simd") {
                    assert!(got.is_nan() || got == skipped, "n={n} at={at}: {got}");
                } else {
                    assert_eq!(got, skipped, "n={n} at={at}");
                }
            }
        }
    }

    /// Every path against the portable twin on values with NaNs in the vector body and in the
    /// tails: NaN stays NaN; NEON (the twin's own steps) to the bit, the others within 1e-6
    /// relative (AVX fuses `x·scale − shift`, whose rounding `exp` carries into its result;
    /// SIMD128's `exp` is unfused).
    #[test]
    fn every_path_keeps_nan_and_matches_the_portable_twin() {
        for isa in available() {
            let exact = isa.path() == Path::Neon;
            for n in 0..50 {
                let xs: Vec<f32> = (0..n)
                    .map(|i| match i % 7 {
                        3 => f32::NAN,
                        _ => (i as f32 - 23.0) * 0.731,
                    })
                    .collect();
                let run = |isa: Isa| {
                    let (mut g, mut e) = (xs.clone(), xs.clone());
                    quick_gelu_slice(isa, &mut g);
                    exp_scaled_sum(isa, &mut e, 0.37, 1.5);
                    (g, e)
                };
                let ((g, e), (gp, ep)) = (run(isa), run(Isa::PORTABLE));
                for i in 0..n {
                    if xs[i].is_nan() {
                        assert!(
                            g[i].is_nan() && e[i].is_nan(),
                            "{isa:?} NaN lost: n={n} i={i}"
                        );
                        continue;
                    }
                    for (what, y, want) in [("gelu", g[i], gp[i]), ("exp", e[i], ep[i])] {
                        let close = (y - want).abs() <= 1e-6 * want.abs();
                        let ok = if exact {
                            y.to_bits() == want.to_bits()
                        } else {
                            close
                        };
                        assert!(ok, "{isa:?} {what} n={n} i={i}: {y} vs {want}");
                    }
                }
            }
        }
    }

    /// The SIMD path of the architecture the tests run on is there (so the tests above ran it),
    /// and the names `MAPLE_SIMD` takes are this architecture's.
    #[test]
    fn this_architecture_s_path_is_detected() {
        let paths: Vec<Path> = available().iter().map(|i| i.path()).collect();
        if cfg!(target_arch = "aarch64") {
            assert_eq!(paths, [Path::Neon, Path::Portable]);
            assert_eq!(names(), ["neon", "portable"]);
        }
        if cfg!(all(target_arch = "wasm32", target_feature = "simd128")) {
            assert_eq!(paths, [Path::Simd128, Path::Portable]);
            assert_eq!(names(), ["simd128", "portable"]);
        }
        if cfg!(target_arch = "x86_64") {
            assert_eq!(names(), ["avx512", "avx2", "portable"]);
        }
        assert_eq!(paths.last(), Some(&Path::Portable));
        assert_eq!(Isa::from_env_value("sse9"), Err(IsaRefusal::Unknown));
        for p in Path::ALL {
            let got = Isa::from_env_value(p.env_name());
            assert_eq!(got.is_ok(), paths.contains(&p), "{p:?}");
        }
    }
}
