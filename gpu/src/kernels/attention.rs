//! `shaders/attention.wgsl`: multi-head attention on a fused qkv buffer, simple or tiled.

use crate::plan::{groups, Recorder};
use crate::{GpuError, KernelSet, Result};

const WGSL: &str = include_str!("../../shaders/attention.wgsl");

/// Queries per workgroup of `tiled` (BQ in the WGSL).
const BQ: u32 = 64;

/// `Params` in attention.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    seqs: u32,
    t: u32,
    d: u32,
    heads: u32,
    causal: u32,
    scale: f32,
    _pad: [u32; 2],
}

/// The module for head dimension `hd` (a constant of `tiled`; `main` reads it from the params).
pub(crate) fn source(hd: u32) -> String {
    format!("const HD: u32 = {hd}u;\n{WGSL}")
}

impl Recorder<'_> {
    /// Attention of `seqs` sequences of `t` rows: `qkv [seqs·t, 3d]` → `out [seqs·t, d]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention(
        &mut self,
        qkv: &wgpu::Buffer,
        out: &wgpu::Buffer,
        seqs: u32,
        t: u32,
        d: u32,
        heads: u32,
        causal: bool,
    ) -> Result<()> {
        let hd = d / heads;
        // The simple kernel keeps a 128-float row per invocation; the tiled one needs hd in
        // registers and 2·16·hd floats of workgroup memory (16 KiB at hd = 128).
        if hd == 0 || hd > 128 || !d.is_multiple_of(heads) {
            return Err(GpuError(format!(
                "attention with {heads} heads of width {d}: the GPU kernels need a head dimension of 1 to 128"
            )));
        }
        let scale = 1.0 / (hd as f32).sqrt();
        let p = self.uniform(&Params {
            seqs,
            t,
            d,
            heads,
            causal: u32::from(causal),
            scale,
            _pad: [0; 2],
        });
        let (entry, g) = match self.gpu.kernels() {
            KernelSet::Simple => ("main", groups(seqs * heads * t, 64)),
            KernelSet::Tiled | KernelSet::CoopMatrix => {
                ("tiled", groups(seqs * heads * t.div_ceil(BQ), 1))
            }
        };
        let pipe = self
            .gpu
            .pipeline(&format!("attention hd {hd}"), entry, || source(hd));
        // Scores and weighted values: 2 multiply-adds per (query, visible key, channel).
        let (tf, sh, hdf) = (t as f64, (seqs * heads) as f64, hd as f64);
        let pairs = if causal {
            tf * (tf + 1.0) / 2.0
        } else {
            tf * tf
        };
        let name = match self.gpu.kernels() {
            KernelSet::Simple => "attention simple",
            KernelSet::Tiled | KernelSet::CoopMatrix => "attention tiled",
        };
        self.dispatch(
            name.into(),
            pipe,
            &[(0, &p), (1, qkv), (2, out)],
            g,
            4.0 * sh * pairs * hdf,
            4.0 * (seqs as f64) * tf * 4.0 * d as f64,
        );
        Ok(())
    }
}
