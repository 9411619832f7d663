//! Model configuration: the structural fields of a Hugging Face CLIP `config.json` (docs/model.md §14).

use crate::error::{Error, Result};
use alloc::format;
use alloc::string::String;
use serde_json::Value;

/// One transformer stack (vision or text).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TowerConfig {
    /// Width `d`.
    pub hidden_size: usize,
    /// MLP width (`4d` in CLIP).
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f32,
}

impl TowerConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// `vision_config`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VisionConfig {
    /// The transformer's geometry.
    pub tower: TowerConfig,
    /// Input side in pixels (224).
    pub image_size: usize,
    /// Patch side in pixels (16).
    pub patch_size: usize,
    /// Colour channels (3).
    pub num_channels: usize,
}

impl VisionConfig {
    /// Patches per side (14 for ViT-B/16 at 224).
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// CLS + patches (197 for ViT-B/16).
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }
    /// Length of one flattened patch: channels · patch².
    pub fn patch_dim(&self) -> usize {
        self.num_channels * self.patch_size * self.patch_size
    }
}

/// `text_config`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextConfig {
    /// The transformer's geometry.
    pub tower: TowerConfig,
    /// Tokenizer vocabulary (49408).
    pub vocab_size: usize,
    /// Context length in tokens (77).
    pub max_position_embeddings: usize,
}

/// HF `CLIPConfig`: what the weights must look like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipConfig {
    /// The image tower.
    pub vision: VisionConfig,
    /// The text tower.
    pub text: TextConfig,
    /// Width of the shared embedding space (512).
    pub projection_dim: usize,
}

impl ClipConfig {
    /// Why a fresh prompt shape does not fit this model, if it does not: `n_ctx` context
    /// tokens must leave room for BOS and EOT in the text sequence (1..=positions − 2), and
    /// `depth` (layers that take prompts, the input included) is 1..= the shallower tower's
    /// layers. Checked before anything is sized by them (no overflow for any `usize`).
    pub fn prompt_shape_problem(&self, n_ctx: usize, depth: usize) -> Option<String> {
        let max_ctx = self.text.max_position_embeddings.saturating_sub(2);
        let layers = self
            .vision
            .tower
            .num_hidden_layers
            .min(self.text.tower.num_hidden_layers);
        if n_ctx == 0 || n_ctx > max_ctx {
            Some(format!("n_ctx {n_ctx}: it must be 1..={max_ctx}"))
        } else if depth == 0 || depth > layers {
            Some(format!(
                "prompt depth {depth}: it must be 1..={layers} (the model's layers)"
            ))
        } else {
            None
        }
    }

    /// `openai/clip-vit-base-patch16`.
    pub fn vit_b16() -> Self {
        ClipConfig {
            vision: VisionConfig {
                tower: TowerConfig {
                    hidden_size: 768,
                    intermediate_size: 3072,
                    num_hidden_layers: 12,
                    num_attention_heads: 12,
                    layer_norm_eps: 1e-5,
                },
                image_size: 224,
                patch_size: 16,
                num_channels: 3,
            },
            text: TextConfig {
                tower: TowerConfig {
                    hidden_size: 512,
                    intermediate_size: 2048,
                    num_hidden_layers: 12,
                    num_attention_heads: 8,
                    layer_norm_eps: 1e-5,
                },
                vocab_size: 49408,
                max_position_embeddings: 77,
            },
            projection_dim: 512,
        }
    }

    /// Reads the fields maple needs from the text of a HF `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let root: Value = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("not valid JSON ({e})")))?;
        if !root.is_object() {
            return Err(Error::Config("top level is not a JSON object".into()));
        }
        let vc = section(&root, "vision_config")?;
        let tc = section(&root, "text_config")?;
        let cfg = ClipConfig {
            vision: VisionConfig {
                tower: tower(vc, "vision_config")?,
                image_size: int(vc, "vision_config", "image_size", None)?,
                patch_size: int(vc, "vision_config", "patch_size", None)?,
                num_channels: int(vc, "vision_config", "num_channels", Some(3))?,
            },
            text: TextConfig {
                tower: tower(tc, "text_config")?,
                vocab_size: int(tc, "text_config", "vocab_size", None)?,
                max_position_embeddings: int(tc, "text_config", "max_position_embeddings", None)?,
            },
            projection_dim: int(&root, "", "projection_dim", None)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the relations the kernels rely on; every violation names the field.
    pub fn validate(&self) -> Result<()> {
        for (name, t) in [
            ("vision_config", &self.vision.tower),
            ("text_config", &self.text.tower),
        ] {
            for (field, v) in [
                ("hidden_size", t.hidden_size),
                ("intermediate_size", t.intermediate_size),
                ("num_hidden_layers", t.num_hidden_layers),
                ("num_attention_heads", t.num_attention_heads),
            ] {
                if v == 0 || v > 1 << 16 {
                    return Err(Error::Config(format!(
                        "{name}.{field} = {v} is out of range"
                    )));
                }
            }
            if t.hidden_size % t.num_attention_heads != 0 {
                return Err(Error::Config(format!(
                    "{name}.hidden_size = {} is not divisible by num_attention_heads = {}",
                    t.hidden_size, t.num_attention_heads
                )));
            }
            if !(t.layer_norm_eps > 0.0 && t.layer_norm_eps < 1.0) {
                return Err(Error::Config(format!(
                    "{name}.layer_norm_eps = {} is out of range",
                    t.layer_norm_eps
                )));
            }
        }
        let v = &self.vision;
        if v.patch_size == 0 || v.image_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(Error::Config(format!(
                "vision_config.image_size = {} is not a multiple of patch_size = {}",
                v.image_size, v.patch_size
            )));
        }
        if v.image_size > 4096 {
            return Err(Error::Config(format!(
                "vision_config.image_size = {} is out of range",
                v.image_size
            )));
        }
        if v.num_channels != 3 {
            return Err(Error::Config(format!(
                "vision_config.num_channels = {} (only RGB models are supported)",
                v.num_channels
            )));
        }
        let t = &self.text;
        if t.max_position_embeddings < 3 || t.max_position_embeddings > 4096 {
            return Err(Error::Config(format!(
                "text_config.max_position_embeddings = {} is out of range",
                t.max_position_embeddings
            )));
        }
        if t.vocab_size < 2 || t.vocab_size > 1 << 24 {
            return Err(Error::Config(format!(
                "text_config.vocab_size = {} is out of range",
                t.vocab_size
            )));
        }
        if self.projection_dim == 0 || self.projection_dim > 1 << 16 {
            return Err(Error::Config(format!(
                "projection_dim = {} is out of range",
                self.projection_dim
            )));
        }
        Ok(())
    }
}

