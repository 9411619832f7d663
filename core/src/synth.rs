//! Deterministic synthetic weights with the exact CLIP (HF names) and MaPLe shapes, for tests
//! and benchmarks where real weights cannot be downloaded. Only integer operations and exact
//! f32 scaling are used, so the same seed gives the same bytes on every machine.

use crate::config::{ClipConfig, TowerConfig};
use crate::safetensors::{Dtype, OwnedTensor};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// SplitMix64.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (the same seed gives the same numbers everywhere).
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [−a, a).
    pub fn uniform(&mut self, a: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 * (1.0 / 16_777_216.0); // [0, 1), exact
        (2.0 * u - 1.0) * a
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// How one tensor is filled: uniform with the given standard deviation, around `center`.
struct Fill {
    center: f32,
    std: f32,
}

fn make(name: String, shape: &[usize], fill: Fill, seed: u64, dtype: Dtype) -> OwnedTensor {
    let mut r = Rng::new(seed ^ fnv1a(&name));
    let n: usize = shape.iter().product();
    let a = fill.std * 1.732_050_8; // uniform half-width for that std
    let mut data = Vec::with_capacity(n * if dtype == Dtype::F32 { 4 } else { 2 });
    for _ in 0..n {
        let v = fill.center + r.uniform(a);
        match dtype {
            Dtype::F16 => data.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            Dtype::BF16 => data.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            _ => data.extend_from_slice(&v.to_le_bytes()),
        }
    }
    OwnedTensor {
        name,
        dtype: if matches!(dtype, Dtype::F16 | Dtype::BF16) {
            dtype
        } else {
            Dtype::F32
        },
        shape: shape.to_vec(),
        data,
    }
}

fn w(std: f32) -> Fill {
    Fill { center: 0.0, std }
}

fn inv_sqrt(n: usize) -> f32 {
    1.0 / libm::sqrtf(n as f32)
}

fn tower(out: &mut Vec<OwnedTensor>, prefix: &str, t: &TowerConfig, seed: u64, dt: Dtype) {
    let (d, f) = (t.hidden_size, t.intermediate_size);
    for i in 0..t.num_hidden_layers {
        let p = format!("{prefix}.encoder.layers.{i}");
        for ln in ["layer_norm1", "layer_norm2"] {
            out.push(make(
                format!("{p}.{ln}.weight"),
                &[d],
                Fill {
                    center: 1.0,
                    std: 0.1,
                },
                seed,
                dt,
            ));
            out.push(make(format!("{p}.{ln}.bias"), &[d], w(0.05), seed, dt));
        }
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            out.push(make(
                format!("{p}.self_attn.{proj}.weight"),
                &[d, d],
                w(inv_sqrt(d)),
                seed,
                dt,
            ));
            out.push(make(
                format!("{p}.self_attn.{proj}.bias"),
                &[d],
                w(0.02),
                seed,
                dt,
            ));
        }
        out.push(make(
            format!("{p}.mlp.fc1.weight"),
            &[f, d],
            w(inv_sqrt(d)),
            seed,
            dt,
        ));
        out.push(make(format!("{p}.mlp.fc1.bias"), &[f], w(0.02), seed, dt));
        out.push(make(
            format!("{p}.mlp.fc2.weight"),
            &[d, f],
            w(inv_sqrt(f)),
            seed,
            dt,
        ));
        out.push(make(format!("{p}.mlp.fc2.bias"), &[d], w(0.02), seed, dt));
    }
}

#[allow(clippy::vec_init_then_push)]
/// Every tensor of a HF `CLIPModel` checkpoint for `cfg`, in the given dtype.
pub fn clip_tensors(cfg: &ClipConfig, seed: u64, dtype: Dtype) -> Vec<OwnedTensor> {
    let v = &cfg.vision;
    let t = &cfg.text;
    let (dv, dt, e) = (v.tower.hidden_size, t.tower.hidden_size, cfg.projection_dim);
    let mut out = Vec::new();
    out.push(make(
        "vision_model.embeddings.class_embedding".into(),
        &[dv],
        w(inv_sqrt(dv)),
        seed,
        dtype,
    ));
    out.push(make(
        "vision_model.embeddings.patch_embedding.weight".into(),
        &[dv, v.num_channels, v.patch_size, v.patch_size],
        w(inv_sqrt(v.patch_dim()) * 2.0),
        seed,
        dtype,
    ));
    out.push(make(
        "vision_model.embeddings.position_embedding.weight".into(),
        &[v.num_positions(), dv],
        w(inv_sqrt(dv)),
        seed,
        dtype,
    ));
    out.push(make(
        "vision_model.pre_layrnorm.weight".into(),
        &[dv],
        Fill {
            center: 1.0,
            std: 0.1,
        },
        seed,
        dtype,
    ));
    out.push(make(
        "vision_model.pre_layrnorm.bias".into(),
        &[dv],
        w(0.05),
        seed,
        dtype,
    ));
    tower(&mut out, "vision_model", &v.tower, seed, dtype);
    out.push(make(
        "vision_model.post_layernorm.weight".into(),
        &[dv],
        Fill {
            center: 1.0,
            std: 0.1,
        },
        seed,
        dtype,
    ));
    out.push(make(
        "vision_model.post_layernorm.bias".into(),
        &[dv],
        w(0.05),
        seed,
        dtype,
    ));
    out.push(make(
        "visual_projection.weight".into(),
        &[e, dv],
        w(inv_sqrt(dv)),
        seed,
        dtype,
    ));
    out.push(make(
        "text_model.embeddings.token_embedding.weight".into(),
        &[t.vocab_size, dt],
        w(0.02),
        seed,
        dtype,
    ));
    out.push(make(
        "text_model.embeddings.position_embedding.weight".into(),
        &[t.max_position_embeddings, dt],
        w(0.01),
        seed,
        dtype,
    ));
    tower(&mut out, "text_model", &t.tower, seed, dtype);
    out.push(make(
        "text_model.final_layer_norm.weight".into(),
        &[dt],
        Fill {
            center: 1.0,
            std: 0.1,
        },
        seed,
        dtype,
    ));
    out.push(make(
        "text_model.final_layer_norm.bias".into(),
        &[dt],
        w(0.05),
        seed,
        dtype,
    ));
    out.push(make(
        "text_projection.weight".into(),
        &[e, dt],
        w(inv_sqrt(dt)),
        seed,
        dtype,
    ));
    // ln(100) as the real checkpoint (4.6052), always f32.
    out.push(OwnedTensor {
        name: "logit_scale".into(),
        dtype: Dtype::F32,
        shape: Vec::new(),
        data: libm::logf(100.0).to_le_bytes().to_vec(),
    });
    out
}

