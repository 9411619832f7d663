//! Single kernels on plain slices, for tests that check each GPU op against its CPU twin. Each
//! records one dispatch with the kernel set of `gpu` ([`Gpu::set_kernels`]).
#![cfg(not(target_arch = "wasm32"))]

use crate::plan::{Plan, Recorder};
use crate::weights::{f32_buffer, weight_buffer, GLinear, GLn, Precision};
use crate::{Gpu, Result};

/// Records with `f` on a fresh recorder and returns the `len` floats of the buffer it names.
fn run_one(
    gpu: &Gpu,
    precision: Precision,
    len: usize,
    f: impl FnOnce(&mut Recorder) -> Result<wgpu::Buffer>,
) -> Result<Vec<f32>> {
    let dummy = f32_buffer(gpu, "dummy", &[0.0; 4]);
    let mut r = Recorder::new(gpu, &dummy, precision);
    let out = f(&mut r)?;
    let plan: Plan = r.finish(dummy.clone(), None, out, len)?;
    plan.run(gpu, None, None)
}

/// `C (+)= A[m, k] · W[n, k]ᵀ (+ bias) (QuickGELU)`; `c0` given = residual accumulate.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    gpu: &Gpu,
    a: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    gelu: bool,
    c0: Option<&[f32]>,
    f16: bool,
) -> Result<Vec<f32>> {
    let precision = if f16 { Precision::F16 } else { Precision::F32 };
    run_one(gpu, precision, m * n, |r| {
        let ab = f32_buffer(gpu, "a", a);
        let lin = GLinear {
            w: weight_buffer(gpu, "w", w, precision),
            b: bias.map(|b| f32_buffer(gpu, "b", b)),
            n: n as u32,
            k: k as u32,
        };
        let c = match c0 {
            Some(c0) => f32_buffer(gpu, "c", c0),
            None => r.buf("c", m * n),
        };
        r.matmul(
            &ab,
            k as u32,
            m as u32,
            &lin,
            &c,
            n as u32,
            gelu,
            c0.is_some(),
        );
        Ok(c)
    })
}

/// Attention on a fused `qkv [seqs·t, 3d]` buffer.
pub fn attention(
    gpu: &Gpu,
    qkv: &[f32],
    seqs: usize,
    t: usize,
    d: usize,
    heads: usize,
    causal: bool,
) -> Result<Vec<f32>> {
    run_one(gpu, Precision::F32, seqs * t * d, |r| {
        let q = f32_buffer(gpu, "qkv", qkv);
        let out = r.buf("out", seqs * t * d);
        let (s, t, d, h) = (seqs as u32, t as u32, d as u32, heads as u32);
        r.attention(&q, &out, s, t, d, h, causal)?;
        Ok(out)
    })
}

/// LayerNorm of `rows` rows of width `d`, taken from row `first + r·stride` of `x`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    gpu: &Gpu,
    x: &[f32],
    rows: usize,
    d: usize,
    first: usize,
    stride: usize,
    w: &[f32],
    bias: &[f32],
    eps: f32,
) -> Result<Vec<f32>> {
    run_one(gpu, Precision::F32, rows * d, |r| {
        let xb = f32_buffer(gpu, "x", x);
        let l = GLn {
            w: f32_buffer(gpu, "w", w),
            b: f32_buffer(gpu, "b", bias),
            eps,
        };
        let out = r.buf("out", rows * d);
        r.ln(
            &xb,
            rows as u32,
            d as u32,
            first as u32,
            stride as u32,
            &l,
            &out,
        );
        Ok(out)
    })
}

/// im2col of `images` images `[3, s, s]` into patches `[images·g², 3·p²]` (g = s / p).
pub fn im2col(gpu: &Gpu, pixels: &[f32], images: usize, s: usize, p: usize) -> Result<Vec<f32>> {
    let g = s / p;
    let len = images * g * g * 3 * p * p;
    run_one(gpu, Precision::F32, len, |r| {
        let px = f32_buffer(gpu, "pixels", pixels);
        let out = r.buf("patches", len);
        r.im2col(&px, &out, images as u32, s as u32, p as u32, g as u32);
        Ok(out)
    })
}

/// The first `patches + 1` rows of each of `images` sequences of `t` rows: CLS + position 0,
/// then each patch embedding + its position (`cls_pos` = class embedding ++ positions); the
/// other rows stay zero.
pub fn assemble(
    gpu: &Gpu,
    patch_emb: &[f32],
    cls_pos: &[f32],
    images: usize,
    t: usize,
    d: usize,
) -> Result<Vec<f32>> {
    let patches = patch_emb.len() / (images * d);
    run_one(gpu, Precision::F32, images * t * d, |r| {
        let pe = f32_buffer(gpu, "patch_emb", patch_emb);
        let cp = f32_buffer(gpu, "cls_pos", cls_pos);
        let x = r.buf("x", images * t * d);
        let (i, t, p, d) = (images as u32, t as u32, patches as u32, d as u32);
        r.assemble(&pe, &cp, &x, i, t, p, d);
        Ok(x)
    })
}

/// `x` with rows `start..start + n` of each of `seqs` sequences of `t` rows replaced by `prompt`.
pub fn splice(
    gpu: &Gpu,
    prompt: &[f32],
    x: &[f32],
    seqs: usize,
    t: usize,
    start: usize,
    d: usize,
) -> Result<Vec<f32>> {
    let n = prompt.len() / d;
    run_one(gpu, Precision::F32, x.len(), |r| {
        let pb = f32_buffer(gpu, "prompt", prompt);
        let xb = f32_buffer(gpu, "x", x);
        let (s, t, st, n, d) = (seqs as u32, t as u32, start as u32, n as u32, d as u32);
        r.splice(&pb, &xb, s, t, st, n, d);
        Ok(xb)
    })
}

/// Each row of width `d` of `x` scaled to unit L2 norm.
pub fn l2norm(gpu: &Gpu, x: &[f32], d: usize) -> Result<Vec<f32>> {
    run_one(gpu, Precision::F32, x.len(), |r| {
        let xb = f32_buffer(gpu, "x", x);
        r.l2norm(&xb, (x.len() / d) as u32, d as u32);
        Ok(xb)
    })
}
