//! `shaders/layernorm.wgsl`: LayerNorm over rows, one invocation or one workgroup per row.

use crate::plan::{groups, Recorder};
use crate::weights::GLn;
use crate::KernelSet;

pub(crate) const SOURCE: &str = include_str!("../../shaders/layernorm.wgsl");

/// `Params` in layernorm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    d: u32,
    src_first: u32,
    src_stride: u32,
    eps: f32,
    _pad: [u32; 3],
}

impl Recorder<'_> {
    /// `out[r] = LayerNorm(x[first + r·stride])` for `rows` rows of width `d`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn ln(
        &mut self,
        x: &wgpu::Buffer,
        rows: u32,
        d: u32,
        first: u32,
        stride: u32,
        l: &GLn,
        out: &wgpu::Buffer,
    ) {
        let p = self.uniform(&Params {
            rows,
            d,
            src_first: first,
            src_stride: stride,
            eps: l.eps,
            _pad: [0; 3],
        });
        let (entry, g, name) = match self.gpu.kernels() {
            KernelSet::Simple => ("main", groups(rows, 64), "layernorm simple"),
            KernelSet::Tiled | KernelSet::CoopMatrix => ("rows", groups(rows, 1), "layernorm rows"),
        };
        let pipe = self.gpu.pipeline("layernorm", entry, || SOURCE.into());
        let (r, df) = (rows as f64, d as f64);
        self.dispatch(
            name.into(),
            pipe,
            &[(0, &p), (1, x), (2, &l.w), (3, &l.b), (4, out)],
            g,
            8.0 * r * df,
            4.0 * (2.0 * r * df + 2.0 * df),
        );
    }
}
