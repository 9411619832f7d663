//! MaPLe's learned prompts (docs/model.md §2.2, §5): read from MaPLe's state-dict names (with or without
//! the `prompt_learner.` prefix) and turned, once per checkpoint, into the fixed matrices the
//! towers splice in.

use super::{Keys, Method, Prompts, TowerPrompts};
use crate::config::ClipConfig;
use crate::error::{Error, Result};
use crate::safetensors::TensorSource;
use alloc::format;
use alloc::vec::Vec;

/// Prompt matrices ready to splice. Depth D: layer 0 uses `ctx` / `shared_ctx`; layers 1..D−1
/// overwrite the prompt slots with `text_deep[l−1]` / `vis_deep[l−1]`.
#[derive(Debug, Clone)]
pub struct MaplePrompts {
    /// Context tokens per prompt (MaPLe's N_CTX).
    pub n_ctx: usize,
    /// Layers that take prompts, the input included (MaPLe's PROMPT_DEPTH).
    pub depth: usize,
    /// [n, Dt]: text positions 1..n of the input embeddings.
    pub ctx: Vec<f32>,
    /// [n, Dv] = ctx · proj.weightᵀ + proj.bias: appended to the vision tokens.
    pub shared_ctx: Vec<f32>,
    /// D−1 × [n, Dt]
    pub text_deep: Vec<Vec<f32>>,
    /// D−1 × [n, Dv]
    pub vis_deep: Vec<Vec<f32>>,
}

/// `x [n, k] · W[o, k]ᵀ + b`, accumulated in f64 (done once per prompts file, on every start).
pub(crate) fn project(x: &[f32], n: usize, k: usize, w: &[f32], b: &[f32], o: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * o);
    for xr in x.chunks_exact(k).take(n) {
        for (wr, &bj) in w.chunks_exact(k).zip(b).take(o) {
            out.push((dot_f64(xr, wr) + bj as f64) as f32);
        }
    }
    out
}

/// `Σ a·b` in f64 over eight interleaved partial sums: independent chains the CPU overlaps (one
/// chain waits for each add; the ~7 M products of a ViT-B/16 prompts file took 24 ms that way).
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (pa, pb) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += pa[l] as f64 * pb[l] as f64;
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(&x, &y)| x as f64 * y as f64).sum();
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + tail
}

/// The prefix MaPLe's state dicts put on the prompt learner's tensors (`docs/model.md` §2.2).
pub const KEY_PREFIX: &str = "prompt_learner.";

/// Where `has` (does a tensor of this name exist?) finds MaPLe's `ctx`: under [`KEY_PREFIX`]
/// (checkpoints, maple's own files) or bare (a prompts file that dropped it); `None` when it holds
/// no MaPLe prompts. The one place the key rules live: loading, training and `maple-convert` ask
/// here.
pub fn key_prefix(has: &dyn Fn(&str) -> bool) -> Option<&'static str> {
    if has("prompt_learner.ctx") {
        Some(KEY_PREFIX)
    } else if has("ctx") {
        Some("")
    } else {
        None
    }
}

/// Whether `name` (without the prefix) is one of MaPLe's learned tensors (`ctx`, `proj.*`,
/// `compound_prompts_text.*`, `compound_prompt_projections.*`) rather than something a
/// checkpoint carries beside them (`token_prefix`/`token_suffix`, the frozen CLIP copy).
pub fn is_learned(name: &str) -> bool {
    name == "ctx"
        || name.starts_with("proj.")
        || name.starts_with("compound_prompts_text.")
        || name.starts_with("compound_prompt_projections.")
}

/// MaPLe's key rule (docs/prompts.md §7): `ctx` beside the projections (`proj.*`) or the deep
/// text prompts, under the prefix or bare.
pub(super) fn matches(k: &Keys) -> bool {
    key_prefix(&|n| k.has(n)).is_some_and(|p| {
        k.has(&format!("{p}proj.weight"))
            || k.any(|n| {
                n.strip_prefix(p)
                    .is_some_and(|r| r.starts_with("compound_prompts_text."))
            })
    })
}

/// [`is_learned`] for a name as the file spells it (prefix or not).
pub(super) fn is_learned_key(name: &str) -> bool {
    is_learned(name.strip_prefix(KEY_PREFIX).unwrap_or(name))
}

impl MaplePrompts {
    /// The splice plan: `ctx` and the text deep prompts in the text tower, their projections in
    /// the image tower.
    pub fn into_prompts(self) -> Prompts {
        let n = self.n_ctx;
        Prompts {
            method: Method::Maple,
            text: Some(TowerPrompts {
                n,
                input: self.ctx,
                deep: self.text_deep,
            }),
            vision: Some(TowerPrompts {
                n,
                input: self.shared_ctx,
                deep: self.vis_deep,
            }),
            meta_net: None,
        }
    }

