//! Int8 GEMM for the image tower's Linears (`--precision int8`, CPU).
//!
//! Weights are quantised once per output column (symmetric, `sw[j] = max|W[j,:]| / 127`);
//! activations per row at run time, asymmetric u8 (`a ≈ lo[i] + sa[i]·ua`, `sa = (max − min) /
//! 255`: post-GELU rows are skewed, so this resolves them about twice as finely as a symmetric
//! scale) for AVX-512 VNNI's u8 × s8 dot products; the offset comes back through each column's
//! weight sum:
//!
//! `C[i,j] = sw[j]·(sa[i]·Σ_k ua[i,k]·qw[k,j] + lo[i]·Σ_k qw[k,j]) + bias[j]`, then the epilogue.
//!
//! The integer sums are exact, so the VNNI kernel and the portable one give identical results.
//! |sum| ≤ K·255·127 < 2³¹ for K < 66 000.

use crate::buf::{starts_aligned, Buf};
use crate::gemm::{Act, Epilogue, PackedMatrix, SharedBytes, NR};
use crate::lowp::{for_each_tile, Tile, MR};
use crate::par::{split, Parallel, SyncPtr};
use crate::simd::{self, Int8Kernel};
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

/// A weight `B [k, n]` as int8 panels `[panel][k/4][NR][4]` with per-column scales.
#[derive(Debug, Clone)]
pub struct Q8Matrix {
    /// Input width.
    pub k: usize,
    /// Output width.
    pub n: usize,
    /// `k` rounded up to a multiple of 4 (zero weights in the padding).
    k4: usize,
    data: Buf<i8>,
    scale: Buf<f32>,
    colsum: Buf<i32>,
    /// The panels widened to i16 for the SIMD128 tile ([`simd::wasm::widen_q8_panels`]).
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    wide: Vec<i16>,
}

impl Q8Matrix {
    /// From a PyTorch Linear weight `W [n, k]`.
    pub fn from_out_in(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight length");
        let k4 = k.next_multiple_of(4);
        let panels = n.div_ceil(NR);
        let mut data = vec![0i8; panels * k4 * NR];
        let mut scale = vec![0.0f32; panels * NR];
        let mut colsum = vec![0i32; panels * NR];
        // One output column's values, k4 long (the padding stays 0).
        let mut qrow = vec![0i8; k4];
        for j in 0..n {
            let row = &w[j * k..(j + 1) * k];
            // A comparison, not `f32::max` (a call per value in wasm, whose `f32.max` keeps
            // NaN where Rust's skips it); NaN is skipped here too.
            let mx = row
                .iter()
                .fold(0.0f32, |m, v| if v.abs() > m { v.abs() } else { m });
            let s = if mx > 0.0 { mx / 127.0 } else { 1.0 };
            scale[j] = s;
            quantize_weight_row(row, s, &mut qrow[..k]);
            colsum[j] = qrow.iter().map(|&q| q as i32).sum();
            // Column j's 4-value groups: `[panel][k/4][NR][4]`.
            let col = (j / NR) * k4 * NR + (j % NR) * 4;
            for (g, quad) in qrow.chunks_exact(4).enumerate() {
                data[col + g * NR * 4..col + g * NR * 4 + 4].copy_from_slice(quad);
            }
        }
        Q8Matrix {
            k,
            n,
            k4,
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            wide: simd::wasm::widen_q8_panels(&data, k4),
            data: Buf::Owned(data),
            scale: Buf::Owned(scale),
            colsum: Buf::Owned(colsum),
        }
    }

    /// Quantizes a packed f32/f16 matrix, per output column.
    pub fn from_packed(p: &PackedMatrix) -> Self {
        Self::from_out_in(&p.to_out_in(), p.n, p.k)
    }

    /// Bytes held (a matrix read in place from shared bytes holds none of its own, but for the
    /// SIMD128 build's widened copy).
    pub fn bytes(&self) -> usize {
        let wide = 0;
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        let wide = wide + 2 * self.wide.len();
        self.data.held_bytes() + self.scale.held_bytes() + self.colsum.held_bytes() + wide
    }

    /// Whether the matrix is read in place from shared bytes ([`Self::from_shared`]).
    pub fn is_shared(&self) -> bool {
        self.data.is_shared()
    }

