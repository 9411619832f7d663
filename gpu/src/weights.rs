//! Weights on the device: one buffer per tensor, mirroring the core's structs. Linear weights
//! keep PyTorch's `[out, in]` layout (the matmul kernel reads rows of W), in f32 or f16.

use crate::plan::{Plan, TextInput};
use crate::{Gpu, GpuError, Result};
use maple_core::clip::{EncoderLayer, LayerNorm, Linear};
use maple_core::config::TowerConfig;
use maple_core::gemm::PackedMatrix;
use maple_core::{ClipConfig, Model, TextFeatures, TokenRow};
use std::collections::HashMap;
use wgpu::util::DeviceExt;

/// Storage type of the matmul weights (the math is f32 either way).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Precision {
    /// f32 everywhere.
    F32,
    /// Matmul weights stored as f16 (needs `shader-f16`); math stays f32.
    F16,
}

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

pub(crate) struct GPrompts {
    pub n: u32,
    pub depth: usize,
    pub ctx: wgpu::Buffer,
    pub shared: wgpu::Buffer,
    pub text_deep: Vec<wgpu::Buffer>,
    pub vis_deep: Vec<wgpu::Buffer>,
}

/// CLIP (+ MaPLe prompts) resident on a GPU.
pub struct GpuModel {
    /// The device the weights live on.
    pub gpu: Gpu,
    /// How the matmul weights are stored.
    pub precision: Precision,
    pub(crate) cfg: ClipConfig,
    pub(crate) patch: GLinear,
    pub(crate) cls_pos: wgpu::Buffer,
    pub(crate) pre_ln: GLn,
    pub(crate) vision: GTower,
    pub(crate) post_ln: GLn,
    pub(crate) vproj: GLinear,
    pub(crate) tok_emb: wgpu::Buffer,
    pub(crate) tpos: wgpu::Buffer,
    pub(crate) text: GTower,
    pub(crate) final_ln: GLn,
    pub(crate) tproj: GLinear,
    pub(crate) prompts: Option<GPrompts>,
    pub(crate) dummy: wgpu::Buffer,
    plans: HashMap<usize, Plan>,
}

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

