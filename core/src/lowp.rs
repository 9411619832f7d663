//! The loop the reduced-precision GEMMs (int8 in [`crate::q8`], bf16 in [`crate::bf16`]) share:
//! threads split the column panels, rows go in blocks of `MC` and tiles of up to `MR`; each
//! kernel fills a tile of accumulators and converts its rows into the output.

use crate::gemm::{Act, NR};
use crate::par::{split, Parallel, SyncPtr};
use crate::simd;

/// Rows per block (a block of rows is reused across the thread's panels).
const MC: usize = 120;
/// Rows per tile: one accumulator register per row.
pub(crate) const MR: usize = 12;

/// For every (row tile, column panel) of the `m × n` output `c` (row stride `ldc`):
/// `tile(i0, mr, p, acc)` fills `acc[..mr]` for rows `i0..i0 + mr` of panel `p`, then
/// `finish(i, n0, acc_row, out)` writes row `i`'s columns `n0..n0 + out.len()` (at most `NR`),
/// after which QuickGELU is applied if `act` asks for it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn for_each_tile<T: Copy + Default>(
    par: &Parallel,
    m: usize,
    n: usize,
    c: &mut [f32],
    ldc: usize,
    act: Act,
    tile: impl Fn(usize, usize, usize, &mut [[T; NR]; MR]) + Sync,
    finish: impl Fn(usize, usize, &[T; NR], &mut [f32]) + Sync,
) {
    assert!(m == 0 || c.len() >= (m - 1) * ldc + n, "output too short");
    let cp = SyncPtr(c.as_mut_ptr());
    let panels = n.div_ceil(NR);
    par.run(&|t, nt| {
        let (p_lo, p_hi) = split(panels, t, nt);
        let mut acc = [[T::default(); NR]; MR];
        for m0 in (0..m).step_by(MC) {
            let m1 = (m0 + MC).min(m);
            for p in p_lo..p_hi {
                let mut i0 = m0;
                while i0 < m1 {
                    let mr = MR.min(m1 - i0);
                    tile(i0, mr, p, &mut acc);
                    let n0 = p * NR;
                    let nv = NR.min(n - n0);
                    for (i, row) in acc.iter().enumerate().take(mr) {
                        // SAFETY: row i0+i, columns n0..n0+nv belong to this thread's panels,
                        // inside `c` (checked above).
                        let out = unsafe {
                            core::slice::from_raw_parts_mut(cp.get().add((i0 + i) * ldc + n0), nv)
                        };
                        finish(i0 + i, n0, row, out);
                        if act == Act::QuickGelu {
                            simd::quick_gelu_slice(simd::isa(), out);
                        }
                    }
                    i0 += mr;
                }
            }
        }
    });
}
