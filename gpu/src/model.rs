//! [`GpuModel`]: CLIP (+ a method's prompts) resident on a GPU, with a plan per batch size.

#[cfg(not(target_arch = "wasm32"))]
use crate::plan::Profile;
use crate::plan::{Plan, TextInput};
use crate::weights::{Precision, Weights};
use crate::{forward, Gpu, GpuError, KernelSet, Result};
use maple_core::{Model, TextFeatures, TokenRow};
use std::collections::HashMap;

/// CLIP (+ a method's prompts) resident on a GPU.
pub struct GpuModel {
    /// The device the weights live on.
    pub gpu: Gpu,
    /// How the matmul weights are stored.
    pub precision: Precision,
    w: Weights,
    /// Image-tower plans by batch size.
    plans: HashMap<usize, Plan>,
}

impl GpuModel {
    /// Uploads every weight of `model` once. `F16` needs an adapter with `SHADER_F16`.
    pub fn upload(gpu: Gpu, model: &Model, precision: Precision) -> Result<Self> {
        let w = Weights::upload(&gpu, model, precision)?;
        Ok(GpuModel {
            gpu,
            precision,
            w,
            plans: HashMap::new(),
        })
    }

    /// Records later forward passes with `k` (plans recorded before are dropped).
    pub fn set_kernels(&mut self, k: KernelSet) {
        if k != self.gpu.kernels() {
            self.gpu.set_kernels(k);
            self.plans.clear();
        }
    }

    /// The image-tower plan for `count` images, recorded on first use.
    fn vision_plan(&mut self, count: usize) -> Result<&Plan> {
        if !self.plans.contains_key(&count) {
            let p = forward::vision(&self.gpu, &self.w, count as u32)?;
            self.plans.insert(count, p);
        }
        Ok(&self.plans[&count])
    }

    fn check_pixels(&self, pixels: &[f32], count: usize) -> Result<()> {
        let s = self.w.cfg.vision.image_size;
        if count == 0 || pixels.len() != count * 3 * s * s {
            return Err(GpuError(format!(
                "expected {count} images of 3×{s}×{s} pixels"
            )));
        }
        Ok(())
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

    /// Runs the image tower on `count` images with a GPU timestamp around every dispatch and
    /// returns the time per kernel ([`Plan::profile`]). Needs [`Gpu::timestamps`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile_images(&mut self, pixels: &[f32], count: usize) -> Result<Profile> {
        self.encode_images(pixels, count)?;
        self.vision_plan(count)?;
        self.plans[&count].profile(&self.gpu)
    }

    /// L2-normalised image features `[count, E]` for `count` preprocessed images.
    pub async fn encode_images_async(&mut self, pixels: &[f32], count: usize) -> Result<Vec<f32>> {
        self.check_pixels(pixels, count)?;
        self.vision_plan(count)?;
        let plan = &self.plans[&count];
        plan.run_async(&self.gpu, Some(bytemuck::cast_slice(pixels)), None)
            .await
    }

    /// L2-normalised text features for token rows (computed once per label list).
    pub async fn encode_texts_async(&mut self, rows: &[TokenRow]) -> Result<TextFeatures> {
        let cfg = &self.w.cfg;
        let e = cfg.projection_dim;
        let l = cfg.text.max_position_embeddings;
        let n = self.w.text_prompts.as_ref().map_or(0, |p| p.n as usize);
        let mut data = Vec::with_capacity(rows.len() * e);
        for chunk in rows.chunks(64) {
            // Causal attention: running only up to the longest EOT is exact (docs/model.md §7).
            let mut eots = Vec::with_capacity(chunk.len());
            for r in chunk {
                if r.len() < 2
                    || r.len() > l
                    || r.iter().any(|&id| id as usize >= cfg.text.vocab_size)
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
            let plan = forward::text(&self.gpu, &self.w, chunk.len() as u32, t as u32)?;
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
