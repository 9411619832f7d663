//! Cache-blocked f32 GEMM: `C[m, n] (+)= A[m, k] · B[k, n] + bias`, with an optional QuickGELU.
//!
//! B is a weight, packed once at load time into panels of `NR` columns (`[k][NR]` each, zero
//! padded, 64-byte aligned), so the micro-kernel streams it contiguously. Panels are stored as
//! f32, or as f16 when the checkpoint was f16 (half the memory; each `KC × NR` slice is widened
//! into an L1 buffer just before the micro-kernel uses it, so the arithmetic is f32 either way).
//! The loops are `k-block (KC) → m-block (MC) → panel → MR-row tile`: an A block (MC × KC, copied
//! into contiguous rows on the SIMD paths) stays in L2 while a B panel slice (KC × NR, 24 KiB) stays in L1. Threads split the panels (disjoint
//! columns of C). Micro-kernels: AVX-512 (12 × 16), AVX2+FMA (6 × 16) and a portable one,
//! chosen at run time ([`crate::simd::isa`]); all accumulate in f32 in the same k order, write
//! full tiles straight into C, and the epilogue (bias, QuickGELU, residual) runs on each tile
//! while it is still in L1.

use crate::buf::{starts_aligned, Buf};
use crate::par::{Parallel, SyncPtr};
use crate::simd::{self, Isa};
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

/// Columns per packed panel.
pub const NR: usize = 16;
const MR_MAX: usize = 12;
const KC: usize = 384;
const MC: usize = 120;
// An m-block is a whole number of tiles of every kernel (see `mc` in `gemm_panels`).
const _: () = assert!(MC.is_multiple_of(MR_MAX) && MC.is_multiple_of(6));
/// Panels start on a 64-byte boundary (one cache line, one AVX-512 load).
pub(crate) const ALIGN_F32: usize = 16;

/// The panels, owned or in place in a mapped packed-weight cache file ([`PackedMatrix::from_shared`]).
#[derive(Clone, Debug)]
enum Store {
    F32(Buf<f32>),
    /// IEEE half bits.
    F16(Buf<u16>),
}

/// Bytes that outlive every [`PackedMatrix`] made from them with
/// [`PackedMatrix::from_shared`]: in the std crate, a read-only memory map of a packed-weight
/// cache file.
pub trait SharedBytes: Send + Sync {
    /// The whole buffer; the same slice on every call.
    fn bytes(&self) -> &[u8];
}

/// A weight matrix B [k, n] packed into column panels.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    /// Input width (columns of the original `[n, k]` weight).
    pub k: usize,
    /// Output width (rows of the original weight).
    pub n: usize,
    /// Index of panel 0 in `data` (for alignment).
    off: usize,
    data: Store,
}

/// Borrowed panels: a [`PackedMatrix`] or a scratch buffer packed per call (attention).
#[derive(Clone, Copy)]
pub(crate) struct Panels<'a> {
    k: usize,
    n: usize,
    data: PanelData<'a>,
}

#[derive(Clone, Copy)]
enum PanelData<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
}

fn aligned_offset<T>(v: &[T]) -> usize {
    let sz = core::mem::size_of::<T>();
    let addr = v.as_ptr() as usize;
    let mis = addr % 64;
    if mis == 0 {
        0
    } else {
        (64 - mis) / sz
    }
}

impl PackedMatrix {
    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// From a PyTorch/HF Linear weight `W [n, k]` (y = x·Wᵀ): B = Wᵀ.
    pub fn from_out_in(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight length");
        Self::pack_f32(k, n, |kk, j| w[j * k + kk])
    }

    /// As [`from_out_in`](Self::from_out_in) for a weight stored as f16 bits: the panels stay f16.
    pub fn from_out_in_f16(w: &[u16], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight length");
        let panels = n.div_ceil(NR);
        let mut data = vec![0u16; panels * k * NR + 2 * ALIGN_F32];
        let off = aligned_offset(&data);
        fill_panels(&mut data[off..], k, n, |kk, j| w[j * k + kk]);
        PackedMatrix {
            k,
            n,
            off,
            data: Store::F16(Buf::Owned(data)),
        }
    }

