//! CoCoOp (docs/prompts.md §3): CoOp's context plus, per image, the bias a small meta-network
//! computes from the image's normalised feature, so the text features depend on the image.
//!
//! Keys (bare as Dassl saves them, or under `prompt_learner.`): `ctx` `[n, Dt]`,
//! `meta_net.linear1.{weight [H, E], bias [H]}`, `meta_net.linear2.{weight [Dt, H], bias [Dt]}`
//! (H = E/16 = 32 for ViT-B/16).

use super::{coop, matrix, Keys, Method, Prompts, TowerPrompts};
use crate::config::ClipConfig;
use crate::error::{Error, Result};
use alloc::vec::Vec;

/// `π(f) = W2 · relu(W1 · f + b1) + b2`: the shift CoCoOp adds to every context row.
#[derive(Debug, Clone)]
pub struct MetaNet {
    /// H, the hidden width.
    pub hidden: usize,
    /// `[H, E]`
    pub w1: Vec<f32>,
    /// `[H]`
    pub b1: Vec<f32>,
    /// `[Dt, H]`
    pub w2: Vec<f32>,
    /// `[Dt]`
    pub b2: Vec<f32>,
}

impl MetaNet {
    /// The input width E.
    pub fn input(&self) -> usize {
        self.w1.len() / self.hidden.max(1)
    }

    /// `out [Dt] = π(f)` for one L2-normalised image feature `f [E]`; `h [H]` is scratch.
    pub fn bias(&self, f: &[f32], h: &mut [f32], out: &mut [f32]) {
        let e = self.input();
        for ((hj, w), b) in h.iter_mut().zip(self.w1.chunks_exact(e)).zip(&self.b1) {
            let z: f32 = w.iter().zip(f).map(|(a, b)| a * b).sum::<f32>() + b;
            *hj = z.max(0.0);
        }
        for ((o, w), b) in out
            .iter_mut()
            .zip(self.w2.chunks_exact(self.hidden))
            .zip(&self.b2)
        {
            *o = w.iter().zip(h.iter()).map(|(a, b)| a * b).sum::<f32>() + b;
        }
    }
}

/// The meta-network's tensors as CoCoOp's trainer saves them (bare names), hidden width `h`.
pub fn meta_shapes(config: &ClipConfig, h: usize) -> Vec<(alloc::string::String, Vec<usize>)> {
    let (e, dt) = (config.projection_dim, config.text.tower.hidden_size);
    alloc::vec![
        ("meta_net.linear1.weight".into(), alloc::vec![h, e]),
        ("meta_net.linear1.bias".into(), alloc::vec![h]),
        ("meta_net.linear2.weight".into(), alloc::vec![dt, h]),
        ("meta_net.linear2.bias".into(), alloc::vec![dt]),
    ]
}

/// CoCoOp's key rule: a context and a two-layer meta-network.
pub(super) fn matches(k: &Keys) -> bool {
    coop::prefix(k).is_some_and(|p| {
        k.has(&alloc::format!("{p}meta_net.linear1.weight"))
            && k.has(&alloc::format!("{p}meta_net.linear2.weight"))
    })
}

/// CoCoOp learns `ctx` and the meta-network.
pub(super) fn is_learned(name: &str) -> bool {
    let n = name.strip_prefix(coop::PREFIX).unwrap_or(name);
    n == coop::CTX || n.starts_with("meta_net.")
}

pub(super) fn load(config: &ClipConfig, k: &Keys) -> Result<Prompts> {
    let p = coop::prefix(k).ok_or_else(|| Error::Prompts("no `ctx` tensor".into()))?;
    let (n, ctx) = coop::context(config, k, p)?;
    let r = k.reader(p);
    let (e, dt) = (config.projection_dim, config.text.tower.hidden_size);
    let (h, w1) = matrix(
        &r,
        "meta_net.linear1.weight",
        None,
        e,
        "the image feature width",
    )?;
    let b1 = r.get("meta_net.linear1.bias", &[h])?;
    let (_, w2) = matrix(
        &r,
        "meta_net.linear2.weight",
        Some(dt),
        h,
        "the hidden width",
    )?;
    let b2 = r.get("meta_net.linear2.bias", &[dt])?;
    Ok(Prompts {
        method: Method::Cocoop,
        text: Some(TowerPrompts {
            n,
            input: ctx,
            deep: Vec::new(),
        }),
        vision: None,
        meta_net: Some(MetaNet {
            hidden: h,
            w1,
            b1,
            w2,
            b2,
        }),
    })
}
