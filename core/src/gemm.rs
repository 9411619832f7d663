//! Cache-blocked f32 GEMM: `C[m, n] (+)= A[m, k] · B[k, n] + bias`, with an optional QuickGELU.
//!
//! B is a weight, packed once at load time into panels of `NR` columns (`[k][NR]` each, zero
//! padded), so the micro-kernel streams it contiguously. The loops are
//! `k-block (KC) → m-block (MC) → panel → MR-row tile`: an A block (MC × KC) stays in L2 while a
//! B panel slice (KC × NR, 16 KiB) stays in L1. Threads split the panels (disjoint columns of C).
//! Micro-kernels: AVX2+FMA (x86_64, detected at run time with `std`, at compile time without) and
//! a portable one; both accumulate in f32 in the same k order.

use crate::ops::quick_gelu;
use crate::par::{split, Parallel, SyncPtr};
use alloc::vec;
use alloc::vec::Vec;

pub const NR: usize = 16;
pub const MR: usize = 6;
const KC: usize = 256;
const MC: usize = 96;

/// A weight matrix B [k, n] packed into column panels.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    pub k: usize,
    pub n: usize,
    data: Vec<f32>,
}

impl PackedMatrix {
    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// From a PyTorch/HF Linear weight `W [n, k]` (y = x·Wᵀ): B = Wᵀ.
    pub fn from_out_in(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight length");
        Self::pack(k, n, |kk, j| w[j * k + kk])
    }

    /// From a matrix already laid out `[k, n]` (OpenAI's `visual.proj`).
    pub fn from_in_out(b: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(b.len(), n * k, "weight length");
        Self::pack(k, n, |kk, j| b[kk * n + j])
    }

    /// The weight back in PyTorch Linear layout `[n, k]` (for uploading to another backend).
    pub fn to_out_in(&self) -> Vec<f32> {
        let mut w = vec![0.0f32; self.n * self.k];
        for j in 0..self.n {
            let (p, jj) = (j / NR, j % NR);
            for kk in 0..self.k {
                w[j * self.k + kk] = self.data[p * self.k * NR + kk * NR + jj];
            }
        }
        w
    }

