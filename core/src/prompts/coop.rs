//! CoOp (docs/prompts.md §2): a learned text context `ctx` `[n, Dt]` over the first n words of
//! the class prompt; the image tower is plain CLIP.
//!
//! Dassl saves the prompt learner alone, so its keys are bare (`ctx`, plus the `token_prefix` /
//! `token_suffix` buffers of the training classes, which are never used: the labels' own token
//! embeddings take their place). A whole `CustomCLIP` state dict has them under
//! `prompt_learner.`. KgCoOp files (`bias_vectors`, a one-layer `meta_net`) are CoOp at
//! inference: those tensors are unused.

use super::{matrix, Keys, Method, Prompts, TowerPrompts};
use crate::config::ClipConfig;
use crate::error::{Error, Result};
use alloc::format;
use alloc::vec::Vec;

/// The context's name as Dassl saves CoOp's prompt learner.
pub(super) const CTX: &str = "ctx";

/// The prefix of the prompt learner's tensors in a whole `CustomCLIP` state dict.
pub(super) const PREFIX: &str = "prompt_learner.";

/// Where the context sits: bare, or under [`PREFIX`].
pub(super) fn prefix(k: &Keys) -> Option<&'static str> {
    if k.has(CTX) {
        Some("")
    } else if k.has(&format!("{PREFIX}{CTX}")) {
        Some(PREFIX)
    } else {
        None
    }
}

/// CoOp's key rule, asked after MaPLe's, CoCoOp's and IVLP's: a `ctx`.
pub(super) fn matches(k: &Keys) -> bool {
    prefix(k).is_some()
}

/// CoOp learns `ctx` alone.
pub(super) fn is_learned(name: &str) -> bool {
    name.strip_prefix(PREFIX).unwrap_or(name) == CTX
}

pub(super) fn load(config: &ClipConfig, k: &Keys) -> Result<Prompts> {
    let p = prefix(k).ok_or_else(|| Error::Prompts("no `ctx` tensor: not a CoOp file".into()))?;
    let (n, ctx) = context(config, k, p)?;
    Ok(Prompts {
        method: Method::Coop,
        text: Some(TowerPrompts {
            n,
            input: ctx,
            deep: Vec::new(),
        }),
        vision: None,
        meta_net: None,
    })
}

/// The learned text context `{p}ctx` `[n, Dt]` (CoOp, CoCoOp and IVLP read it alike).
/// Class-specific contexts (`[classes, n, Dt]`, CoOp's CSC) are refused: they only fit the
/// training classes, in the training order.
pub(super) fn context(config: &ClipConfig, k: &Keys, p: &str) -> Result<(usize, Vec<f32>)> {
    let r = k.reader(p);
    let dt = config.text.tower.hidden_size;
    if let Some(s) = r.shape("ctx").filter(|s| s.len() == 3) {
        return Err(Error::Prompts(format!(
            "`{p}ctx` has shape {s:?}: a class-specific context (CoOp's CSC), one per training \
             class; maple supports the shared context ([n_ctx, {dt}]) only"
        )));
    }
    let (n, ctx) = matrix(&r, "ctx", None, dt, "text width")?;
    let l = config.text.max_position_embeddings;
    if n + 2 > l {
        return Err(Error::Prompts(format!(
            "`{p}ctx` has {n} rows: that leaves no room for a label in {l} text positions"
        )));
    }
    Ok((n, ctx))
}