    /// Length of [`Self::to_bytes`] for a `[k, n]` matrix.
    pub fn byte_len(k: usize, n: usize) -> usize {
        let panels = n.div_ceil(NR);
        panels * k.next_multiple_of(4) * NR + 8 * panels * NR
    }

    /// The matrix as bytes (native order): the int8 panels, then the column scales (f32), then
    /// the column sums (i32). For a cache file; [`Self::from_shared`] reads it in place.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::byte_len(self.k, self.n));
        out.extend(self.data.iter().map(|&v| v as u8));
        out.extend(self.scale.iter().flat_map(|v| v.to_ne_bytes()));
        out.extend(self.colsum.iter().flat_map(|v| v.to_ne_bytes()));
        out
    }

    /// A `[k, n]` matrix read in place from `bytes.bytes()[at..]`, laid out as
    /// [`Self::to_bytes`] writes it (no copy: a mapped cache file stays the only copy). `None`
    /// unless it fits inside the buffer and its panels start 64-byte aligned in memory.
    pub fn from_shared(k: usize, n: usize, bytes: Arc<dyn SharedBytes>, at: usize) -> Option<Self> {
        let (k4, cols) = (k.next_multiple_of(4), n.div_ceil(NR) * NR);
        if !starts_aligned(bytes.bytes(), at, 64) {
            return None;
        }
        // Each part is checked to fit before the next offset is formed from it.
        let data = Buf::shared(Arc::clone(&bytes), at, cols * k4)?;
        let at_scale = at + cols * k4;
        let scale = Buf::shared(Arc::clone(&bytes), at_scale, cols)?;
        let colsum = Buf::shared(bytes, at_scale + 4 * cols, cols)?;
        Some(Q8Matrix {
            k,
            n,
            k4,
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            wide: simd::wasm::widen_q8_panels(&data, k4),
            data,
            scale,
            colsum,
        })
    }
}

/// Bytes a quantized activation may take: the SIMD128 tile reads them widened to 16 bits.
const A_BYTES: usize = if cfg!(all(target_arch = "wasm32", target_feature = "simd128")) {
    2
} else {
    1
};

/// Per-call activation buffers, sized once: `rows × k4` u8 values (u16 for the SIMD128 tile)
/// and `rows` scales.
pub struct Q8Scratch {
    a: Vec<u8>,
    scale: Vec<f32>,
}

impl Q8Scratch {
    /// Scratch for up to `rows` rows of width up to `max_k`.
    pub fn new(rows: usize, max_k: usize) -> Self {
        Q8Scratch {
            a: vec![0; rows * max_k.next_multiple_of(4) * A_BYTES],
            scale: vec![0.0; 2 * rows],
        }
    }
}

/// Whether the VNNI kernel runs here (else another: same results): the CPU has AVX-512 VNNI and
/// the chosen path ([`simd::isa`], which `MAPLE_SIMD` sets) is `avx512`.
pub fn has_vnni() -> bool {
    simd::int8_kernel() == Int8Kernel::Vnni
}