    fn pack(k: usize, n: usize, at: impl Fn(usize, usize) -> f32) -> Self {
        let panels = n.div_ceil(NR);
        let mut data = vec![0.0f32; panels * k * NR];
        for p in 0..panels {
            let base = p * k * NR;
            for kk in 0..k {
                for jj in 0..NR {
                    let j = p * NR + jj;
                    if j < n {
                        data[base + kk * NR + jj] = at(kk, j);
                    }
                }
            }
        }
        PackedMatrix { k, n, data }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Act {
    None,
    QuickGelu,
}

/// What happens to each output element after the dot product.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub act: Act,
    /// `C += result` (fused residual add) instead of `C = result`.
    pub accumulate: bool,
}

impl<'a> Epilogue<'a> {
    pub fn store(bias: Option<&'a [f32]>) -> Self {
        Epilogue {
            bias,
            act: Act::None,
            accumulate: false,
        }
    }
    pub fn gelu(bias: &'a [f32]) -> Self {
        Epilogue {
            bias: Some(bias),
            act: Act::QuickGelu,
            accumulate: false,
        }
    }
    pub fn residual(bias: &'a [f32]) -> Self {
        Epilogue {
            bias: Some(bias),
            act: Act::None,
            accumulate: true,
        }
    }
}

type Tile = [[f32; NR]; MR];

/// `C = A·B (+ epilogue)`; A is `m` rows with stride `lda`, C `m` rows with stride `ldc`.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    par: &Parallel,
    a: &[f32],
    lda: usize,
    m: usize,
    b: &PackedMatrix,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue<'_>,
) {
    let (k, n) = (b.k, b.n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(lda >= k && ldc >= n, "gemm strides");
    assert!(a.len() >= (m - 1) * lda + k, "gemm: A too short");
    assert!(c.len() >= (m - 1) * ldc + n, "gemm: C too short");
    if let Some(bias) = ep.bias {
        assert!(bias.len() >= n, "gemm: bias too short");
        assert!(ep.act == Act::None || !ep.accumulate);
    }
    let cp = SyncPtr(c.as_mut_ptr());
    let kern = kernel();
    let panels = b.panels();
    par.run(&|t, nt| {
        let (p_lo, p_hi) = split(panels, t, nt);
        // SAFETY: each thread writes only the columns of its own panels; bounds checked above.
        unsafe { gemm_panels(kern, a, lda, m, b, cp, ldc, ep, p_lo, p_hi) }
    });
}

#[allow(clippy::too_many_arguments)]
unsafe fn gemm_panels(
    kern: Kernel,
    a: &[f32],
    lda: usize,
    m: usize,
    b: &PackedMatrix,
    c: SyncPtr,
    ldc: usize,
    ep: Epilogue<'_>,
    p_lo: usize,
    p_hi: usize,
) {
    let (k, n) = (b.k, b.n);
    let c = c.get();
    let mut tile: Tile = [[0.0; NR]; MR];
    let mut k0 = 0;
    while k0 < k || (k == 0 && k0 == 0) {
        let kc = KC.min(k - k0);
        let (first, last) = (k0 == 0, k0 + kc == k);
        for m0 in (0..m).step_by(MC) {
            let m1 = (m0 + MC).min(m);
            for p in p_lo..p_hi {
                let n0 = p * NR;
                let nv = NR.min(n - n0);
                let bp = b.data.as_ptr().add(p * k * NR + k0 * NR);
                let mut i0 = m0;
                while i0 < m1 {
                    let mr = MR.min(m1 - i0);
                    for (i, row) in tile.iter_mut().enumerate().take(mr) {
                        let crow = c.add((i0 + i) * ldc + n0);
                        if first && !ep.accumulate {
                            *row = [0.0; NR];
                        } else {
                            for (j, v) in row.iter_mut().enumerate().take(nv) {
                                *v = *crow.add(j);
                            }
                        }
                    }
                    kern(mr, kc, a.as_ptr().add(i0 * lda + k0), lda, bp, &mut tile);
                    for (i, row) in tile.iter().enumerate().take(mr) {
                        let crow = c.add((i0 + i) * ldc + n0);
                        for (j, &v) in row.iter().enumerate().take(nv) {
                            let mut v = v;
                            if last {
                                if let Some(bias) = ep.bias {
                                    v += bias[n0 + j];
                                }
                                if ep.act == Act::QuickGelu {
                                    v = quick_gelu(v);
                                }
                            }
                            *crow.add(j) = v;
                        }
                    }
                    i0 += mr;
                }
            }
        }
        if k == 0 {
            break;
        }
        k0 += kc;
    }
}

/// `tile[i][j] += Σ_p a[i·lda + p] · b[p·NR + j]` for i < mr, p < kc.
type Kernel = unsafe fn(usize, usize, *const f32, usize, *const f32, &mut Tile);

fn kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        return x86::kernel_avx2;
    }
    kernel_portable
}

