//! Bf16 GEMM for the image tower's Linears (a measured experiment, `maple-bench --bf16`).
//!
//! Weights are rounded once to bf16 (round to nearest even) and laid out in panels of `NR`
//! columns with k in pairs, `[panel][k/2][NR][2]`; each call rounds the rows of A to bf16 the
//! same way, and AVX-512 BF16's `vdpbf16ps` (x86) or Arm BF16's `bfdot` (aarch64) adds two bf16
//! products per lane to f32 accumulators:
//!
//! `C[i,j] = Σ_k bf16(A[i,k])·bf16(W[j,k]) + bias[j]`, then the epilogue.
//!
//! The products of two bf16 values are exact in f32, so the portable twin (same pairs, same order
//! of f32 additions) differs from the hardware only by its rounding of the pair sums.

use crate::buf::{starts_aligned, Buf};
use crate::gemm::{Act, Epilogue, PackedMatrix, SharedBytes, NR};
use crate::lowp::{for_each_tile, Tile, MR};
use crate::par::{split, Parallel};
use crate::simd;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

/// `x` rounded to the nearest bf16 (ties to even), as its 16 bits. NaN stays NaN.
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((b >> 16) & 1);
    (b.wrapping_add(round) >> 16) as u16
}

/// The f32 value of bf16 bits.
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// A weight `B [k, n]` as bf16 panels `[panel][k2][NR][2]` (`k2 = ⌈k/2⌉`, zero padding).
#[derive(Debug, Clone)]
pub struct Bf16Matrix {
    /// Input width.
    pub k: usize,
    /// Output width.
    pub n: usize,
    k2: usize,
    data: Buf<u16>,
}

impl Bf16Matrix {
    /// From a PyTorch Linear weight `W [n, k]`.
    pub fn from_out_in(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight length");
        let k2 = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut data = vec![0u16; panels * k2 * NR * 2];
        for j in 0..n {
            let (p, jj) = (j / NR, j % NR);
            for (kk, &v) in w[j * k..(j + 1) * k].iter().enumerate() {
                data[p * k2 * NR * 2 + (kk / 2) * NR * 2 + jj * 2 + kk % 2] = to_bf16(v);
            }
        }
        Bf16Matrix {
            k,
            n,
            k2,
            data: Buf::Owned(data),
        }
    }

    /// Rounds a packed f32/f16 matrix to bf16.
    pub fn from_packed(p: &PackedMatrix) -> Self {
        Self::from_out_in(&p.to_out_in(), p.n, p.k)
    }

    /// Bytes held (a matrix read in place from shared bytes holds none of its own).
    pub fn bytes(&self) -> usize {
        self.data.held_bytes()
    }

    /// Whether the matrix is read in place from shared bytes ([`Self::from_shared`]).
    pub fn is_shared(&self) -> bool {
        self.data.is_shared()
    }

    /// Length of [`Self::to_bytes`] for a `[k, n]` matrix.
    pub fn byte_len(k: usize, n: usize) -> usize {
        2 * n.div_ceil(NR) * k.div_ceil(2) * NR * 2
    }

    /// The panels as bytes (native order), for a cache file; [`Self::from_shared`] reads them in place.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.data.iter().flat_map(|v| v.to_ne_bytes()).collect()
    }

    /// A `[k, n]` matrix read in place from `bytes.bytes()[at..]`, laid out as
    /// [`Self::to_bytes`] writes it (no copy). `None` unless it fits inside the buffer and
    /// starts 64-byte aligned in memory.
    pub fn from_shared(k: usize, n: usize, bytes: Arc<dyn SharedBytes>, at: usize) -> Option<Self> {
        if !starts_aligned(bytes.bytes(), at, 64) {
            return None;
        }
        Some(Bf16Matrix {
            k,
            n,
            k2: k.div_ceil(2),
            data: Buf::shared(bytes, at, Self::byte_len(k, n) / 2)?,
        })
    }
}

/// Per-call activation buffer, sized once: `rows × 2·k2` bf16 values.
pub struct Bf16Scratch {
    a: Vec<u16>,
}

impl Bf16Scratch {
    /// Scratch for up to `rows` rows of width up to `max_k`.
    pub fn new(rows: usize, max_k: usize) -> Self {
        Bf16Scratch {
            a: vec![0; rows * max_k.next_multiple_of(2)],
        }
    }
}

/// Whether a bf16 kernel runs here (else the portable one): AVX-512 BF16 where the CPU has it
/// and the chosen path ([`simd::isa`], which `MAPLE_SIMD` sets) is `avx512`; Arm's BF16
/// (`bfdot`) where the CPU has it and the path is `neon`.
pub fn has_bf16() -> bool {
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    {
        simd::isa().path() == simd::Path::Avx512 && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(target_arch = "aarch64")]
    {
        simd::isa().path() == simd::Path::Neon && simd::neon::has_bf16()
    }
    #[cfg(not(any(all(target_arch = "x86_64", feature = "std"), target_arch = "aarch64")))]
    {
        false
    }
}

