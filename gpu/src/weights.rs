//! Weights on the device: one buffer per tensor, mirroring the core's structs. Linear weights
//! keep PyTorch's `[out, in]` layout (the matmul kernels read rows of W), in f32 or f16.
//! A leaf module: it knows buffers, not kernels or plans.

use crate::{Gpu, GpuError, Result};
use maple_core::clip::{EncoderLayer, LayerNorm, Linear};
use maple_core::config::TowerConfig;
use maple_core::gemm::PackedMatrix;
use maple_core::{ClipConfig, Model, TowerPrompts};
use wgpu::util::DeviceExt;

/// Storage type of the matmul weights (the math is f32 either way).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Precision {
    /// f32 everywhere.
    F32,
    /// Matmul weights stored as f16 (needs `shader-f16`); math stays f32.
    F16,
}

/// A Linear: `W [n, k]` (f32 or f16, as the model's precision says) and an optional bias `[n]`.
pub(crate) struct GLinear {
    pub w: wgpu::Buffer,
    pub b: Option<wgpu::Buffer>,
    pub n: u32,
    pub k: u32,
}

pub(crate) struct GLn {
    pub w: wgpu::Buffer,
    pub b: wgpu::Buffer,
    pub eps: f32,
}

pub(crate) struct GLayer {
    pub ln1: GLn,
    pub qkv: GLinear,
    pub out: GLinear,
    pub ln2: GLn,
    pub fc1: GLinear,
    pub fc2: GLinear,
}

pub(crate) struct GTower {
    pub layers: Vec<GLayer>,
    pub d: u32,
    pub f: u32,
    pub heads: u32,
}

/// One tower's prompts on the device: core's [`maple_core::TowerPrompts`], uploaded.
pub(crate) struct GPrompts {
    pub n: u32,
    /// `[n, D]`: the input prompt.
    pub input: wgpu::Buffer,
    /// `[n, D]` per block 1..depth.
    pub deep: Vec<wgpu::Buffer>,
}

/// Every tensor of CLIP (+ a method's prompts) on the device.
pub(crate) struct Weights {
    pub precision: Precision,
    pub cfg: ClipConfig,
    pub patch: GLinear,
    /// class_embedding `[D]` followed by position_embedding `[1 + G², D]`.
    pub cls_pos: wgpu::Buffer,
    pub pre_ln: GLn,
    pub vision: GTower,
    pub post_ln: GLn,
    pub vproj: GLinear,
    pub tok_emb: wgpu::Buffer,
    pub tpos: wgpu::Buffer,
    pub text: GTower,
    pub final_ln: GLn,
    pub tproj: GLinear,
    /// The text tower's prompts (docs/prompts.md §1: rows 1..=n).
    pub text_prompts: Option<GPrompts>,
    /// The image tower's prompts (appended after CLS + patches).
    pub vis_prompts: Option<GPrompts>,
    /// Bound where a kernel's optional input is absent (no bias).
    pub dummy: wgpu::Buffer,
}

/// A storage buffer holding `data` (at least 4 bytes, as wgpu wants).
pub(crate) fn f32_buffer(gpu: &Gpu, label: &str, data: &[f32]) -> wgpu::Buffer {
    let bytes: &[u8] = if data.is_empty() {
        &[0; 4]
    } else {
        bytemuck::cast_slice(data)
    };
    gpu.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
        })
}

/// A storage buffer of `W [n, k]` values stored as f32 or f16 (two per word, zero-padded).
pub(crate) fn weight_buffer(gpu: &Gpu, label: &str, w: &[f32], p: Precision) -> wgpu::Buffer {
    match p {
        Precision::F32 => f32_buffer(gpu, label, w),
        Precision::F16 => {
            let h: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
            let mut bytes: Vec<u8> = bytemuck::cast_slice(&h).to_vec();
            bytes.resize(bytes.len().div_ceil(4).max(1) * 4, 0);
            gpu.device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: &bytes,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                })
        }
    }
}

impl Weights {
    /// Uploads every weight of `model` once. `F16` needs an adapter with `SHADER_F16`.
    pub(crate) fn upload(gpu: &Gpu, model: &Model, precision: Precision) -> Result<Self> {
        if precision == Precision::F16 && !gpu.shader_f16 {
            return Err(GpuError(format!(
                "{} has no SHADER_F16: use f32 weights",
                gpu.info.name
            )));
        }
        if !model.clip.has_text() {
            return Err(GpuError(
                "the model's text tower is not loaded (load it before uploading)".into(),
            ));
        }
        let c = &model.clip;
        let cfg = c.config;
        let lin_raw = |label: &str, w: &PackedMatrix, b: Option<&[f32]>| GLinear {
            w: weight_buffer(gpu, label, &w.to_out_in(), precision),
            b: b.map(|b| f32_buffer(gpu, label, b)),
            n: w.n as u32,
            k: w.k as u32,
        };
        let lin = |label: &str, l: &Linear| lin_raw(label, &l.weight, Some(&l.bias));
        let ln = |label: &str, l: &LayerNorm| GLn {
            w: f32_buffer(gpu, label, &l.weight),
            b: f32_buffer(gpu, label, &l.bias),
            eps: l.eps,
        };
        let layer = |l: &EncoderLayer| GLayer {
            ln1: ln("ln1", &l.layer_norm1),
            qkv: lin("qkv", &l.qkv_proj),
            out: lin("out_proj", &l.out_proj),
            ln2: ln("ln2", &l.layer_norm2),
            fc1: lin("fc1", &l.fc1),
            fc2: lin("fc2", &l.fc2),
        };
        let tower = |layers: &[EncoderLayer], t: &TowerConfig| GTower {
            layers: layers.iter().map(layer).collect(),
            d: t.hidden_size as u32,
            f: t.intermediate_size as u32,
            heads: t.num_attention_heads as u32,
        };
        let vm = &c.vision_model;
        let tm = &c.text_model;
        let mut cls_pos = vm.class_embedding.clone();
        cls_pos.extend_from_slice(&vm.position_embedding);
        let upload = |p: Option<&TowerPrompts>, label: &str| {
            p.map(|p| GPrompts {
                n: p.n as u32,
                input: f32_buffer(gpu, label, &p.input),
                deep: p.deep.iter().map(|t| f32_buffer(gpu, label, t)).collect(),
            })
        };
        let pr = model.prompts.as_ref();
        let text_prompts = upload(pr.and_then(|p| p.text.as_ref()), "text_prompts");
        let vis_prompts = upload(pr.and_then(|p| p.vision.as_ref()), "vision_prompts");
        let w = Weights {
            precision,
            cfg,
            patch: lin_raw("patch_embedding", &vm.patch_embedding, None),
            cls_pos: f32_buffer(gpu, "cls_pos", &cls_pos),
            pre_ln: ln("pre_layrnorm", &vm.pre_layrnorm),
            vision: tower(&vm.layers, &cfg.vision.tower),
            post_ln: ln("post_layernorm", &vm.post_layernorm),
            vproj: lin_raw("visual_projection", &c.visual_projection, None),
            tok_emb: f32_buffer(gpu, "token_embedding", &tm.token_embedding.to_f32()),
            tpos: f32_buffer(gpu, "text_position_embedding", &tm.position_embedding),
            text: tower(&tm.layers, &cfg.text.tower),
            final_ln: ln("final_layer_norm", &tm.final_layer_norm),
            tproj: lin_raw("text_projection", &c.text_projection, None),
            text_prompts,
            vis_prompts,
            dummy: f32_buffer(gpu, "dummy", &[0.0; 4]),
        };
        gpu.check()?;
        Ok(w)
    }
}
