//! Single kernels on plain slices, for tests that check each GPU op against its CPU twin.
#![cfg(not(target_arch = "wasm32"))]

use crate::plan::{Builder, Plan};
use crate::weights::{f32_buffer, GLinear, GLn, Precision};
use crate::{Gpu, Result};
use wgpu::util::DeviceExt;

fn weight(gpu: &Gpu, w: &[f32], f16: bool) -> wgpu::Buffer {
    if !f16 {
        return f32_buffer(gpu, "w", w);
    }
    let h: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
    let mut bytes: Vec<u8> = bytemuck::cast_slice(&h).to_vec();
    bytes.resize(bytes.len().div_ceil(4).max(1) * 4, 0);
    gpu.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("w16"),
            contents: &bytes,
            usage: wgpu::BufferUsages::STORAGE,
        })
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
    let dummy = f32_buffer(gpu, "dummy", &[0.0; 4]);
    let mut b = Builder::new(
        gpu,
        &dummy,
        if f16 { Precision::F16 } else { Precision::F32 },
    );
    let ab = f32_buffer(gpu, "a", a);
    let lin = GLinear {
        w: weight(gpu, w, f16),
        b: bias.map(|b| f32_buffer(gpu, "b", b)),
        n: n as u32,
        k: k as u32,
    };
    let c = match c0 {
        Some(c0) => f32_buffer(gpu, "c", c0),
        None => b.buf("c", m * n),
    };
    b.matmul(
        &ab,
        k as u32,
        m as u32,
        &lin,
        &c,
        n as u32,
        gelu,
        c0.is_some(),
    );
    Plan::finish(b, dummy.clone(), None, c, m * n)?.run(gpu, None, None)
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
    let dummy = f32_buffer(gpu, "dummy", &[0.0; 4]);
    let mut b = Builder::new(gpu, &dummy, Precision::F32);
    let q = f32_buffer(gpu, "qkv", qkv);
    let out = b.buf("out", seqs * t * d);
    b.attention(
        &q,
        &out,
        seqs as u32,
        t as u32,
        d as u32,
        heads as u32,
        causal,
    );
    Plan::finish(b, dummy.clone(), None, out, seqs * t * d)?.run(gpu, None, None)
}

/// LayerNorm of `rows` rows of width `d`.
pub fn layer_norm(
    gpu: &Gpu,
    x: &[f32],
    rows: usize,
    d: usize,
    w: &[f32],
    bias: &[f32],
    eps: f32,
) -> Result<Vec<f32>> {
    let dummy = f32_buffer(gpu, "dummy", &[0.0; 4]);
    let mut b = Builder::new(gpu, &dummy, Precision::F32);
    let xb = f32_buffer(gpu, "x", x);
    let l = GLn {
        w: f32_buffer(gpu, "w", w),
        b: f32_buffer(gpu, "b", bias),
        eps,
    };
    let out = b.buf("out", rows * d);
    b.ln(&xb, rows as u32, d as u32, 0, 1, &l, &out);
    Plan::finish(b, dummy.clone(), None, out, rows * d)?.run(gpu, None, None)
}
