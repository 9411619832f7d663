//! Writes a synthetic model directory (HF layout) and MaPLe prompts from the core's generator.

use crate::Error;
use maple_core::safetensors::{serialize, Dtype};
use maple_core::synth::{clip_tensors, hf_config_json, maple_tensors, tiny_config};
use maple_core::ClipConfig;
use std::path::Path;

/// Which synthetic model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Size {
    /// A few layers of small width (the committed test model).
    Tiny,
    /// The exact ViT-B/16 shapes and names.
    Full,
}

/// What to generate.
pub struct SynthSpec {
    /// Shapes.
    pub size: Size,
    /// Seed of the deterministic generator.
    pub seed: u64,
    /// Storage type of the CLIP weights.
    pub dtype: Dtype,
    /// MaPLe context tokens.
    pub n_ctx: usize,
    /// MaPLe prompt depth.
    pub depth: usize,
}

/// The CLIP config of a size.
pub fn config_for(size: Size) -> ClipConfig {
    match size {
        Size::Tiny => tiny_config(),
        Size::Full => ClipConfig::vit_b16(),
    }
}

/// Writes `config.json`, `model.safetensors` and `maple_prompts.safetensors` into `dir`; each
/// file goes to a temporary name first and is renamed into place, so readers never see half.
pub fn write_model(dir: &Path, spec: &SynthSpec) -> Result<(), Error> {
    let cfg = config_for(spec.size);
    // Checked before anything is sized by them or written.
    if let Some(why) = cfg.prompt_shape_problem(spec.n_ctx, spec.depth) {
        return Err(Error::Invalid(why));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_atomic(&dir.join("config.json"), hf_config_json(&cfg).as_bytes())?;
    let t = clip_tensors(&cfg, spec.seed, spec.dtype);
    write_atomic(
        &dir.join("model.safetensors"),
        &serialize(&t, &[("format", "pt")]),
    )?;
    drop(t);
    let p = maple_tensors(&cfg, spec.n_ctx, spec.depth, spec.seed);
    let (n, d) = (spec.n_ctx.to_string(), spec.depth.to_string());
    let meta = [
        ("n_ctx", n.as_str()),
        ("prompt_depth", d.as_str()),
        ("ctx_init", "a photo of a"),
    ];
    write_atomic(
        &dir.join("maple_prompts.safetensors"),
        &serialize(&p, &meta),
    )?;
    Ok(())
}

/// The full-size test model (seed 0, f32, n_ctx 2, depth 9, as `maple-synth --size full`),
/// written into `dir` unless it is already there. The golden files were computed from it.
pub fn ensure_full_model(dir: &Path) -> Result<(), Error> {
    if dir.join("model.safetensors").is_file() && dir.join("maple_prompts.safetensors").is_file() {
        return Ok(());
    }
    let spec = SynthSpec {
        size: Size::Full,
        seed: 0,
        dtype: Dtype::F32,
        n_ctx: 2,
        depth: 9,
    };
    write_model(dir, &spec)
}

pub use crate::outfile::write_atomic;
