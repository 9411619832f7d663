//! `shaders/embed.wgsl`: building the token sequences (im2col, assemble, gather, add_pos).

use crate::plan::{groups, Recorder};

pub(crate) const SOURCE: &str = include_str!("../../shaders/embed.wgsl");

/// `Params` in embed.wgsl: six numbers whose meaning depends on the entry point.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
    e: u32,
    f: u32,
    _pad: [u32; 2],
}

impl Params {
    fn new(a: u32, b: u32, c: u32, d: u32) -> Self {
        Params {
            a,
            b,
            c,
            d,
            e: 0,
            f: 0,
            _pad: [0; 2],
        }
    }
}

impl Recorder<'_> {
    fn embed(
        &mut self,
        entry: &'static str,
        p: Params,
        binds: &[(u32, &wgpu::Buffer)],
        items: u32,
    ) {
        let u = self.uniform(&p);
        let pipe = self.gpu.pipeline("embed", entry, || SOURCE.into());
        let mut all = vec![(0, &u)];
        all.extend_from_slice(binds);
        self.dispatch(
            format!("embed {entry}"),
            pipe,
            &all,
            groups(items, 256),
            0.0,
            8.0 * items as f64,
        );
    }

    /// `pixels [images, 3, s, s]` → `patches [images·g², 3·patch²]` (conv-weight column order).
    pub(crate) fn im2col(
        &mut self,
        pixels: &wgpu::Buffer,
        patches: &wgpu::Buffer,
        images: u32,
        s: u32,
        patch: u32,
        g: u32,
    ) {
        let items = images * g * g * 3 * patch * patch;
        self.embed(
            "im2col",
            Params::new(images, s, patch, g),
            &[(1, pixels), (4, patches)],
            items,
        );
    }

    /// Rows 0..=g² of each of `images` sequences of `t` rows: CLS + position 0, then patch
    /// embedding p + position 1 + p. `cls_pos` = class_embedding ++ position_embedding.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn assemble(
        &mut self,
        patch_emb: &wgpu::Buffer,
        cls_pos: &wgpu::Buffer,
        x: &wgpu::Buffer,
        images: u32,
        t: u32,
        patches: u32,
        d: u32,
    ) {
        self.embed(
            "assemble",
            Params::new(images, t, patches, d),
            &[(1, patch_emb), (2, cls_pos), (4, x)],
            images * (patches + 1) * d,
        );
    }

    /// `out[r] = table[idx[r]]` for `rows` rows of width d.
    pub(crate) fn gather(
        &mut self,
        table: &wgpu::Buffer,
        idx: &wgpu::Buffer,
        out: &wgpu::Buffer,
        rows: u32,
        d: u32,
    ) {
        self.embed(
            "gather",
            Params::new(rows, 0, 0, d),
            &[(1, table), (3, idx), (4, out)],
            rows * d,
        );
    }

    /// `x[s·t + r] += pos[r]` for every sequence s and r < `rows` (width d).
    pub(crate) fn add_pos(
        &mut self,
        pos: &wgpu::Buffer,
        x: &wgpu::Buffer,
        seqs: u32,
        t: u32,
        rows: u32,
        d: u32,
    ) {
        self.embed(
            "add_pos",
            Params::new(seqs, t, rows, d),
            &[(2, pos), (4, x)],
            seqs * rows * d,
        );
    }
}