    /// From a matrix already laid out `[k, n]` (OpenAI's `visual.proj`).
    pub fn from_in_out(b: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(b.len(), n * k, "weight length");
        Self::pack_f32(k, n, |kk, j| b[kk * n + j])
    }

    /// Frees the panels and keeps the shape: for a weight an int8 copy has replaced
    /// ([`crate::Model::quantize_image_tower`]). A released matrix must not be multiplied or
    /// read back ([`Self::is_released`] says which).
    pub fn release(&mut self) {
        self.data = Store::F32(Buf::Owned(Vec::new()));
        self.off = 0;
    }

    /// A `[k, n]` matrix without panels, as [`release`](Self::release) leaves one: for a Linear
    /// whose int8 or bf16 copy came from elsewhere (a packed-weight cache).
    pub fn released(k: usize, n: usize) -> Self {
        PackedMatrix {
            k,
            n,
            off: 0,
            data: Store::F32(Buf::Owned(Vec::new())),
        }
    }

    /// Whether [`release`](Self::release) freed the panels.
    pub fn is_released(&self) -> bool {
        match &self.data {
            Store::F32(v) => !v.is_shared() && v.is_empty(),
            Store::F16(v) => !v.is_shared() && v.is_empty(),
        }
    }

    /// Whether the panels are stored as f16.
    pub fn is_f16(&self) -> bool {
        matches!(self.data, Store::F16(_))
    }

    /// Bytes held (a shared matrix holds none of its own).
    pub fn bytes(&self) -> usize {
        match &self.data {
            Store::F32(v) => v.held_bytes(),
            Store::F16(v) => v.held_bytes(),
        }
    }

    /// Whether the panels live in a buffer shared with others ([`Self::from_shared`]).
    pub fn is_shared(&self) -> bool {
        match &self.data {
            Store::F32(v) => v.is_shared(),
            Store::F16(v) => v.is_shared(),
        }
    }

    /// Bytes the panels of a `[k, n]` matrix take: what [`Self::panel_bytes`] returns and
    /// [`Self::from_shared`] reads.
    pub fn panel_byte_len(k: usize, n: usize, f16: bool) -> usize {
        panel_len(k, n) * if f16 { 2 } else { 4 }
    }

    /// The packed panels as native-endian bytes (f32, or f16 bits when [`Self::is_f16`]), to be
    /// saved and handed back to [`Self::from_shared`]; `None` once released.
    pub fn panel_bytes(&self) -> Option<&[u8]> {
        if self.is_released() {
            return None;
        }
        Some(match self.view().data {
            // SAFETY: f32 and u16 have no padding and every byte pattern of them is a valid u8;
            // the byte slice covers exactly the same memory for the same lifetime.
            PanelData::F32(d) => unsafe {
                core::slice::from_raw_parts(d.as_ptr().cast::<u8>(), core::mem::size_of_val(d))
            },
            PanelData::F16(d) => unsafe {
                core::slice::from_raw_parts(d.as_ptr().cast::<u8>(), core::mem::size_of_val(d))
            },
        })
    }

