//! CLIP ViT-B/16 weights as plain structs mirroring the HF `CLIPModel` checkpoint names
//! (spec §2.1). Loading checks every shape against the config and packs each Linear for the GEMM.

use crate::config::{ClipConfig, TowerConfig};
use crate::error::{Error, Result};
use crate::gemm::PackedMatrix;
use crate::safetensors::TensorSource;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub eps: f32,
}

/// `y = x·Wᵀ + b` with W packed.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: PackedMatrix,
    pub bias: Vec<f32>,
}

/// `…encoder.layers.{i}`; q, k and v are fused into one [3D] Linear (order q, k, v).
#[derive(Debug, Clone)]
pub struct EncoderLayer {
    pub layer_norm1: LayerNorm,
    pub qkv_proj: Linear,
    pub out_proj: Linear,
    pub layer_norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
}

#[derive(Debug, Clone)]
pub struct VisionModel {
    /// Conv 16×16/16 as a matmul: [C·P·P] → [D].
    pub patch_embedding: PackedMatrix,
    pub class_embedding: Vec<f32>,
    /// [1 + G², D]
    pub position_embedding: Vec<f32>,
    pub pre_layrnorm: LayerNorm,
    pub layers: Vec<EncoderLayer>,
    pub post_layernorm: LayerNorm,
}

#[derive(Debug, Clone)]
pub struct TextModel {
    /// [V, D]
    pub token_embedding: Vec<f32>,
    /// [L, D]
    pub position_embedding: Vec<f32>,
    pub layers: Vec<EncoderLayer>,
    pub final_layer_norm: LayerNorm,
}

#[derive(Debug, Clone)]
pub struct Clip {
    pub config: ClipConfig,
    pub vision_model: VisionModel,
    pub text_model: TextModel,
    /// [Dv] → [E]
    pub visual_projection: PackedMatrix,
    /// [Dt] → [E]
    pub text_projection: PackedMatrix,
    pub logit_scale: f32,
}

/// Reads tensors by name, checking shapes.
pub(crate) struct Reader<'a> {
    pub src: &'a dyn TensorSource,
    pub prefix: String,
}

impl Reader<'_> {
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let full = format!("{}{}", self.prefix, name);
        let t = self
            .src
            .tensor(&full)
            .ok_or_else(|| Error::MissingTensor(full.clone()))?;
        if t.shape != shape {
            return Err(Error::Shape {
                name: full,
                expected: shape.to_vec(),
                found: t.shape,
            });
        }
        t.to_f32(&full)
    }

    pub fn has(&self, name: &str) -> bool {
        self.src
            .tensor(&format!("{}{}", self.prefix, name))
            .is_some()
    }

    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.src
            .tensor(&format!("{}{}", self.prefix, name))
            .map(|t| t.shape)
    }

    fn layer_norm(&self, name: &str, d: usize, eps: f32) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.get(&format!("{name}.weight"), &[d])?,
            bias: self.get(&format!("{name}.bias"), &[d])?,
            eps,
        })
    }

    fn linear(&self, name: &str, n_out: usize, k_in: usize) -> Result<Linear> {
        let w = self.get(&format!("{name}.weight"), &[n_out, k_in])?;
        Ok(Linear {
            weight: PackedMatrix::from_out_in(&w, n_out, k_in),
            bias: self.get(&format!("{name}.bias"), &[n_out])?,
        })
    }

    fn layer(&self, name: &str, t: &TowerConfig) -> Result<EncoderLayer> {
        let (d, f) = (t.hidden_size, t.intermediate_size);
        let mut w = Vec::with_capacity(3 * d * d);
        let mut b = Vec::with_capacity(3 * d);
        for p in ["q_proj", "k_proj", "v_proj"] {
            w.extend(self.get(&format!("{name}.self_attn.{p}.weight"), &[d, d])?);
            b.extend(self.get(&format!("{name}.self_attn.{p}.bias"), &[d])?);
        }
        Ok(EncoderLayer {
            layer_norm1: self.layer_norm(&format!("{name}.layer_norm1"), d, t.layer_norm_eps)?,
            qkv_proj: Linear {
                weight: PackedMatrix::from_out_in(&w, 3 * d, d),
                bias: b,
            },
            out_proj: self.linear(&format!("{name}.self_attn.out_proj"), d, d)?,
            layer_norm2: self.layer_norm(&format!("{name}.layer_norm2"), d, t.layer_norm_eps)?,
            fc1: self.linear(&format!("{name}.mlp.fc1"), f, d)?,
            fc2: self.linear(&format!("{name}.mlp.fc2"), d, f)?,
        })
    }
}

