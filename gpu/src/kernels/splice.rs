//! `shaders/splice.wgsl`: MaPLe's prompt splice (overwrite n rows of every sequence).

use crate::plan::{groups, Recorder};

pub(crate) const SOURCE: &str = include_str!("../../shaders/splice.wgsl");

/// `Params` in splice.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    seqs: u32,
    t: u32,
    start: u32,
    n: u32,
    d: u32,
    _pad: [u32; 3],
}

impl Recorder<'_> {
    /// `x[s·t + start + r] = prompt[r]` for every sequence s and r < n (rows of width d).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn splice(
        &mut self,
        prompt: &wgpu::Buffer,
        x: &wgpu::Buffer,
        seqs: u32,
        t: u32,
        start: u32,
        n: u32,
        d: u32,
    ) {
        let p = self.uniform(&Params {
            seqs,
            t,
            start,
            n,
            d,
            _pad: [0; 3],
        });
        let pipe = self.gpu.pipeline("splice", "main", || SOURCE.into());
        let items = seqs * n * d;
        self.dispatch(
            "splice".into(),
            pipe,
            &[(0, &p), (1, prompt), (2, x)],
            groups(items, 256),
            0.0,
            4.0 * (items as f64 + (n * d) as f64),
        );
    }
}