    /// A `[k, n]` matrix whose panels are `bytes.bytes()[at..]` as laid out by
    /// [`Self::panel_bytes`], used in place (no copy). Refused unless the panels fit inside the
    /// buffer and start on a 64-byte boundary in memory.
    pub fn from_shared(
        k: usize,
        n: usize,
        f16: bool,
        bytes: Arc<dyn SharedBytes>,
        at: usize,
    ) -> Result<Self, &'static str> {
        let len = Self::panel_byte_len(k, n, f16);
        let buf = bytes.bytes();
        if at.checked_add(len).is_none_or(|end| end > buf.len()) {
            return Err("panels run past the end of the buffer");
        }
        if !starts_aligned(buf, at, 64) {
            return Err("panels are not 64-byte aligned");
        }
        // Both checks above are the ones `Buf::shared` makes (64 covers f32's and u16's
        // alignment), so it cannot refuse here.
        let past = "panels run past the end of the buffer";
        let elems = panel_len(k, n);
        let data = if f16 {
            Store::F16(Buf::shared(bytes, at, elems).ok_or(past)?)
        } else {
            Store::F32(Buf::shared(bytes, at, elems).ok_or(past)?)
        };
        Ok(PackedMatrix { k, n, off: 0, data })
    }

    /// The weight back in PyTorch Linear layout `[n, k]`, widened to f32 (for uploading to
    /// another backend).
    pub fn to_out_in(&self) -> Vec<f32> {
        let mut w = vec![0.0f32; self.n * self.k];
        let p = self.view();
        for j in 0..self.n {
            let (pi, jj) = (j / NR, j % NR);
            for kk in 0..self.k {
                let i = pi * self.k * NR + kk * NR + jj;
                w[j * self.k + kk] = match p.data {
                    PanelData::F32(d) => d[i],
                    PanelData::F16(d) => half::f16::from_bits(d[i]).to_f32(),
                };
            }
        }
        w
    }

    pub(crate) fn view(&self) -> Panels<'_> {
        let len = self.panels() * self.k * NR;
        Panels {
            k: self.k,
            n: self.n,
            data: match &self.data {
                Store::F32(v) => PanelData::F32(&v[self.off..self.off + len]),
                Store::F16(v) => PanelData::F16(&v[self.off..self.off + len]),
            },
        }
    }

    fn pack_f32(k: usize, n: usize, at: impl Fn(usize, usize) -> f32) -> Self {
        let panels = n.div_ceil(NR);
        let mut data = vec![0.0f32; panels * k * NR + ALIGN_F32];
        let off = aligned_offset(&data);
        fill_panels(&mut data[off..], k, n, at);
        PackedMatrix {
            k,
            n,
            off,
            data: Store::F32(Buf::Owned(data)),
        }
    }
}

/// Writes B [k, n] (given element-wise) as zero-padded `[k][NR]` panels into `dst`.
fn fill_panels<T: Copy + Default>(
    dst: &mut [T],
    k: usize,
    n: usize,
    at: impl Fn(usize, usize) -> T,
) {
    for p in 0..n.div_ceil(NR) {
        let base = p * k * NR;
        for kk in 0..k {
            for jj in 0..NR {
                let j = p * NR + jj;
                dst[base + kk * NR + jj] = if j < n { at(kk, j) } else { T::default() };
            }
        }
    }
}

/// Floats a per-call panel buffer for B [k, n] needs.
pub(crate) fn panel_len(k: usize, n: usize) -> usize {
    n.div_ceil(NR) * k * NR
}

/// Packs `Bᵀ` where the rows of B's transpose are `rows(j)` (`n` rows of `k` floats each):
/// B[kk][j] = rows(j)[kk]. Used for `Kᵀ` in attention (scores = Q·Kᵀ).
pub(crate) fn pack_rows_as_columns<'a>(
    dst: &'a mut [f32],
    k: usize,
    n: usize,
    rows: impl Fn(usize) -> &'a [f32],
) -> Panels<'a> {
    let len = panel_len(k, n);
    let dst = &mut dst[..len];
    if !n.is_multiple_of(NR) {
        dst[(n / NR) * k * NR..].fill(0.0);
    }
    for j in 0..n {
        let (p, jj) = (j / NR, j % NR);
        let col = &mut dst[p * k * NR + jj..];
        for (kk, &v) in rows(j)[..k].iter().enumerate() {
            col[kk * NR] = v;
        }
    }
    Panels {
        k,
        n,
        data: PanelData::F32(dst),
    }
}