    /// Reads the `prompt_learner.*` tensors (with or without the prefix) and checks them against `config`.
    pub fn load(config: &ClipConfig, src: &dyn TensorSource) -> Result<Self> {
        let k = Keys::new(src);
        let prefix = key_prefix(&|n| k.has(n)).ok_or_else(|| {
            Error::Prompts("no `prompt_learner.ctx` tensor: this is not a MaPLe prompt file".into())
        })?;
        let r = k.reader(prefix);
        let dt = config.text.tower.hidden_size;
        let dv = config.vision.tower.hidden_size;
        let cs = r.shape("ctx").unwrap_or_default();
        if cs.len() != 2 || cs[1] != dt || cs[0] == 0 {
            return Err(Error::Prompts(format!(
                "`{prefix}ctx` has shape {cs:?}; this model needs [n_ctx, {dt}] (text width {dt})"
            )));
        }
        let n = cs[0];
        if n + 2 > config.text.max_position_embeddings {
            return Err(Error::Prompts(format!(
                "n_ctx = {n} leaves no room for a label in {} text positions",
                config.text.max_position_embeddings
            )));
        }
        // Deep prompts: compound_prompts_text.0 .. .{D-2}, contiguous.
        let key = format!("{prefix}compound_prompts_text.");
        let mut max_idx: Option<usize> = None;
        for rest in k.under(&key) {
            let j: usize = rest
                .parse()
                .map_err(|_| Error::Prompts(format!("unexpected tensor `{key}{rest}`")))?;
            max_idx = Some(max_idx.map_or(j, |m: usize| m.max(j)));
        }
        let n_deep = max_idx.map_or(0, |m| m + 1);
        let depth = n_deep + 1;
        let layers = config
            .vision
            .tower
            .num_hidden_layers
            .min(config.text.tower.num_hidden_layers);
        if depth > layers {
            return Err(Error::Prompts(format!(
                "prompt depth {depth} is deeper than the model's {layers} layers"
            )));
        }
        let load_proj = |w: &str, b: &str| -> Result<(Vec<f32>, Vec<f32>)> {
            if let Some(s) = r.shape(w) {
                if s != [dv, dt] {
                    return Err(Error::Prompts(format!(
                        "`{prefix}{w}` has shape {s:?}; this model needs [{dv}, {dt}] (vision width {dv}, text width {dt})"
                    )));
                }
            }
            Ok((r.get(w, &[dv, dt])?, r.get(b, &[dv])?))
        };
        let ctx = r.get("ctx", &[n, dt])?;
        let (pw, pb) = load_proj("proj.weight", "proj.bias")?;
        let shared_ctx = project(&ctx, n, dt, &pw, &pb, dv);
        let mut text_deep = Vec::with_capacity(n_deep);
        let mut vis_deep = Vec::with_capacity(n_deep);
        for j in 0..n_deep {
            let name = format!("compound_prompts_text.{j}");
            if !r.has(&name) {
                return Err(Error::Prompts(format!(
                    "`{prefix}{name}` is missing (deep prompts must be numbered 0..{})",
                    n_deep - 1
                )));
            }
            let s = r.shape(&name).unwrap_or_default();
            if s != [n, dt] {
                return Err(Error::Prompts(format!(
                    "`{prefix}{name}` has shape {s:?}; expected [{n}, {dt}]"
                )));
            }
            let t = r.get(&name, &[n, dt])?;
            let (w, b) = load_proj(
                &format!("compound_prompt_projections.{j}.weight"),
                &format!("compound_prompt_projections.{j}.bias"),
            )?;
            vis_deep.push(project(&t, n, dt, &w, &b, dv));
            text_deep.push(t);
        }
        Ok(MaplePrompts {
            n_ctx: n,
            depth,
            ctx,
            shared_ctx,
            text_deep,
            vis_deep,
        })
    }
}

/// MaPLe's matrices borrowed from a splice plan: what the trainer's backward pass reads.
pub struct MapleView<'a> {
    /// Context tokens per prompt.
    pub n_ctx: usize,
    /// Layers that take prompts, the input included.
    pub depth: usize,
    /// `[n, Dt]`
    pub ctx: &'a [f32],
    /// `[n, Dv]`
    pub shared_ctx: &'a [f32],
    /// D−1 × `[n, Dt]`
    pub text_deep: &'a [Vec<f32>],
    /// D−1 × `[n, Dv]`
    pub vis_deep: &'a [Vec<f32>],
}

impl Prompts {
    /// The plan as MaPLe's matrices, when MaPLe wrote it.
    pub fn maple(&self) -> Option<MapleView<'_>> {
        let (t, v) = (self.text.as_ref()?, self.vision.as_ref()?);
        let ok = self.method == Method::Maple && t.n == v.n && t.deep.len() == v.deep.len();
        ok.then_some(MapleView {
            n_ctx: t.n,
            depth: t.depth(),
            ctx: &t.input,
            shared_ctx: &v.input,
            text_deep: &t.deep,
            vis_deep: &v.deep,
        })
    }
}
