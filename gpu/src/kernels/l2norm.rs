//! `shaders/l2norm.wgsl`: rows scaled to unit L2 norm, in place.

use crate::plan::{groups, Recorder};

pub(crate) const SOURCE: &str = include_str!("../../shaders/l2norm.wgsl");

/// `Params` in l2norm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    d: u32,
    _pad: [u32; 2],
}

impl Recorder<'_> {
    /// Each of `rows` rows of width `d` of `x` divided by its L2 norm (zero rows stay zero).
    pub(crate) fn l2norm(&mut self, x: &wgpu::Buffer, rows: u32, d: u32) {
        let p = self.uniform(&Params {
            rows,
            d,
            _pad: [0; 2],
        });
        let pipe = self.gpu.pipeline("l2norm", "main", || SOURCE.into());
        let n = (rows * d) as f64;
        self.dispatch(
            "l2norm".into(),
            pipe,
            &[(0, &p), (1, x)],
            groups(rows, 64),
            3.0 * n,
            8.0 * n,
        );
    }
}
