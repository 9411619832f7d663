//! VPT (docs/prompts.md §5): deep prompts in the image tower only; the text side is CLIP's
//! hand-written prompt ("a photo of a {class}."), as in zero-shot CLIP.
//!
//! Dassl saves the whole `CustomCLIP` (under the directory `prompt_learner` all the same):
//! `image_encoder.VPT` `[n_v, Dv]` and `image_encoder.transformer.resblocks.{i}.VPT_shallow`
//! `[n_v, Dv]` for i = 1..depth−1, beside a frozen CLIP copy maple does not read.

use super::{deep_prompts, matrix, vpt_blocks, Keys, Method, Prompts, TowerPrompts};
use crate::config::ClipConfig;
use crate::error::{Error, Result};
use alloc::format;

/// The most image prompt rows read (VPT's paper goes to 200).
pub const MAX_VISION_PROMPTS: usize = 1024;

/// The image tower's input prompt.
pub(super) const INPUT: &str = "image_encoder.VPT";

/// The name of the image tower's deep prompt of block `i`.
pub(super) fn deep_name(i: usize) -> alloc::string::String {
    format!("image_encoder.transformer.resblocks.{i}.VPT_shallow")
}

/// VPT's key rule: `image_encoder.VPT` and nothing of a text prompt learner.
pub(super) fn matches(k: &Keys) -> bool {
    k.has(INPUT) && !k.any(|n| n.starts_with(super::coop::PREFIX))
}

/// VPT learns `image_encoder.VPT` and the image tower's `VPT_shallow` prompts.
pub(super) fn is_learned(name: &str) -> bool {
    name == INPUT
        || name
            .strip_prefix("image_encoder.transformer.resblocks.")
            .is_some_and(|r| r.ends_with(".VPT_shallow"))
}

pub(super) fn load(config: &ClipConfig, k: &Keys) -> Result<Prompts> {
    let vision = vision(config, k)?
        .ok_or_else(|| Error::Prompts("no `image_encoder.VPT` tensor: not a VPT file".into()))?;
    Ok(Prompts {
        method: Method::Vpt,
        text: None,
        vision: Some(vision),
        meta_net: None,
    })
}

/// The image tower's prompts of an IVLP or VPT file, if it has any.
pub(super) fn vision(config: &ClipConfig, k: &Keys) -> Result<Option<TowerPrompts>> {
    let names = k.under("image_encoder.");
    let found = vpt_blocks(&names)?;
    if !k.has(INPUT) {
        if found.is_empty() {
            return Ok(None);
        }
        return Err(Error::Prompts(
            "deep image prompts (`image_encoder.transformer.resblocks.*.VPT_shallow`) without \
             the input prompt `image_encoder.VPT`"
                .into(),
        ));
    }
    let dv = config.vision.tower.hidden_size;
    let r = k.reader("image_encoder.");
    let (n, input) = matrix(&r, "VPT", None, dv, "vision width")?;
    if n > MAX_VISION_PROMPTS {
        return Err(Error::Prompts(format!(
            "`image_encoder.VPT` has {n} rows; maple reads at most {MAX_VISION_PROMPTS}"
        )));
    }
    let deep = deep_prompts(
        &r,
        |i| format!("transformer.resblocks.{i}.VPT_shallow"),
        &found,
        n,
        dv,
        config.vision.tower.num_hidden_layers,
        "vision width",
    )?;
    Ok(Some(TowerPrompts { n, input, deep }))
}