impl Clip {
    /// Loads every tensor of a HF `CLIPModel` checkpoint (f32, f16 or bf16), checking shapes.
    pub fn load(config: &ClipConfig, src: &dyn TensorSource) -> Result<Self> {
        config.validate()?;
        let r = Reader {
            src,
            prefix: String::new(),
        };
        let v = &config.vision;
        let dv = v.tower.hidden_size;
        let pd = v.patch_dim();
        let patch = r.get(
            "vision_model.embeddings.patch_embedding.weight",
            &[dv, v.num_channels, v.patch_size, v.patch_size],
        )?;
        let vision_model = VisionModel {
            patch_embedding: PackedMatrix::from_out_in(&patch, dv, pd),
            class_embedding: r.get("vision_model.embeddings.class_embedding", &[dv])?,
            position_embedding: r.get(
                "vision_model.embeddings.position_embedding.weight",
                &[v.num_positions(), dv],
            )?,
            pre_layrnorm: r.layer_norm("vision_model.pre_layrnorm", dv, v.tower.layer_norm_eps)?,
            layers: (0..v.tower.num_hidden_layers)
                .map(|i| r.layer(&format!("vision_model.encoder.layers.{i}"), &v.tower))
                .collect::<Result<_>>()?,
            post_layernorm: r.layer_norm(
                "vision_model.post_layernorm",
                dv,
                v.tower.layer_norm_eps,
            )?,
        };
        let t = &config.text;
        let dt = t.tower.hidden_size;
        let text_model = TextModel {
            token_embedding: r.get(
                "text_model.embeddings.token_embedding.weight",
                &[t.vocab_size, dt],
            )?,
            position_embedding: r.get(
                "text_model.embeddings.position_embedding.weight",
                &[t.max_position_embeddings, dt],
            )?,
            layers: (0..t.tower.num_hidden_layers)
                .map(|i| r.layer(&format!("text_model.encoder.layers.{i}"), &t.tower))
                .collect::<Result<_>>()?,
            final_layer_norm: r.layer_norm(
                "text_model.final_layer_norm",
                dt,
                t.tower.layer_norm_eps,
            )?,
        };
        let e = config.projection_dim;
        let vp = r.get("visual_projection.weight", &[e, dv])?;
        let tp = r.get("text_projection.weight", &[e, dt])?;
        let logit_scale = match r.shape("logit_scale") {
            Some(s) if s.is_empty() => r.get("logit_scale", &[])?[0],
            Some(s) if s == [1] => r.get("logit_scale", &[1])?[0],
            Some(s) => {
                return Err(Error::Shape {
                    name: "logit_scale".to_string(),
                    expected: Vec::new(),
                    found: s,
                })
            }
            None => return Err(Error::MissingTensor("logit_scale".to_string())),
        };
        if !logit_scale.is_finite() || logit_scale.abs() > 20.0 {
            return Err(Error::Input(format!(
                "logit_scale = {logit_scale} is not a usable log-scale"
            )));
        }
        Ok(Clip {
            config: *config,
            vision_model,
            text_model,
            visual_projection: PackedMatrix::from_out_in(&vp, e, dv),
            text_projection: PackedMatrix::from_out_in(&tp, e, dt),
            logit_scale,
        })
    }
}