/// Packs B [k, n] whose row `kk` is `rows(kk)[..n]`. Used for `V` in attention (out = P·V).
pub(crate) fn pack_rows<'a>(
    dst: &'a mut [f32],
    k: usize,
    n: usize,
    rows: impl Fn(usize) -> &'a [f32],
) -> Panels<'a> {
    let len = panel_len(k, n);
    let dst = &mut dst[..len];
    for kk in 0..k {
        let r = &rows(kk)[..n];
        for p in 0..n.div_ceil(NR) {
            let d = &mut dst[p * k * NR + kk * NR..][..NR];
            let src = &r[p * NR..(p * NR + NR).min(n)];
            d[..src.len()].copy_from_slice(src);
            d[src.len()..].fill(0.0);
        }
    }
    Panels {
        k,
        n,
        data: PanelData::F32(dst),
    }
}

/// Activation applied in the GEMM's epilogue.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Act {
    /// None.
    None,
    /// CLIP's `x * sigmoid(1.702 x)`.
    QuickGelu,
}

/// What happens to each output element after the dot product.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    /// Added per output column.
    pub bias: Option<&'a [f32]>,
    /// Applied after the bias.
    pub act: Act,
    /// `C += result` (fused residual add) instead of `C = result`.
    pub accumulate: bool,
}

impl<'a> Epilogue<'a> {
    /// Overwrite the output, with an optional bias.
    pub fn store(bias: Option<&'a [f32]>) -> Self {
        Epilogue {
            bias,
            act: Act::None,
            accumulate: false,
        }
    }
    /// Bias, then QuickGELU.
    pub fn gelu(bias: &'a [f32]) -> Self {
        Epilogue {
            bias: Some(bias),
            act: Act::QuickGelu,
            accumulate: false,
        }
    }
    /// Bias, then add to what the output holds (the residual stream).
    pub fn residual(bias: &'a [f32]) -> Self {
        Epilogue {
            bias: Some(bias),
            act: Act::None,
            accumulate: true,
        }
    }
}

fn check(
    a: &[f32],
    lda: usize,
    m: usize,
    b: &Panels<'_>,
    c_len: usize,
    ldc: usize,
    ep: &Epilogue<'_>,
) {
    let (k, n) = (b.k, b.n);
    assert!(lda >= k && ldc >= n, "gemm strides");
    assert!(a.len() >= (m - 1) * lda + k, "gemm: A too short");
    assert!(c_len >= (m - 1) * ldc + n, "gemm: C too short");
    if let Some(bias) = ep.bias {
        assert!(bias.len() >= n, "gemm: bias too short");
        assert!(ep.act == Act::None || !ep.accumulate);
    }
}

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
    gemm_isa(simd::isa(), par, a, lda, m, b, c, ldc, ep)
}

/// [`gemm`] on a chosen code path (tests compare the paths).
#[allow(clippy::too_many_arguments)]
pub fn gemm_isa(
    isa: Isa,
    par: &Parallel,
    a: &[f32],
    lda: usize,
    m: usize,
    b: &PackedMatrix,
    c: &mut [f32],
    ldc: usize,
    ep: Epilogue<'_>,
) {
    let bv = b.view();
    if m == 0 || bv.n == 0 {
        return;
    }
    check(a, lda, m, &bv, c.len(), ldc, &ep);
    let cp = SyncPtr(c.as_mut_ptr());
    let panels = bv.n.div_ceil(NR);
    // Runs of panels, each to whichever thread is free.
    let chunk = par.unit_size(panels);
    par.run_units(panels.div_ceil(chunk), &|_, u| {
        let (p_lo, p_hi) = (u * chunk, ((u + 1) * chunk).min(panels));
        // SAFETY: each unit writes only the columns of its own panels; bounds checked above.
        unsafe { gemm_panels(isa, a, lda, m, bv, cp.get(), ldc, ep, p_lo, p_hi) }
    });
}

