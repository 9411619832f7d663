//! The loop the reduced-precision GEMMs (int8 in [`crate::q8`], bf16 in [`crate::bf16`]) share:
//! rows go in blocks of `MC` and tiles of up to `MR`, threads take (block, run of panels) units;
//! each kernel computes a tile and writes its rows into the output.

use crate::gemm::NR;
use crate::par::{Parallel, SyncPtr};

/// Rows per block (a block of rows is reused across the thread's panels).
const MC: usize = 120;
/// Rows per tile: one accumulator register per row.
pub(crate) const MR: usize = 12;

/// One tile of the output: rows `i0..i0 + mr`, columns `n0..n0 + nv` (panel `p`).
/// Only [`for_each_tile`] makes one, and its fields are private: [`Tile::row`] and
/// [`Tile::out_ptr`] rely on them.
pub(crate) struct Tile {
    i0: usize,
    mr: usize,
    p: usize,
    n0: usize,
    nv: usize,
    ptr: *mut f32,
    ldc: usize,
}

impl Tile {
    /// First row.
    pub fn i0(&self) -> usize {
        self.i0
    }

    /// Rows (1..=MR).
    pub fn mr(&self) -> usize {
        self.mr
    }

    /// Column panel (columns `p·NR..`).
    pub fn p(&self) -> usize {
        self.p
    }

    /// First column (`p·NR`).
    pub fn n0(&self) -> usize {
        self.n0
    }

    /// Output row `i` (`< mr`) of the tile: `nv` values.
    pub fn row(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.mr);
        // SAFETY: the tile's rows and columns are inside the output and belong to this thread
        // alone (see `for_each_tile`).
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(i * self.ldc), self.nv) }
    }
}

/// What the x86 and SIMD128 tiles' own epilogues read (other builds finish tiles through
/// [`Tile::row`]).
#[cfg_attr(
    not(any(
        target_arch = "x86_64",
        all(target_arch = "wasm32", target_feature = "simd128")
    )),
    allow(dead_code)
)]
impl Tile {
    /// Columns (1..=NR; fewer only in the last panel).
    pub fn nv(&self) -> usize {
        self.nv
    }

    /// Floats between output rows.
    pub fn ldc(&self) -> usize {
        self.ldc
    }

    /// The tile's first output value: `mr` rows of `nv` values, `ldc` apart, which this thread
    /// alone writes.
    pub fn out_ptr(&mut self) -> *mut f32 {
        self.ptr
    }
}

/// For every (row tile, column panel) of the `m × n` output `c` (row stride `ldc`), calls
/// `kernel(acc, tile)`, which computes rows `i0..i0 + mr` of panel `p` (in `acc` if it needs
/// memory for them) and writes them into the output with the epilogue (bias, accumulation,
/// activation: in registers, while the tile is there).
pub(crate) fn for_each_tile<T: Copy + Default>(
    par: &Parallel,
    m: usize,
    n: usize,
    c: &mut [f32],
    ldc: usize,
    kernel: impl Fn(&mut [[T; NR]; MR], &mut Tile) + Sync,
) {
    assert!(m == 0 || c.len() >= (m - 1) * ldc + n, "output too short");
    let cp = SyncPtr(c.as_mut_ptr());
    let panels = n.div_ceil(NR);
    // Work units: (block of MC rows, run of `chunk` panels), block by block, handed out to
    // whichever thread is free.
    let chunk = par.unit_size(panels);
    let runs = panels.div_ceil(chunk);
    par.run_units(m.div_ceil(MC) * runs, &|_, u| {
        let (m0, r) = ((u / runs) * MC, u % runs);
        let m1 = (m0 + MC).min(m);
        let mut acc = [[T::default(); NR]; MR];
        for p in r * chunk..((r + 1) * chunk).min(panels) {
            let mut i0 = m0;
            while i0 < m1 {
                let mr = MR.min(m1 - i0);
                let n0 = p * NR;
                let mut tile = Tile {
                    i0,
                    mr,
                    p,
                    n0,
                    nv: NR.min(n - n0),
                    // Rows i0.., columns n0.. of this unit's panels, inside `c` (checked
                    // above); no other unit writes them.
                    ptr: cp.get().wrapping_add(i0 * ldc + n0),
                    ldc,
                };
                kernel(&mut acc, &mut tile);
                i0 += mr;
            }
        }
    });
}