#[allow(clippy::vec_init_then_push)]
/// MaPLe's learnable tensors (docs/model.md §2.2) for `n_ctx` tokens and prompt depth `depth`, with the
/// dtypes of a PREC=fp16 checkpoint (`ctx`, `proj` f16; compound tensors f32).
pub fn maple_tensors(cfg: &ClipConfig, n_ctx: usize, depth: usize, seed: u64) -> Vec<OwnedTensor> {
    let (dv, dt) = (cfg.vision.tower.hidden_size, cfg.text.tower.hidden_size);
    let seed = seed ^ 0x4D61_504C_6550; // "MaPLe": prompts independent of the backbone
    let p = "prompt_learner";
    let mut out = Vec::new();
    out.push(make(
        format!("{p}.ctx"),
        &[n_ctx, dt],
        w(0.02),
        seed,
        Dtype::F16,
    ));
    out.push(make(
        format!("{p}.proj.weight"),
        &[dv, dt],
        w(inv_sqrt(dt)),
        seed,
        Dtype::F16,
    ));
    out.push(make(
        format!("{p}.proj.bias"),
        &[dv],
        w(0.02),
        seed,
        Dtype::F16,
    ));
    for j in 0..depth.saturating_sub(1) {
        out.push(make(
            format!("{p}.compound_prompts_text.{j}"),
            &[n_ctx, dt],
            w(0.02),
            seed,
            Dtype::F32,
        ));
    }
    for j in 0..depth.saturating_sub(1) {
        let q = format!("{p}.compound_prompt_projections.{j}");
        out.push(make(
            format!("{q}.weight"),
            &[dv, dt],
            w(inv_sqrt(dt)),
            seed,
            Dtype::F32,
        ));
        out.push(make(format!("{q}.bias"), &[dv], w(0.02), seed, Dtype::F32));
    }
    out
}

/// A small model with CLIP's vocabulary and context length, for fast tests.
pub fn tiny_config() -> ClipConfig {
    let mut c = ClipConfig::vit_b16();
    c.vision.tower = TowerConfig {
        hidden_size: 64,
        intermediate_size: 256,
        num_hidden_layers: 3,
        num_attention_heads: 4,
        layer_norm_eps: 1e-5,
    };
    c.vision.image_size = 32;
    c.vision.patch_size = 8;
    c.text.tower = TowerConfig {
        hidden_size: 32,
        intermediate_size: 128,
        num_hidden_layers: 3,
        num_attention_heads: 2,
        layer_norm_eps: 1e-5,
    };
    c.projection_dim = 32;
    c
}

/// The HF `config.json` text for `cfg` (structural fields only).
pub fn hf_config_json(cfg: &ClipConfig) -> String {
    let tw = |t: &TowerConfig| {
        format!(
            "\"hidden_size\": {}, \"intermediate_size\": {}, \"num_hidden_layers\": {}, \"num_attention_heads\": {}, \"hidden_act\": \"quick_gelu\", \"layer_norm_eps\": 1e-05",
            t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads
        )
    };
    format!(
        "{{\n  \"architectures\": [\"CLIPModel\"],\n  \"model_type\": \"clip\",\n  \"projection_dim\": {},\n  \"logit_scale_init_value\": 2.6592,\n  \"text_config\": {{\"model_type\": \"clip_text_model\", \"vocab_size\": {}, \"max_position_embeddings\": {}, {}, \"bos_token_id\": 49406, \"eos_token_id\": 49407, \"pad_token_id\": 1}},\n  \"vision_config\": {{\"model_type\": \"clip_vision_model\", \"image_size\": {}, \"patch_size\": {}, \"num_channels\": {}, {}}}\n}}\n",
        cfg.projection_dim,
        cfg.text.vocab_size,
        cfg.text.max_position_embeddings,
        tw(&cfg.text.tower),
        cfg.vision.image_size,
        cfg.vision.patch_size,
        cfg.vision.num_channels,
        tw(&cfg.vision.tower),
    )
}