/// One-thread GEMM on borrowed panels into a block of C that may interleave with blocks other
/// threads write (attention heads share rows).
///
/// # Safety
/// `c` must be valid for writes at `i·ldc + j` for `i < m`, `j < b.n`, and no other thread may
/// touch those elements during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_seq(
    isa: Isa,
    a: &[f32],
    lda: usize,
    m: usize,
    b: Panels<'_>,
    c: *mut f32,
    ldc: usize,
    ep: Epilogue<'_>,
) {
    if m == 0 || b.n == 0 {
        return;
    }
    check(a, lda, m, &b, usize::MAX, ldc, &ep);
    gemm_panels(isa, a, lda, m, b, c, ldc, ep, 0, b.n.div_ceil(NR))
}

/// `tile[i][j] (= or +=) Σ_p a[i·lda + p] · b[p·NR + j]` for i < mr, p < kc, j < NR, where the
/// tile is `c` with row stride `ldc`; `load` says whether to start from C's values or zero.
type Kernel = unsafe fn(usize, usize, *const f32, usize, *const f32, *mut f32, usize, bool);

fn kernel(isa: Isa) -> (Kernel, usize) {
    match isa.path() {
        #[cfg(target_arch = "x86_64")]
        simd::Path::Avx512 => (simd::x86::kernel_avx512, 12),
        #[cfg(target_arch = "x86_64")]
        simd::Path::Avx2 => (simd::x86::kernel_avx2, 6),
        #[cfg(target_arch = "aarch64")]
        simd::Path::Neon => (simd::neon::kernel, 6),
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        simd::Path::Simd128 => (simd::wasm::kernel, simd::wasm::MR),
        _ => (kernel_portable, 6),
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn gemm_panels(
    isa: Isa,
    a: &[f32],
    lda: usize,
    m: usize,
    b: Panels<'_>,
    c: *mut f32,
    ldc: usize,
    ep: Epilogue<'_>,
    p_lo: usize,
    p_hi: usize,
) {
    let (k, n) = (b.k, b.n);
    let (kern, mr_max) = kernel(isa);
    let mut tile = [0.0f32; MR_MAX * NR];
    let mut wide = Aligned([0.0f32; KC * NR]);
    // The SIMD paths copy each A block (≤ MC × KC) into contiguous rows of kc first when A's
    // rows are a multiple of 2 KiB apart (fc2's 3072 floats = 12 KiB; the text tower's 512):
    // the rows of a tile then fall into one or two L1 sets (set = address bits 6..12), which a
    // 12-row tile overflows. Other strides spread the rows over the sets and are read in place,
    // saving the copy. The portable path (wasm) never copies and keeps its stack small.
    let pack_a = isa != Isa::PORTABLE
        && cfg!(target_arch = "x86_64")
        && (lda * core::mem::size_of::<f32>()).is_multiple_of(2048);
    let mut apack = core::mem::MaybeUninit::<AlignedA>::uninit();
    let ap = apack.as_mut_ptr() as *mut f32;
    // Rows per m-block: at most MC, split evenly in whole tiles (199 rows → 108 + 91 for 12-row
    // tiles, not 120 + 79).
    let mc = m.div_ceil(m.div_ceil(MC)).next_multiple_of(mr_max);
    let mut k0 = 0;
    while k0 < k || (k == 0 && k0 == 0) {
        let kc = KC.min(k - k0);
        let (first, last) = (k0 == 0, k0 + kc == k);
        let load = !first || ep.accumulate;
        for m0 in (0..m).step_by(mc) {
            let m1 = (m0 + mc).min(m);
            let (a_blk, lda_blk) = if pack_a {
                // SAFETY: m1 − m0 ≤ MC rows of kc ≤ KC floats fit the buffer; rows < m of A
                // were bounds-checked by the caller.
                for i in m0..m1 {
                    let src = a.as_ptr().add(i * lda + k0);
                    core::ptr::copy_nonoverlapping(src, ap.add((i - m0) * kc), kc);
                }
                (ap as *const f32, kc)
            } else {
                (a.as_ptr().add(m0 * lda + k0), lda)
            };
            for p in p_lo..p_hi {
                let n0 = p * NR;
                let nv = NR.min(n - n0);
                let at = p * k * NR + k0 * NR;
                let bp = match b.data {
                    PanelData::F32(d) => d.as_ptr().add(at),
                    PanelData::F16(d) => {
                        widen(isa, &d[at..at + kc * NR], &mut wide.0[..kc * NR]);
                        wide.0.as_ptr()
                    }
                };
                let mut i0 = m0;
                while i0 < m1 {
                    let mr = mr_max.min(m1 - i0);
                    let cp = c.add(i0 * ldc + n0);
                    if nv == NR {
                        kern(
                            mr,
                            kc,
                            a_blk.add((i0 - m0) * lda_blk),
                            lda_blk,
                            bp,
                            cp,
                            ldc,
                            load,
                        );
                    } else {
                        // A ragged right edge: run the kernel on a full-width copy.
                        for i in 0..mr {
                            let t = &mut tile[i * NR..i * NR + NR];
                            if load {
                                t[..nv].copy_from_slice(core::slice::from_raw_parts(
                                    cp.add(i * ldc),
                                    nv,
                                ));
                            }
                        }
                        let tp = tile.as_mut_ptr();
                        kern(
                            mr,
                            kc,
                            a_blk.add((i0 - m0) * lda_blk),
                            lda_blk,
                            bp,
                            tp,
                            NR,
                            load,
                        );
                        for i in 0..mr {
                            core::ptr::copy_nonoverlapping(tp.add(i * NR), cp.add(i * ldc), nv);
                        }
                    }
                    if last && (ep.bias.is_some() || ep.act == Act::QuickGelu) {
                        let bias = ep.bias.map(|b| &b[n0..n0 + nv]);
                        for i in 0..mr {
                            let row = core::slice::from_raw_parts_mut(cp.add(i * ldc), nv);
                            simd::bias_act(isa, row, bias, ep.act == Act::QuickGelu);
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

#[repr(C, align(64))]
struct Aligned([f32; KC * NR]);

/// One A block, `[≤ MC][kc]` (184 KiB: on the stack, like `Aligned`, so a call allocates
/// nothing; empty where only the portable path exists, e.g. wasm32 with its small stack).
#[repr(C, align(64))]
struct AlignedA([f32; A_BLOCK]);
#[cfg(target_arch = "x86_64")]
const A_BLOCK: usize = MC * KC;
#[cfg(not(target_arch = "x86_64"))]
const A_BLOCK: usize = 0;

/// f16 bits → f32 (exact).
fn widen(isa: Isa, src: &[u16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::PORTABLE {
        // SAFETY: Avx2/Avx512 imply F16C (checked in simd::detect).
        unsafe { simd::x86::widen_f16c(src, dst) };
        return;
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if isa != Isa::PORTABLE {
        simd::wasm::widen_f16(src, dst);
        return;
    }
    let _ = isa;
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = half::f16::from_bits(s).to_f32();
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn kernel_portable(
    mr: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    for i in 0..mr {
        let arow = a.add(i * lda);
        let crow = c.add(i * ldc);
        let mut acc = [0.0f32; NR];
        if load {
            for (j, v) in acc.iter_mut().enumerate() {
                *v = *crow.add(j);
            }
        }
        for p in 0..kc {
            let av = *arow.add(p);
            let bp = b.add(p * NR);
            for (j, v) in acc.iter_mut().enumerate() {
                *v += av * *bp.add(j);
            }
        }
        for (j, v) in acc.iter().enumerate() {
            *crow.add(j) = *v;
        }
    }
}

/// Plain triple loop in f64, for tests that check the kernels.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::Rng;

    fn gelu64(x: f64) -> f64 {
        x / (1.0 + (-1.702 * x).exp())
    }

    fn check(isa: Isa, m: usize, k: usize, n: usize, ep_kind: u8, f16: bool, par: &Parallel) {
        let mut r = Rng::new(m as u64 * 1000 + k as u64 * 7 + n as u64);
        let a: Vec<f32> = (0..m * k).map(|_| r.uniform(1.0)).collect();
        let mut w: Vec<f32> = (0..n * k).map(|_| r.uniform(1.0)).collect();
        let bits: Vec<u16> = w
            .iter()
            .map(|&x| half::f16::from_f32(x).to_bits())
            .collect();
        if f16 {
            // The reference uses exactly the values the f16 panels hold.
            w = bits
                .iter()
                .map(|&b| half::f16::from_bits(b).to_f32())
                .collect();
        }
        let bias: Vec<f32> = (0..n).map(|_| r.uniform(1.0)).collect();
        let c0: Vec<f32> = (0..m * n).map(|_| r.uniform(1.0)).collect();
        let mut want = gemm_reference(&a, m, k, &w, n);
        for i in 0..m {
            for j in 0..n {
                let v = &mut want[i * n + j];
                match ep_kind {
                    0 => {}
                    1 => *v = gelu64(*v as f64 + bias[j] as f64) as f32,
                    _ => *v += bias[j] + c0[i * n + j],
                }
            }
        }
        let b = if f16 {
            PackedMatrix::from_out_in_f16(&bits, n, k)
        } else {
            PackedMatrix::from_out_in(&w, n, k)
        };
        assert_eq!(b.to_out_in(), w, "to_out_in round trip");
        let mut c = c0.clone();
        let ep = match ep_kind {
            0 => Epilogue::store(None),
            1 => Epilogue::gelu(&bias),
            _ => Epilogue::residual(&bias),
        };
        gemm_isa(isa, par, &a, k, m, &b, &mut c, n, ep);
        let tol = 1e-5 * (k as f32).sqrt() * 4.0;
        for (x, y) in c.iter().zip(&want) {
            assert!(
                (x - y).abs() <= tol,
                "{isa:?} m={m} k={k} n={n} ep={ep_kind} f16={f16}: {x} vs {y}"
            );
        }
    }

    #[test]
    fn every_path_matches_f64_reference() {
        let seq = Parallel::sequential();
        for isa in simd::available() {
            for &(m, k, n) in &[
                (1, 1, 1),
                (1, 77, 5),
                (7, 300, 17),
                (13, 513, 33),
                (97, 64, 48),
                (25, 260, 32),
            ] {
                for ep in 0..3 {
                    check(isa, m, k, n, ep, false, &seq);
                }
                check(isa, m, k, n, 2, true, &seq);
            }
            #[cfg(feature = "std")]
            {
                let p = Parallel::with_threads(3);
                check(isa, 199, 300, 50, 2, false, &p);
                check(isa, 5, 257, 129, 1, true, &p);
            }
        }
    }

    #[test]
    fn per_call_packing_matches_reference() {
        // scores = Q·Kᵀ and out = P·V, as attention packs them.
        let mut r = Rng::new(11);
        let (t, hd) = (37, 24);
        let q: Vec<f32> = (0..t * hd).map(|_| r.uniform(1.0)).collect();
        let kmat: Vec<f32> = (0..t * hd).map(|_| r.uniform(1.0)).collect();
        let mut buf = vec![0.0f32; panel_len(hd, t)];
        for isa in simd::available() {
            let kt = pack_rows_as_columns(&mut buf, hd, t, |j| &kmat[j * hd..(j + 1) * hd]);
            let mut s = vec![0.0f32; t * t];
            unsafe { gemm_seq(isa, &q, hd, t, kt, s.as_mut_ptr(), t, Epilogue::store(None)) };
            let want = gemm_reference(&q, t, hd, &kmat, t);
            for (x, y) in s.iter().zip(&want) {
                assert!((x - y).abs() < 1e-4, "{isa:?} QKᵀ {x} vs {y}");
            }
            let mut vb = vec![0.0f32; panel_len(t, hd)];
            let vp = pack_rows(&mut vb, t, hd, |kk| &kmat[kk * hd..(kk + 1) * hd]);
            let mut o = vec![0.0f32; t * hd];
            let p: Vec<f32> = (0..t * t).map(|_| r.uniform(1.0)).collect();
            unsafe { gemm_seq(isa, &p, t, t, vp, o.as_mut_ptr(), hd, Epilogue::store(None)) };
            // Reference: P·V with V [t, hd] → W = Vᵀ [hd, t].
            let vt: Vec<f32> = (0..hd * t).map(|i| kmat[(i % t) * hd + i / t]).collect();
            let want = gemm_reference(&p, t, t, &vt, hd);
            for (x, y) in o.iter().zip(&want) {
                assert!((x - y).abs() < 1e-4, "{isa:?} PV {x} vs {y}");
            }
        }
    }

    /// SIMD128 has no fused multiply-add: its kernel does the portable kernel's multiplies and
    /// adds in the same order, so the two agree to the bit (other paths fuse, and are held to
    /// the f64 reference above instead, as is the relaxed-SIMD build).
    #[test]
    #[cfg(not(target_feature = "relaxed-simd"))]
    fn simd128_kernel_equals_the_portable_kernel_bit_for_bit() {
        let seq = Parallel::sequential();
        let mut r = Rng::new(5);
        for isa in simd::available() {
            if isa.path() != simd::Path::Simd128 {
                continue;
            }
            for &(m, k, n) in &[(1, 3, 1), (9, 400, 37), (130, 64, 16)] {
                let a: Vec<f32> = (0..m * k).map(|_| r.uniform(1.0)).collect();
                let w: Vec<f32> = (0..n * k).map(|_| r.uniform(1.0)).collect();
                let bias: Vec<f32> = (0..n).map(|_| r.uniform(1.0)).collect();
                let b = PackedMatrix::from_out_in(&w, n, k);
                let mut got = vec![0.5f32; m * n];
                let mut want = got.clone();
                gemm_isa(
                    isa,
                    &seq,
                    &a,
                    k,
                    m,
                    &b,
                    &mut got,
                    n,
                    Epilogue::residual(&bias),
                );
                let p = Isa::PORTABLE;
                gemm_isa(
                    p,
                    &seq,
                    &a,
                    k,
                    m,
                    &b,
                    &mut want,
                    n,
                    Epilogue::residual(&bias),
                );
                assert_eq!(got, want, "m={m} k={k} n={n}");
            }
        }
    }

    /// f16 → f32 on every path (F16C, SIMD128, plain) is `half`'s conversion, bit for bit, for
    /// all 65 536 patterns: NaN payloads, infinities, subnormals, both zeros.
    #[test]
    fn widening_f16_is_exact_for_every_pattern() {
        let src: Vec<u16> = (0..=u16::MAX).collect();
        let want: Vec<u32> = src
            .iter()
            .map(|&h| half::f16::from_bits(h).to_f32().to_bits())
            .collect();
        for isa in simd::available() {
            // Offsets 0 and 3: the 8-wide body and the scalar tail both see every pattern.
            for off in [0, 3] {
                let mut dst = vec![0.0f32; src.len() - off];
                widen(isa, &src[off..], &mut dst);
                for (i, d) in dst.iter().enumerate() {
                    assert_eq!(d.to_bits(), want[i + off], "{isa:?} {:#06x}", src[i + off]);
                }
            }
        }
    }
}
