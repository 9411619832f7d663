//! IVLP (docs/prompts.md §4): independent deep prompts in both towers, with no coupling between
//! them. PromptSRC checkpoints have the same shape (plus a frozen image-encoder copy under
//! `prompt_learner.ZS_image_encoder.`, unused at inference).
//!
//! Dassl saves the whole `CustomCLIP`: `prompt_learner.ctx` `[n_t, Dt]`,
//! `text_encoder.transformer.resblocks.{i}.VPT_shallow` `[n_t, Dt]`, `image_encoder.VPT`
//! `[n_v, Dv]` and `image_encoder.transformer.resblocks.{i}.VPT_shallow` `[n_v, Dv]` for
//! i = 1..depth−1, beside a frozen copy of CLIP that maple does not read (its CLIP is the
//! model directory's).

use super::{coop, deep_prompts, vpt, vpt_blocks, Keys, Method, Prompts, TowerPrompts};
use crate::config::ClipConfig;
use crate::error::Result;
use alloc::format;
use alloc::string::String;

/// The text context's name in an IVLP checkpoint.
pub(super) const CTX: &str = "prompt_learner.ctx";

/// The name of the text tower's deep prompt of block `i`.
pub(super) fn text_deep_name(i: usize) -> String {
    format!("text_encoder.transformer.resblocks.{i}.VPT_shallow")
}

/// IVLP's key rule: `prompt_learner.ctx` beside VPT prompts.
pub(super) fn matches(k: &Keys) -> bool {
    k.has(CTX) && k.any(|n| is_learned(n) && n.contains("VPT"))
}

/// IVLP learns the text context and the `VPT` / `VPT_shallow` prompts of both towers.
pub(super) fn is_learned(name: &str) -> bool {
    name == CTX || vpt::is_learned(name) || is_text_deep(name)
}

fn is_text_deep(name: &str) -> bool {
    name.strip_prefix("text_encoder.transformer.resblocks.")
        .is_some_and(|r| r.ends_with(".VPT_shallow"))
}

pub(super) fn load(config: &ClipConfig, k: &Keys) -> Result<Prompts> {
    let (n, ctx) = coop::context(config, k, coop::PREFIX)?;
    let dt = config.text.tower.hidden_size;
    let names = k.under("text_encoder.");
    let found = vpt_blocks(&names)?;
    let deep = deep_prompts(
        &k.reader("text_encoder."),
        |i| format!("transformer.resblocks.{i}.VPT_shallow"),
        &found,
        n,
        dt,
        config.text.tower.num_hidden_layers,
        "text width",
    )?;
    Ok(Prompts {
        method: Method::Ivlp,
        text: Some(TowerPrompts {
            n,
            input: ctx,
            deep,
        }),
        vision: vpt::vision(config, k)?,
        meta_net: None,
    })
}