/// Whether the AVX2+FMA micro-kernel is used on this machine.
pub fn has_avx2_fma() -> bool {
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(all(target_arch = "x86_64", not(feature = "std")))]
    {
        cfg!(all(target_feature = "avx2", target_feature = "fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

unsafe fn kernel_portable(
    mr: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    tile: &mut Tile,
) {
    for (i, row) in tile.iter_mut().enumerate().take(mr) {
        let arow = a.add(i * lda);
        let mut acc = *row;
        for p in 0..kc {
            let av = *arow.add(p);
            let bp = b.add(p * NR);
            for (j, v) in acc.iter_mut().enumerate() {
                *v += av * *bp.add(j);
            }
        }
        *row = acc;
    }
}

/// The portable kernel on its own, for tests that compare the two.
pub fn gemm_reference(a: &[f32], m: usize, k: usize, w_out_in: &[f32], n: usize) -> Vec<f32> {
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for p in 0..k {
                s += a[i * k + p] as f64 * w_out_in[j * k + p] as f64;
            }
            c[i * n + j] = s as f32;
        }
    }
    c
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Tile, MR, NR};
    use core::arch::x86_64::*;

    pub(super) unsafe fn kernel_avx2(
        mr: usize,
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        tile: &mut Tile,
    ) {
        match mr {
            6 => k::<6>(kc, a, lda, b, tile),
            5 => k::<5>(kc, a, lda, b, tile),
            4 => k::<4>(kc, a, lda, b, tile),
            3 => k::<3>(kc, a, lda, b, tile),
            2 => k::<2>(kc, a, lda, b, tile),
            _ => k::<1>(kc, a, lda, b, tile),
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn k<const R: usize>(
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        tile: &mut Tile,
    ) {
        const { assert!(R <= MR && NR == 16) };
        let mut lo = [_mm256_setzero_ps(); R];
        let mut hi = [_mm256_setzero_ps(); R];
        for i in 0..R {
            lo[i] = _mm256_loadu_ps(tile[i].as_ptr());
            hi[i] = _mm256_loadu_ps(tile[i].as_ptr().add(8));
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
            _mm256_storeu_ps(tile[i].as_mut_ptr(), lo[i]);
            _mm256_storeu_ps(tile[i].as_mut_ptr().add(8), hi[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::Rng;

    fn check(m: usize, k: usize, n: usize, ep_kind: u8, par: &Parallel) {
        let mut r = Rng::new(m as u64 * 1000 + k as u64 * 7 + n as u64);
        let a: Vec<f32> = (0..m * k).map(|_| r.uniform(1.0)).collect();
        let w: Vec<f32> = (0..n * k).map(|_| r.uniform(1.0)).collect();
        let bias: Vec<f32> = (0..n).map(|_| r.uniform(1.0)).collect();
        let c0: Vec<f32> = (0..m * n).map(|_| r.uniform(1.0)).collect();
        let mut want = gemm_reference(&a, m, k, &w, n);
        for i in 0..m {
            for j in 0..n {
                let v = &mut want[i * n + j];
                match ep_kind {
                    0 => {}
                    1 => *v = quick_gelu(*v + bias[j]),
                    _ => *v += bias[j] + c0[i * n + j],
                }
            }
        }
        let b = PackedMatrix::from_out_in(&w, n, k);
        let mut c = c0.clone();
        let ep = match ep_kind {
            0 => Epilogue::store(None),
            1 => Epilogue::gelu(&bias),
            _ => Epilogue::residual(&bias),
        };
        gemm(par, &a, k, m, &b, &mut c, n, ep);
        let tol = 1e-5 * (k as f32).sqrt() * 4.0;
        for (x, y) in c.iter().zip(&want) {
            assert!(
                (x - y).abs() <= tol,
                "m={m} k={k} n={n} ep={ep_kind}: {x} vs {y}"
            );
        }
    }

    #[test]
    fn odd_shapes_match_f64_reference() {
        let seq = Parallel::sequential();
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 77, 5),
            (7, 300, 17),
            (13, 513, 33),
            (97, 64, 48),
        ] {
            for ep in 0..3 {
                check(m, k, n, ep, &seq);
            }
        }
        #[cfg(feature = "std")]
        {
            let p = Parallel::with_threads(3);
            check(199, 300, 50, 2, &p);
            check(5, 257, 129, 1, &p);
        }
    }

    #[test]
    fn portable_kernel_agrees_with_dispatch() {
        let mut r = Rng::new(5);
        let (kc, lda) = (37, 40);
        let a: Vec<f32> = (0..MR * lda).map(|_| r.uniform(1.0)).collect();
        let b: Vec<f32> = (0..kc * NR).map(|_| r.uniform(1.0)).collect();
        let mut t1: Tile = [[0.5; NR]; MR];
        let mut t2 = t1;
        unsafe {
            kernel_portable(MR, kc, a.as_ptr(), lda, b.as_ptr(), &mut t1);
            kernel()(MR, kc, a.as_ptr(), lda, b.as_ptr(), &mut t2);
        }
        for i in 0..MR {
            for j in 0..NR {
                assert!((t1[i][j] - t2[i][j]).abs() < 1e-4);
            }
        }
    }
}