/// `C = A·B (+ epilogue)` with B int8, A quantised per row into `s` on the way.
#[allow(clippy::too_many_arguments)]
pub fn gemm_q8(
    par: &Parallel,
    a: &[f32],
    lda: usize,
    m: usize,
    b: &Q8Matrix,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue<'_>,
    s: &mut Q8Scratch,
) {
    gemm_q8_with(simd::int8_kernel(), par, a, lda, m, b, c, ldc, ep, s)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_q8_with(
    kern: Int8Kernel,
    par: &Parallel,
    a: &[f32],
    lda: usize,
    m: usize,
    b: &Q8Matrix,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue<'_>,
    s: &mut Q8Scratch,
) {
    let (k, k4, n) = (b.k, b.k4, b.n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(lda >= k && ldc >= n, "gemm_q8 strides");
    assert!(a.len() >= (m - 1) * lda + k && c.len() >= (m - 1) * ldc + n);
    // Bytes per quantized activation, and per row.
    let ab = match kern {
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Int8Kernel::WasmDot => 2,
        _ => 1,
    };
    let ka = ab * k4;
    assert!(
        s.a.len() >= m * ka && s.scale.len() >= 2 * m,
        "gemm_q8 scratch"
    );
    if let Some(bias) = ep.bias {
        assert!(bias.len() >= n);
    }
    // 1. Quantise the rows of A (threads split rows).
    let qp = SyncPtr(s.scale.as_mut_ptr());
    let ap = s.a.as_mut_ptr() as usize;
    par.run(&|t, nt| {
        let (lo, hi) = split(m, t, nt);
        for i in lo..hi {
            let row = &a[i * lda..i * lda + k];
            // SAFETY: row i of the activation buffer and (scale, min) i belong to this thread
            // alone.
            let q = unsafe { core::slice::from_raw_parts_mut((ap as *mut u8).add(i * ka), ka) };
            let (sc, lo_v) = match kern {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: only detection makes `Vnni`, which implies AVX-512F and BW.
                Int8Kernel::Vnni => unsafe { x86::quantize_row(row, q) },
                #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
                Int8Kernel::WasmDot => simd::wasm::quantize_row(row, q),
                _ => quantize_row(row, q),
            };
            q[ab * k..].fill(0);
            unsafe {
                *qp.get().add(2 * i) = sc;
                *qp.get().add(2 * i + 1) = lo_v;
            }
        }
    });
    // 2. Integer products per (row tile, column panel), then back to f32 per row.
    let ua: &[u8] = &s.a;
    let sa: &[f32] = &s.scale;
    let isa = simd::isa();
    let gelu = ep.act == Act::QuickGelu;
    // The weight's slices once (each look-up of a shared one goes through its owner).
    let (bd, bs, bc): (&[i8], &[f32], &[i32]) = (&b.data, &b.scale, &b.colsum);
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let bw: &[i16] = &b.wide;
    let kernel = |acc: &mut [[i32; NR]; MR], t: &mut Tile| {
        let bp = &bd[t.p() * k4 * NR..(t.p() + 1) * k4 * NR];
        let arows = &ua[t.i0() * ka..(t.i0() + t.mr()) * ka];
        let rows_sa = &sa[2 * t.i0()..2 * (t.i0() + t.mr())];
        match kern {
            #[cfg(target_arch = "x86_64")]
            Int8Kernel::Vnni if t.nv() == NR => {
                // SAFETY: only detection makes `Vnni` (with AVX-512F/BW); a whole panel;
                // slices sized above.
                unsafe { x86::tile_then_epilogue(t, k4, arows, bp, rows_sa, (bs, bc), &ep) };
                return;
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Int8Kernel::Vnni => unsafe { x86::tile(t.mr(), k4, arows, bp, acc) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: only detection makes `Usdot` (i8mm) or `Sdot` (dotprod); slices sized
            // above (a tile's rows of k4 bytes, one panel of k4 × NR bytes and NR sums).
            Int8Kernel::Usdot | Int8Kernel::Sdot => unsafe {
                let sums = &bc[t.p() * NR..(t.p() + 1) * NR];
                simd::neon::q8_tile(kern == Int8Kernel::Usdot, t.mr(), k4, arows, bp, sums, acc)
            },
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Int8Kernel::WasmDot => {
                let wp = &bw[t.p() * k4 * NR..(t.p() + 1) * k4 * NR];
                if t.nv() == NR {
                    // SAFETY: a whole panel; slices sized above (a tile's rows of k4 u16 values,
                    // one widened panel of k4 × NR values, the rows' scales).
                    unsafe {
                        simd::wasm::q8_tile_then_epilogue(t, k4, arows, wp, rows_sa, (bs, bc), &ep)
                    };
                    return;
                }
                // SAFETY: as above.
                unsafe { simd::wasm::q8_tile(t.mr(), k4, arows, wp, acc) }
            }
            _ => tile_portable(t.mr(), k4, arows, bp, acc),
        }
        for (i, (a, s)) in acc.iter().zip(rows_sa.chunks_exact(2)).enumerate() {
            let n0 = t.n0();
            let out = t.row(i);
            for (j, o) in out.iter_mut().enumerate() {
                let col = n0 + j;
                let mut v = bs[col] * (s[0] * a[j] as f32 + s[1] * bc[col] as f32);
                if let Some(bias) = ep.bias {
                    v += bias[col];
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

/// One weight row (an output column of B) to int8: `roundf(v / s)` clamped to ±127 (NaN → 0),
/// into `q`. The wasm build's SIMD128 twin gives the same values at a quarter of the time
/// (quantizing is the int8 model's loading time in the browser).
fn quantize_weight_row(row: &[f32], s: f32, q: &mut [i8]) {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let (row, q) = {
        let done = simd::wasm::quantize_weight_row(row, s, q);
        (&row[done..], &mut q[done..])
    };
    for (d, &v) in q.iter_mut().zip(row) {
        let x = libm::roundf(v / s);
        // NaN → 0 spelled out: with relaxed SIMD, LLVM may vectorise the clamp into min/max
        // whose NaN handling is the machine's (seen: −127).
        *d = if x.is_nan() {
            0
        } else {
            x.clamp(-127.0, 127.0) as i8
        };
    }
}

/// Quantizes one row of A into `q` (asymmetric u8); returns (scale, minimum).
fn quantize_row(row: &[f32], q: &mut [u8]) -> (f32, f32) {
    let (lo, hi) = row
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    let sc = row_scale(lo, hi);
    let inv = 1.0 / sc;
    for (d, &v) in q.iter_mut().zip(row) {
        *d = libm::roundf((v - lo) * inv).clamp(0.0, 255.0) as u8;
    }
    (sc, lo)
}

pub(crate) fn row_scale(lo: f32, hi: f32) -> f32 {
    if hi > lo {
        (hi - lo) / 255.0
    } else {
        1.0
    }
}

/// `acc[i][j] = Σ_k a[i·k4 + k] · b[(k/4)·NR·4 + j·4 + k%4]`.
fn tile_portable(mr: usize, k4: usize, a: &[u8], b: &[i8], acc: &mut [[i32; NR]; MR]) {
    for (i, row) in acc.iter_mut().enumerate().take(mr) {
        row.fill(0);
        let ar = &a[i * k4..(i + 1) * k4];
        for q in 0..k4 / 4 {
            let bq = &b[q * NR * 4..(q + 1) * NR * 4];
            for (j, v) in row.iter_mut().enumerate() {
                for u in 0..4 {
                    *v += ar[4 * q + u] as i32 * bq[4 * j + u] as i32;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{row_scale, Act, Epilogue, Tile, MR, NR};
    use crate::simd::x86::store16;
    use core::arch::x86_64::*;

    /// [`super::quantize_row`], 16 lanes at a time, bit for bit the same: the same f32
    /// operations, and `roundf` (half away from zero) as truncation plus one where the
    /// fraction is ≥ ½ (exact for the non-negative values quantized here).
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_row(row: &[f32], q: &mut [u8]) -> (f32, f32) {
        let (n, p) = (row.len(), row.as_ptr());
        let (mut vlo, mut vhi) = (_mm512_set1_ps(f32::MAX), _mm512_set1_ps(f32::MIN));
        let mut i = 0;
        while i + 16 <= n {
            let v = _mm512_loadu_ps(p.add(i));
            vlo = _mm512_min_ps(vlo, v);
            vhi = _mm512_max_ps(vhi, v);
            i += 16;
        }
        let (mut lo, mut hi) = (_mm512_reduce_min_ps(vlo), _mm512_reduce_max_ps(vhi));
        for &v in &row[i..] {
            (lo, hi) = (lo.min(v), hi.max(v));
        }
        let sc = row_scale(lo, hi);
        let inv = 1.0 / sc;
        let (l, s) = (_mm512_set1_ps(lo), _mm512_set1_ps(inv));
        let (half, one, top) = (
            _mm512_set1_ps(0.5),
            _mm512_set1_ps(1.0),
            _mm512_set1_ps(255.0),
        );
        i = 0;
        while i + 16 <= n {
            let x = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), l), s);
            let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
            let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_sub_ps(x, t), half);
            let r = _mm512_mask_add_ps(t, up, t, one);
            // max(r, 0) first: a NaN becomes 0, as `NaN.clamp(..) as u8` does.
            let r = _mm512_min_ps(_mm512_max_ps(r, _mm512_setzero_ps()), top);
            let b = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(r));
            _mm_storeu_si128(q.as_mut_ptr().add(i) as *mut __m128i, b);
            i += 16;
        }
        for (d, &v) in q[i..n].iter_mut().zip(&row[i..]) {
            *d = libm::roundf((v - lo) * inv).clamp(0.0, 255.0) as u8;
        }
        (sc, lo)
    }

    /// [`tile`] then the scalar epilogue, for a tile of one whole panel (NR columns from `n0`):
    /// the accumulators go from registers to the output, 16 lanes at once, bit for bit as the
    /// scalar code computes them (the same multiplications and additions, no fused
    /// multiply-add), with the activation applied before each row is stored.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile_then_epilogue(
        t: &mut Tile,
        k4: usize,
        a: &[u8],
        b: &[i8],
        sa: &[f32],
        (scale, colsum): (&[f32], &[i32]),
        ep: &Epilogue<'_>,
    ) {
        let n0 = t.n0();
        assert!(t.nv() == NR && scale.len() >= n0 + NR && colsum.len() >= n0 + NR);
        assert!(sa.len() >= 2 * t.mr() && a.len() >= t.mr() * k4 && b.len() >= k4 * NR);
        let e = Ep {
            cs: _mm512_cvtepi32_ps(_mm512_loadu_si512(colsum.as_ptr().add(n0) as *const _)),
            sw: _mm512_loadu_ps(scale.as_ptr().add(n0)),
            bias: ep
                .bias
                .map_or(core::ptr::null(), |b| b[n0..n0 + NR].as_ptr()),
            gelu: ep.act == Act::QuickGelu,
            accumulate: ep.accumulate,
        };
        let (out, ldc) = (t.out_ptr(), t.ldc());
        match t.mr() {
            12 => te::<12>(k4, a, b, sa, &e, out, ldc),
            11 => te::<11>(k4, a, b, sa, &e, out, ldc),
            10 => te::<10>(k4, a, b, sa, &e, out, ldc),
            9 => te::<9>(k4, a, b, sa, &e, out, ldc),
            8 => te::<8>(k4, a, b, sa, &e, out, ldc),
            7 => te::<7>(k4, a, b, sa, &e, out, ldc),
            6 => te::<6>(k4, a, b, sa, &e, out, ldc),
            5 => te::<5>(k4, a, b, sa, &e, out, ldc),
            4 => te::<4>(k4, a, b, sa, &e, out, ldc),
            3 => te::<3>(k4, a, b, sa, &e, out, ldc),
            2 => te::<2>(k4, a, b, sa, &e, out, ldc),
            _ => te::<1>(k4, a, b, sa, &e, out, ldc),
        }
    }

    /// A panel's epilogue terms, loaded once per tile.
    struct Ep {
        cs: __m512,
        sw: __m512,
        bias: *const f32,
        gelu: bool,
        accumulate: bool,
    }

    /// R rows of [`t`]'s products, finished in registers into `out` (R rows, `ldc` apart).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::needless_range_loop)]
    unsafe fn te<const R: usize>(
        k4: usize,
        a: &[u8],
        b: &[i8],
        sa: &[f32],
        e: &Ep,
        out: *mut f32,
        ldc: usize,
    ) {
        // Ask for the output lines now (for writing): their misses then overlap the products
        // instead of stalling the stores after them.
        for i in 0..R {
            _mm_prefetch::<_MM_HINT_ET0>(out.add(i * ldc) as *const i8);
        }
        let s = dots::<R>(k4, a.as_ptr(), b.as_ptr());
        for i in 0..R {
            let acc = _mm512_cvtepi32_ps(s[i]);
            let v = _mm512_add_ps(
                _mm512_mul_ps(_mm512_set1_ps(sa[2 * i]), acc),
                _mm512_mul_ps(_mm512_set1_ps(sa[2 * i + 1]), e.cs),
            );
            let v = _mm512_mul_ps(e.sw, v);
            store16(out.add(i * ldc), v, e.bias, e.gelu, e.accumulate);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile(mr: usize, k4: usize, a: &[u8], b: &[i8], acc: &mut [[i32; NR]; MR]) {
        match mr {
            12 => t::<12>(k4, a, b, acc),
            11 => t::<11>(k4, a, b, acc),
            10 => t::<10>(k4, a, b, acc),
            9 => t::<9>(k4, a, b, acc),
            8 => t::<8>(k4, a, b, acc),
            7 => t::<7>(k4, a, b, acc),
            6 => t::<6>(k4, a, b, acc),
            5 => t::<5>(k4, a, b, acc),
            4 => t::<4>(k4, a, b, acc),
            3 => t::<3>(k4, a, b, acc),
            2 => t::<2>(k4, a, b, acc),
            _ => t::<1>(k4, a, b, acc),
        }
    }

    /// R × 16 int32 accumulators; per 4 k-values: one 64-byte B load, R broadcasts of 4 A bytes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::needless_range_loop)]
    unsafe fn t<const R: usize>(k4: usize, a: &[u8], b: &[i8], acc: &mut [[i32; NR]; MR]) {
        debug_assert!(a.len() >= R * k4 && b.len() >= k4 * NR);
        let s = dots::<R>(k4, a.as_ptr(), b.as_ptr());
        for i in 0..R {
            _mm512_storeu_si512(acc[i].as_mut_ptr() as *mut _, s[i]);
        }
    }

    /// The integer sums of R rows of `a` (`k4` bytes each, from `ap`) with one panel of `b`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::needless_range_loop)]
    unsafe fn dots<const R: usize>(k4: usize, ap: *const u8, bp: *const i8) -> [__m512i; R] {
        let mut s = [_mm512_setzero_si512(); R];
        for q in 0..k4 / 4 {
            let bv = _mm512_loadu_si512(bp.add(q * NR * 4) as *const _);
            for i in 0..R {
                let av = _mm512_set1_epi32((ap.add(i * k4 + 4 * q) as *const i32).read_unaligned());
                s[i] = _mm512_dpbusd_epi32(s[i], av, bv);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::Rng;

    /// Weight quantization on hand-worked values (s = 0.5, so q = round(2v)): ties away from
    /// zero, the float just below a tie, the clamp, ±∞ and NaN; each in the 16-value body of
    /// the SIMD128 build and in its tail.
    #[test]
    fn weight_quantization_rounds_half_away_from_zero() {
        let below_half = f32::from_bits(0.25f32.to_bits() - 1); // 2v = 0.49999997
        let cases: [(f32, i8); 12] = [
            (0.25, 1),
            (-0.25, -1),
            (below_half, 0),
            (-below_half, 0),
            (1.25, 3),
            (-1.25, -3),
            (0.0, 0),
            (63.75, 127),
            (-70.0, -127),
            (f32::INFINITY, 127),
            (f32::NEG_INFINITY, -127),
            (f32::NAN, 0),
        ];
        for start in [0, 3, 16, 20, 28] {
            let mut row = vec![0.75f32; 40]; // round(1.5) = 2
            let mut want = vec![2i8; 40];
            for (i, &(v, q)) in cases.iter().enumerate() {
                row[(start + i) % 40] = v;
                want[(start + i) % 40] = q;
            }
            let mut got = vec![9i8; 40];
            quantize_weight_row(&row, 0.5, &mut got);
            assert_eq!(got, want, "cases from {start}");
        }
    }

    /// The same quantisation written out directly, in f64 (independent of the panel layout).
    fn reference(a: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let q = |v: f32, s: f32| libm::roundf(v / s).clamp(-127.0, 127.0) as f64;
        let sw: Vec<f32> = (0..n)
            .map(|j| {
                w[j * k..(j + 1) * k]
                    .iter()
                    .fold(0.0f32, |x, v| x.max(v.abs()))
                    / 127.0
            })
            .collect();
        let mut c = vec![0.0f32; m * n];
        for i in 0..m {
            let row = &a[i * k..(i + 1) * k];
            let lo = row.iter().cloned().fold(f32::MAX, f32::min);
            let hi = row.iter().cloned().fold(f32::MIN, f32::max);
            let sa = (hi - lo) / 255.0;
            for j in 0..n {
                // Dequantised activation times dequantised weight, summed in f64.
                let dot: f64 = (0..k)
                    .map(|p| {
                        let qa = libm::roundf((row[p] - lo) * (1.0 / sa)).clamp(0.0, 255.0);
                        let av = lo as f64 + sa as f64 * qa as f64;
                        av * q(w[j * k + p], sw[j]) * sw[j] as f64
                    })
                    .sum();
                c[i * n + j] = dot as f32;
            }
        }
        c
    }

    #[test]
    fn int8_matches_direct_quantisation_and_f32_roughly() {
        let mut r = Rng::new(3);
        for &(m, k, n) in &[(1, 4, 1), (13, 70, 33), (25, 256, 16), (130, 96, 40)] {
            let a: Vec<f32> = (0..m * k).map(|_| r.uniform(1.0)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| r.uniform(1.0)).collect();
            let qm = Q8Matrix::from_out_in(&w, n, k);
            let want = reference(&a, m, k, &w, n);
            let exact = crate::gemm::gemm_reference(&a, m, k, &w, n);
            let mut outs = Vec::new();
            let kernels = simd::int8_kernels();
            assert_eq!(kernels.last(), Some(&Int8Kernel::Portable));
            for &kern in &kernels {
                let mut c = vec![0.0f32; m * n];
                let mut s = Q8Scratch::new(m, k);
                let par = Parallel::sequential();
                gemm_q8_with(
                    kern,
                    &par,
                    &a,
                    k,
                    m,
                    &qm,
                    &mut c,
                    n,
                    Epilogue::store(None),
                    &mut s,
                );
                for ((x, y), z) in c.iter().zip(&want).zip(&exact) {
                    assert!(
                        (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                        "{m}x{k}x{n}: {x} vs {y}"
                    );
                    // Quantisation error stays small against the f32 product.
                    assert!((x - z).abs() <= 0.02 * (k as f32).sqrt(), "{x} vs f32 {z}");
                }
                outs.push(c);
            }
            for (o, kern) in outs.iter().zip(&kernels) {
                assert_eq!(
                    o,
                    &outs[outs.len() - 1],
                    "{kern:?} and portable kernels differ"
                );
            }
        }
    }

    /// Every int8 kernel finishes its tiles as the portable one does, bit for bit, with bias,
    /// accumulation into the output and QuickGELU too (the VNNI and SIMD128 kernels do it in
    /// registers).
    #[test]
    fn int8_kernels_share_the_epilogue_bits() {
        let mut r = Rng::new(5);
        for &(m, k, n) in &[(1, 8, 16), (13, 70, 33), (27, 256, 48)] {
            let a: Vec<f32> = (0..m * k).map(|_| r.uniform(1.0)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| r.uniform(1.0)).collect();
            let bias: Vec<f32> = (0..n).map(|_| r.uniform(1.0)).collect();
            let start: Vec<f32> = (0..m * n).map(|_| r.uniform(2.0)).collect();
            let qm = Q8Matrix::from_out_in(&w, n, k);
            let kernels = simd::int8_kernels();
            let mut outs = Vec::new();
            for &kern in &kernels {
                let mut c = start.clone();
                let ep = Epilogue {
                    bias: Some(&bias),
                    act: Act::QuickGelu,
                    accumulate: true,
                };
                let mut s = Q8Scratch::new(m, k);
                gemm_q8_with(
                    kern,
                    &Parallel::sequential(),
                    &a,
                    k,
                    m,
                    &qm,
                    &mut c,
                    n,
                    ep,
                    &mut s,
                );
                outs.push(c);
            }
            let portable = outs.last().unwrap();
            // Not a no-op: the start values moved, and GELU of x + start ≠ x + start.
            assert!(portable.iter().zip(&start).all(|(x, y)| x != y));
            for (o, kern) in outs.iter().zip(&kernels) {
                let first = o
                    .iter()
                    .zip(portable)
                    .position(|(x, y)| x.to_bits() != y.to_bits());
                assert!(
                    first.is_none(),
                    "{m}x{k}x{n}: {kern:?} and portable epilogues differ at {first:?}: {:?}",
                    first.map(|i| (o[i], portable[i]))
                );
            }
        }
    }

    /// Values whose scaled position falls exactly on a half (range 0..255, so scale 1): the
    /// vector quantizer must round them away from zero, as `roundf` does, not to even.
    #[test]
    fn vector_quantizer_rounds_halves_like_roundf() {
        let k = 40;
        let row: Vec<f32> = (0..k)
            .map(|i| match i {
                0 => 0.0,
                1 => 255.0,
                _ => i as f32 * 6.0 + 0.5,
            })
            .collect();
        let mut want = vec![0u8; k];
        assert_eq!(quantize_row(&row, &mut want), (1.0, 0.0));
        assert_eq!(want[2], 13, "roundf(12.5) = 13");
        #[cfg(target_arch = "x86_64")]
        if has_vnni() {
            let mut got = vec![0u8; k];
            // SAFETY: VNNI detected (AVX-512F and BW with it).
            let r = unsafe { x86::quantize_row(&row, &mut got) };
            assert_eq!(r, (1.0, 0.0));
            assert_eq!(got, want);
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        {
            // 16-bit values, little-endian.
            let mut got = vec![0xffu8; 2 * k];
            assert_eq!(simd::wasm::quantize_row(&row, &mut got), (1.0, 0.0));
            let wide: Vec<u16> = want.iter().map(|&v| v as u16).collect();
            let got: Vec<u16> = got
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            assert_eq!(got, wide);
        }
    }
}
