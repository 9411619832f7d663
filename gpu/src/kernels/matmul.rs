//! `shaders/matmul.wgsl`: C (+)= alpha·A·Wᵀ (+ bias) (QuickGELU), simple or tiled.

use crate::plan::Recorder;
use crate::weights::{GLinear, Precision};
use crate::KernelSet;

const WGSL: &str = include_str!("../../shaders/matmul.wgsl");
const COOP_WGSL: &str = include_str!("../../shaders/matmul_coop.wgsl");

/// The cooperative-matrix module for workgroups of one subgroup of `sg` invocations.
pub(crate) fn coop_source(sg: u32) -> String {
    format!("enable f16;\nenable wgpu_cooperative_matrix;\nconst SG: u32 = {sg}u;\n{COOP_WGSL}")
}

/// `Params` in matmul.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    ldc: u32,
    a_off: u32,
    c_off: u32,
    /// 1 = add bias, 2 = QuickGELU, 4 = accumulate into C.
    flags: u32,
    alpha: f32,
    _pad: [u32; 3],
}

/// A tile shape of the `tiled` entry point: BM×BN outputs per workgroup, TM×TN per invocation,
/// BK values of k per step through workgroup memory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Tile {
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    pub tm: u32,
    pub tn: u32,
}

/// Largest first. Each uses 256 invocations; workgroup memory 8.4 / 8.7 / 4.6 KiB (of WebGPU's
/// 16 KiB). Per k step an invocation does TM·TN FMAs for TM + TN workgroup-memory reads.
pub(crate) const TILES: [Tile; 3] = [
    Tile {
        bm: 128,
        bn: 128,
        bk: 8,
        tm: 8,
        tn: 8,
    },
    Tile {
        bm: 64,
        bn: 64,
        bk: 16,
        tm: 4,
        tn: 4,
    },
    Tile {
        bm: 32,
        bn: 32,
        bk: 16,
        tm: 2,
        tn: 2,
    },
];

/// Workgroups the largest tile must still give to be chosen: enough to fill a GPU of ~100
/// compute units twice (an H100 has 132 SMs, an M2 10 cores). Smaller grids take a smaller tile.
const FILL: u32 = 192;

impl Tile {
    pub(crate) fn name(&self) -> String {
        format!("tiled {}×{}", self.bm, self.bn)
    }

    fn workgroups(&self, m: u32, n: u32) -> u32 {
        m.div_ceil(self.bm) * n.div_ceil(self.bn)
    }

    /// The largest tile that still gives [`FILL`] workgroups, else the smallest.
    pub(crate) fn for_shape(m: u32, n: u32) -> Tile {
        TILES
            .into_iter()
            .find(|t| t.workgroups(m, n) >= FILL)
            .unwrap_or(TILES[TILES.len() - 1])
    }
}

/// The module for `tile` (its constants; `main` ignores them) with f32 or f16 weights.
pub(crate) fn source(tile: &Tile, f16: bool) -> String {
    format!(
        "{}alias WT = {};\nconst BM: u32 = {}u;\nconst BN: u32 = {}u;\nconst BK: u32 = {}u;\n\
         const TM: u32 = {}u;\nconst TN: u32 = {}u;\n{WGSL}",
        if f16 { "enable f16;\n" } else { "" },
        if f16 { "f16" } else { "f32" },
        tile.bm,
        tile.bn,
        tile.bk,
        tile.tm,
        tile.tn
    )
}

impl Recorder<'_> {
    /// `c[r·ldc + j] (+)= a[r·lda ..] · W[j]ᵀ (+ bias) (QuickGELU)` for r < m, j < n.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn matmul(
        &mut self,
        a: &wgpu::Buffer,
        lda: u32,
        m: u32,
        w: &GLinear,
        c: &wgpu::Buffer,
        ldc: u32,
        gelu: bool,
        acc: bool,
    ) {
        let flags = u32::from(w.b.is_some()) | if gelu { 2 } else { 0 } | if acc { 4 } else { 0 };
        let p = self.uniform(&Params {
            m,
            n: w.n,
            k: w.k,
            lda,
            ldc,
            a_off: 0,
            c_off: 0,
            flags,
            alpha: 1.0,
            _pad: [0; 3],
        });
        let bias = w.b.as_ref().unwrap_or(self.dummy);
        let f16 = self.precision == Precision::F16;
        let coop = self.gpu.kernels() == KernelSet::CoopMatrix
            && f16
            && self.gpu.coop_subgroup.is_some()
            && w.n.is_multiple_of(16)
            && w.k.is_multiple_of(16)
            && w.n >= 16;
        let (pipe, groups, variant) = if let Some(sg) = self.gpu.coop_subgroup.filter(|_| coop) {
            let pipe = self
                .gpu
                .pipeline(&format!("matmul coopmat sg{sg}"), "main", || {
                    coop_source(sg)
                });
            (
                pipe,
                [w.n.div_ceil(32), m.div_ceil(32), 1],
                "coopmat 32×32".to_string(),
            )
        } else {
            let (tile, entry, groups, variant) = match self.gpu.kernels() {
                KernelSet::Simple => {
                    let g = [w.n.div_ceil(32), m.div_ceil(32), 1];
                    (TILES[2], "main", g, "simple".to_string())
                }
                KernelSet::Tiled | KernelSet::CoopMatrix => {
                    let t = Tile::for_shape(m, w.n);
                    (
                        t,
                        "tiled",
                        [w.n.div_ceil(t.bn), m.div_ceil(t.bm), 1],
                        t.name(),
                    )
                }
            };
            let key = format!("matmul {}{}", tile.name(), if f16 { " f16" } else { "" });
            (
                self.gpu.pipeline(&key, entry, || source(&tile, f16)),
                groups,
                variant,
            )
        };
        let (mf, nf, kf) = (m as f64, w.n as f64, w.k as f64);
        let wbytes = if f16 { 2.0 } else { 4.0 };
        let bytes = 4.0 * mf * kf
            + wbytes * nf * kf
            + 4.0 * mf * nf * if acc { 2.0 } else { 1.0 }
            + if w.b.is_some() { 4.0 * nf } else { 0.0 };
        self.dispatch(
            format!("matmul {variant}{}", if f16 { " f16" } else { "" }),
            pipe,
            &[(0, &p), (1, a), (2, &w.w), (3, bias), (4, c)],
            groups,
            2.0 * mf * nf * kf,
            bytes,
        );
    }
}