/// `C = A·B (+ epilogue)` with B bf16, A rounded to bf16 into `s` on the way.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16(
    par: &Parallel,
    a: &[f32],
    lda: usize,
    m: usize,
    b: &Bf16Matrix,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue<'_>,
    s: &mut Bf16Scratch,
) {
    gemm_bf16_with(has_bf16(), par, a, lda, m, b, c, ldc, ep, s)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bf16_with(
    hw: bool,
    par: &Parallel,
    a: &[f32],
    lda: usize,
    m: usize,
    b: &Bf16Matrix,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue<'_>,
    s: &mut Bf16Scratch,
) {
    let (k, k2, n) = (b.k, b.k2, b.n);
    if m == 0 || n == 0 {
        return;
    }
    let kp = 2 * k2;
    assert!(lda >= k && ldc >= n, "gemm_bf16 strides");
    assert!(a.len() >= (m - 1) * lda + k && c.len() >= (m - 1) * ldc + n);
    assert!(s.a.len() >= m * kp, "gemm_bf16 scratch");
    if let Some(bias) = ep.bias {
        assert!(bias.len() >= n);
    }
    // 1. Round the rows of A (threads split rows).
    let ap = s.a.as_mut_ptr() as usize;
    par.run(&|t, nt| {
        let (lo, hi) = split(m, t, nt);
        for i in lo..hi {
            // SAFETY: row i of the bf16 buffer belongs to this thread alone.
            let q = unsafe { core::slice::from_raw_parts_mut((ap as *mut u16).add(i * kp), kp) };
            for (d, &v) in q.iter_mut().zip(&a[i * lda..i * lda + k]) {
                *d = to_bf16(v);
            }
            q[k..].fill(0);
        }
    });
    // 2. Products per (row tile, column panel), then bias and accumulation per row.
    let ua: &[u16] = &s.a;
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = hw; // one kernel here
    let isa = simd::isa();
    let gelu = ep.act == Act::QuickGelu;
    let bd: &[u16] = &b.data; // once (a shared weight's look-up goes through its owner)
    let kernel = |acc: &mut [[f32; NR]; MR], t: &mut Tile| {
        let bp = &bd[t.p() * kp * NR..(t.p() + 1) * kp * NR];
        let arows = &ua[t.i0() * kp..(t.i0() + t.mr()) * kp];
        #[cfg(target_arch = "x86_64")]
        if hw {
            // SAFETY: AVX-512 BF16 detected; slices sized above.
            unsafe { x86::tile(t.mr(), k2, arows, bp, acc) };
        } else {
            tile_portable(t.mr(), k2, arows, bp, acc);
        }
        #[cfg(target_arch = "aarch64")]
        if hw {
            // SAFETY: bf16 detected (`has_bf16`, the only source of `hw`); slices sized above.
            unsafe { simd::neon::bf16_tile(t.mr(), k2, arows, bp, acc) };
        } else {
            tile_portable(t.mr(), k2, arows, bp, acc);
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        tile_portable(t.mr(), k2, arows, bp, acc);
        #[cfg(target_arch = "x86_64")]
        if isa.path() == simd::Path::Avx512 && t.nv() == NR {
            // SAFETY: AVX-512F; a whole panel: bias (len ≥ n) holds NR values from n0.
            unsafe { x86::epilogue(acc, t, &ep) };
            return;
        }
        let n0 = t.n0();
        for (i, a) in acc.iter().enumerate().take(t.mr()) {
            let out = t.row(i);
            for (j, o) in out.iter_mut().enumerate() {
                let mut v = a[j];
                if let Some(bias) = ep.bias {
                    v += bias[n0 + j];
                }
                *o = if ep.accumulate { *o + v } else { v };
            }
            if gelu {
                simd::quick_gelu_slice(isa, out);
            }
        }
    };
    for_each_tile(par, m, n, c, ldc, kernel);
}

/// `acc[i][j] = Σ_q (a[i,2q]·b[q,j,0] + a[i,2q+1]·b[q,j,1])`, pair by pair as `vdpbf16ps`.
fn tile_portable(mr: usize, k2: usize, a: &[u16], b: &[u16], acc: &mut [[f32; NR]; MR]) {
    for (i, row) in acc.iter_mut().enumerate().take(mr) {
        row.fill(0.0);
        let ar = &a[i * 2 * k2..(i + 1) * 2 * k2];
        for q in 0..k2 {
            let bq = &b[q * NR * 2..(q + 1) * NR * 2];
            let (a0, a1) = (from_bf16(ar[2 * q]), from_bf16(ar[2 * q + 1]));
            for (j, v) in row.iter_mut().enumerate() {
                *v += a0 * from_bf16(bq[2 * j]) + a1 * from_bf16(bq[2 * j + 1]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Act, Epilogue, Tile, MR, NR};
    use crate::simd::x86::store16;
    use core::arch::x86_64::*;

    /// A tile of one whole panel: `out = [out +] act(acc + bias)`, each row in registers.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn epilogue(acc: &[[f32; NR]; MR], t: &mut Tile, ep: &Epilogue<'_>) {
        let n0 = t.n0();
        assert!(t.nv() == NR);
        let bias = ep
            .bias
            .map_or(core::ptr::null(), |b| b[n0..n0 + NR].as_ptr());
        let gelu = ep.act == Act::QuickGelu;
        for (i, a) in acc.iter().enumerate().take(t.mr()) {
            let v = _mm512_loadu_ps(a.as_ptr());
            store16(t.row(i).as_mut_ptr(), v, bias, gelu, ep.accumulate);
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile(
        mr: usize,
        k2: usize,
        a: &[u16],
        b: &[u16],
        acc: &mut [[f32; NR]; MR],
    ) {
        match mr {
            12 => t::<12>(k2, a, b, acc),
            11 => t::<11>(k2, a, b, acc),
            10 => t::<10>(k2, a, b, acc),
            9 => t::<9>(k2, a, b, acc),
            8 => t::<8>(k2, a, b, acc),
            7 => t::<7>(k2, a, b, acc),
            6 => t::<6>(k2, a, b, acc),
            5 => t::<5>(k2, a, b, acc),
            4 => t::<4>(k2, a, b, acc),
            3 => t::<3>(k2, a, b, acc),
            2 => t::<2>(k2, a, b, acc),
            _ => t::<1>(k2, a, b, acc),
        }
    }

    /// R × 16 f32 accumulators; per k pair: one 64-byte B load, R broadcasts of 2 A values.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::needless_range_loop)]
    unsafe fn t<const R: usize>(k2: usize, a: &[u16], b: &[u16], acc: &mut [[f32; NR]; MR]) {
        debug_assert!(a.len() >= R * 2 * k2 && b.len() >= k2 * NR * 2);
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        let mut s = [_mm512_setzero_ps(); R];
        for q in 0..k2 {
            let bv: __m512bh =
                core::mem::transmute(_mm512_loadu_si512(bp.add(q * NR * 2) as *const _));
            for i in 0..R {
                let pair = (ap.add(i * 2 * k2 + 2 * q) as *const i32).read_unaligned();
                let av: __m512bh = core::mem::transmute(_mm512_set1_epi32(pair));
                s[i] = _mm512_dpbf16_ps(s[i], av, bv);
            }
        }
        for i in 0..R {
            _mm512_storeu_ps(acc[i].as_mut_ptr(), s[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::Rng;

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2⁻⁸ is halfway between bf16 1.0 and 1 + 2⁻⁷: ties to the even 1.0.
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    /// The same rounding written out directly, summed in f64 (independent of the layout).
    fn reference(a: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f64> {
        let r = |x: f32| from_bf16(to_bf16(x)) as f64;
        let mut c = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|kk| r(a[i * k + kk]) * r(w[j * k + kk])).sum();
            }
        }
        c
    }

    #[test]
    fn bf16_gemm_matches_the_rounded_product_on_odd_shapes() {
        let mut rng = Rng::new(7);
        for (m, k, n) in [(1, 1, 1), (13, 77, 35), (199, 768, 17), (25, 3, 40)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.uniform(1.0)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rng.uniform(1.0)).collect();
            let bias: Vec<f32> = (0..n).map(|_| rng.uniform(1.0)).collect();
            let b = Bf16Matrix::from_out_in(&w, n, k);
            let want = reference(&a, m, k, &w, n);
            let mut paths = vec![false];
            if has_bf16() {
                paths.push(true);
            }
            for hw in paths {
                #[cfg(feature = "std")]
                let pools = [Parallel::sequential(), Parallel::with_threads(3)];
                #[cfg(not(feature = "std"))]
                let pools = [Parallel::sequential()];
                for par in pools {
                    let mut s = Bf16Scratch::new(m, k);
                    let mut c = vec![0.0f32; m * n];
                    let ep = Epilogue::store(Some(&bias));
                    gemm_bf16_with(hw, &par, &a, k, m, &b, &mut c, n, ep, &mut s);
                    for (idx, (&g, &r)) in c.iter().zip(&want).enumerate() {
                        let r = r + bias[idx % n] as f64;
                        // f32 accumulation of exact products: |error| ≤ k·2⁻²³·Σ|terms|.
                        let tol = 1e-6 * (k as f64) * (1.0 + r.abs()) + 1e-5;
                        assert!(
                            (g as f64 - r).abs() <= tol,
                            "hw {hw} m {m} k {k} n {n} at {idx}: {g} vs {r}"
                        );
                    }
                }
            }
        }
    }
}