impl GpuModel {
    /// Uploads every weight of `model` once. `F16` needs an adapter with `SHADER_F16`.
    pub fn upload(gpu: Gpu, model: &Model, precision: Precision) -> Result<Self> {
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
        let lin_raw = |label: &str, w: &PackedMatrix, b: Option<&[f32]>| -> GLinear {
            let raw = w.to_out_in();
            let wb = match precision {
                Precision::F32 => f32_buffer(&gpu, label, &raw),
                Precision::F16 => {
                    let h: Vec<half::f16> = raw.iter().map(|&v| half::f16::from_f32(v)).collect();
                    let mut bytes: Vec<u8> = bytemuck::cast_slice(&h).to_vec();
                    while !bytes.len().is_multiple_of(4) {
                        bytes.push(0);
                    }
                    gpu.device
                        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                            label: Some(label),
                            contents: &bytes,
                            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                        })
                }
            };
            GLinear {
                w: wb,
                b: b.map(|b| f32_buffer(&gpu, label, b)),
                n: w.n as u32,
                k: w.k as u32,
            }
        };
        let lin = |label: &str, l: &Linear| lin_raw(label, &l.weight, Some(&l.bias));
        let ln = |label: &str, l: &LayerNorm| GLn {
            w: f32_buffer(&gpu, label, &l.weight),
            b: f32_buffer(&gpu, label, &l.bias),
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
        let prompts = model.prompts.as_ref().map(|p| GPrompts {
            n: p.n_ctx as u32,
            depth: p.depth,
            ctx: f32_buffer(&gpu, "ctx", &p.ctx),
            shared: f32_buffer(&gpu, "shared_ctx", &p.shared_ctx),
            text_deep: p
                .text_deep
                .iter()
                .map(|t| f32_buffer(&gpu, "text_deep", t))
                .collect(),
            vis_deep: p
                .vis_deep
                .iter()
                .map(|t| f32_buffer(&gpu, "vis_deep", t))
                .collect(),
        });
        let m = GpuModel {
            precision,
            cfg,
            patch: lin_raw("patch_embedding", &vm.patch_embedding, None),
            cls_pos: f32_buffer(&gpu, "cls_pos", &cls_pos),
            pre_ln: ln("pre_layrnorm", &vm.pre_layrnorm),
            vision: tower(&vm.layers, &cfg.vision.tower),
            post_ln: ln("post_layernorm", &vm.post_layernorm),
            vproj: lin_raw("visual_projection", &c.visual_projection, None),
            tok_emb: f32_buffer(&gpu, "token_embedding", &tm.token_embedding.to_f32()),
            tpos: f32_buffer(&gpu, "text_position_embedding", &tm.position_embedding),
            text: tower(&tm.layers, &cfg.text.tower),
            final_ln: ln("final_layer_norm", &tm.final_layer_norm),
            tproj: lin_raw("text_projection", &c.text_projection, None),
            prompts,
            dummy: f32_buffer(&gpu, "dummy", &[0.0; 4]),
            plans: HashMap::new(),
            gpu,
        };
        m.gpu.check()?;
        Ok(m)
    }

    /// L2-normalised image features `[count, E]` for `count` preprocessed images (blocking).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn encode_images(&mut self, pixels: &[f32], count: usize) -> Result<Vec<f32>> {
        pollster::block_on(self.encode_images_async(pixels, count))
    }

    /// Text features for token rows (blocking).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn encode_texts(&mut self, rows: &[TokenRow]) -> Result<TextFeatures> {
        pollster::block_on(self.encode_texts_async(rows))
    }

    /// L2-normalised image features `[count, E]` for `count` preprocessed images.
    pub async fn encode_images_async(&mut self, pixels: &[f32], count: usize) -> Result<Vec<f32>> {
        let s = self.cfg.vision.image_size;
        if count == 0 || pixels.len() != count * 3 * s * s {
            return Err(GpuError(format!(
                "expected {count} images of 3×{s}×{s} pixels"
            )));
        }
        if !self.plans.contains_key(&count) {
            let p = Plan::vision(self, count)?;
            self.plans.insert(count, p);
        }
        let plan = &self.plans[&count];
        plan.run_async(&self.gpu, Some(bytemuck::cast_slice(pixels)), None)
            .await
    }

    /// L2-normalised text features for token rows (computed once per label list).
    pub async fn encode_texts_async(&mut self, rows: &[TokenRow]) -> Result<TextFeatures> {
        let e = self.cfg.projection_dim;
        let l = self.cfg.text.max_position_embeddings;
        let n = self.prompts.as_ref().map_or(0, |p| p.n as usize);
        let mut data = Vec::with_capacity(rows.len() * e);
        for chunk in rows.chunks(64) {
            // Causal attention: running only up to the longest EOT is exact (spec §7).
            let mut eots = Vec::with_capacity(chunk.len());
            for r in chunk {
                if r.len() < 2
                    || r.len() > l
                    || r.iter().any(|&id| id as usize >= self.cfg.text.vocab_size)
                {
                    return Err(GpuError("token row out of range".into()));
                }
                let eot = r
                    .iter()
                    .enumerate()
                    .fold(0, |b, (i, &v)| if v > r[b] { i } else { b });
                if eot <= n {
                    return Err(GpuError("end-of-text token inside the prompt slots".into()));
                }
                eots.push(eot);
            }
            let t = eots.iter().max().copied().unwrap_or(1) + 1;
            let mut ids = vec![0u32; chunk.len() * t];
            for (b, r) in chunk.iter().enumerate() {
                let k = r.len().min(t);
                ids[b * t..b * t + k].copy_from_slice(&r[..k]);
            }
            let eot_rows: Vec<u32> = eots
                .iter()
                .enumerate()
                .map(|(b, &e)| (b * t + e) as u32)
                .collect();
            let plan = Plan::text(self, chunk.len(), t)?;
            let input = TextInput {
                ids: &ids,
                eot_rows: &eot_rows,
            };
            let f = plan.run_async(&self.gpu, None, Some(input)).await?;
            data.extend_from_slice(&f[..chunk.len() * e]);
        }
        Ok(TextFeatures { dim: e, data })
    }
}