fn section<'a>(root: &'a Value, key: &str) -> Result<&'a Value> {
    match root.get(key) {
        Some(v) if v.is_object() => Ok(v),
        Some(_) => Err(Error::Config(format!("`{key}` is not an object"))),
        None => Err(Error::Config(format!("missing `{key}`"))),
    }
}

fn path(sec: &str, key: &str) -> String {
    if sec.is_empty() {
        String::from(key)
    } else {
        format!("{sec}.{key}")
    }
}

fn int(v: &Value, sec: &str, key: &str, default: Option<usize>) -> Result<usize> {
    match v.get(key) {
        Some(x) => x.as_u64().map(|n| n as usize).ok_or_else(|| {
            Error::Config(format!(
                "`{}` is not a non-negative integer",
                path(sec, key)
            ))
        }),
        None => default.ok_or_else(|| Error::Config(format!("missing `{}`", path(sec, key)))),
    }
}

fn tower(v: &Value, sec: &str) -> Result<TowerConfig> {
    match v.get("hidden_act").and_then(Value::as_str) {
        None | Some("quick_gelu") => {}
        Some(other) => {
            return Err(Error::Config(format!(
                "`{sec}.hidden_act` is \"{other}\"; CLIP ViT-B/16 uses \"quick_gelu\""
            )))
        }
    }
    let eps = match v.get("layer_norm_eps") {
        None => 1e-5,
        Some(x) => x
            .as_f64()
            .ok_or_else(|| Error::Config(format!("`{sec}.layer_norm_eps` is not a number")))?
            as f32,
    };
    Ok(TowerConfig {
        hidden_size: int(v, sec, "hidden_size", None)?,
        intermediate_size: int(v, sec, "intermediate_size", None)?,
        num_hidden_layers: int(v, sec, "num_hidden_layers", None)?,
        num_attention_heads: int(v, sec, "num_attention_heads", None)?,
        layer_norm_eps: eps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const B16: &str = r#"{"projection_dim":512,
      "text_config":{"vocab_size":49408,"hidden_size":512,"intermediate_size":2048,"num_hidden_layers":12,
        "num_attention_heads":8,"max_position_embeddings":77,"hidden_act":"quick_gelu","layer_norm_eps":1e-5},
      "vision_config":{"hidden_size":768,"intermediate_size":3072,"num_hidden_layers":12,"num_attention_heads":12,
        "image_size":224,"patch_size":16,"num_channels":3,"hidden_act":"quick_gelu","layer_norm_eps":1e-5}}"#;

    #[test]
    fn reads_vit_b16() {
        assert_eq!(
            ClipConfig::from_hf_json(B16).unwrap(),
            ClipConfig::vit_b16()
        );
    }

    #[test]
    fn names_the_bad_field() {
        let bad = B16.replace("\"num_attention_heads\":12", "\"num_attention_heads\":7");
        let e = ClipConfig::from_hf_json(&bad).unwrap_err();
        assert!(alloc::format!("{e}").contains("vision_config.hidden_size = 768 is not divisible"));
        let bad = B16.replace("\"patch_size\":16,", "");
        let e = ClipConfig::from_hf_json(&bad).unwrap_err();
        assert!(alloc::format!("{e}").contains("missing `vision_config.patch_size`"));
        let bad = B16.replace("\"hidden_act\":\"quick_gelu\"", "\"hidden_act\":\"gelu\"");
        assert!(ClipConfig::from_hf_json(&bad).is_err());
        assert!(ClipConfig::from_hf_json("[1,2]").is_err());
        assert!(ClipConfig::from_hf_json("{").is_err());
    }
}
