//! The prompt methods (docs/prompts.md): what each one learned, read from its checkpoint's key
//! names, and turned once into the splice plan both towers (CPU, GPU, training) consume.
//!
//! A plan is at most one [`TowerPrompts`] per tower. The placement is the tower's, the same for
//! every method (docs/prompts.md §1):
//! * text: the input prompt replaces the token embeddings of rows `1..=n` (before the position
//!   embeddings are added); before block `l` (1 ≤ l ≤ deep) rows `1..=n` become `deep[l−1]`;
//! * vision: the input prompt is appended after the class token and the patches (after the
//!   position embeddings, before `ln_pre`); before block `l` the last `n` rows become
//!   `deep[l−1]`.
//!
//! Each method is one file: its key rules ([`Method::detect`] asks each in turn), its loading,
//! and the template its trainer puts the learned context in. A new method is a new file and
//! one arm in each `match` below.

mod cocoop;
mod coop;
mod ivlp;
pub mod maple;
mod vpt;

pub use cocoop::{meta_shapes, MetaNet};
pub use maple::MaplePrompts;
pub use vpt::MAX_VISION_PROMPTS;

use crate::clip::Reader;
use crate::config::ClipConfig;
use crate::error::{Error, Result};
use crate::safetensors::TensorSource;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// The prompt-learning methods maple runs (the MaPLe repository's trainers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// CoOp: a learned text context (docs/prompts.md §2).
    Coop,
    /// CoCoOp: CoOp's context shifted per image by a meta-network (§3).
    Cocoop,
    /// IVLP: independent deep prompts in both towers; PromptSRC files too (§4).
    Ivlp,
    /// VPT: deep prompts in the image tower only (§5).
    Vpt,
    /// MaPLe: text prompts projected into the image tower (docs/model.md §5).
    Maple,
}

impl Method {
    /// Every method, in the order [`detect`](Self::detect) asks them.
    pub const ALL: [Method; 5] = [
        Method::Maple,
        Method::Cocoop,
        Method::Ivlp,
        Method::Coop,
        Method::Vpt,
    ];

    /// The method's name as the CLI spells it (`maple-train --method`).
    pub fn name(self) -> &'static str {
        match self {
            Method::Coop => "coop",
            Method::Cocoop => "cocoop",
            Method::Ivlp => "ivlp",
            Method::Vpt => "vpt",
            Method::Maple => "maple",
        }
    }

    /// The method called `name` (any case).
    pub fn from_name(name: &str) -> Option<Method> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// Which method's checkpoint holds these tensors (docs/prompts.md §7).
    pub fn detect(src: &dyn TensorSource) -> Option<Method> {
        let k = Keys::new(src);
        Self::ALL.into_iter().find(|m| match m {
            Method::Maple => maple::matches(&k),
            Method::Cocoop => cocoop::matches(&k),
            Method::Ivlp => ivlp::matches(&k),
            Method::Coop => coop::matches(&k),
            Method::Vpt => vpt::matches(&k),
        })
    }

    /// Whether tensor `name` (as in the file, a DataParallel `module.` prefix removed) is one
    /// this method learned, rather than what its checkpoint carries beside them (token buffers,
    /// the frozen CLIP copy): what `maple-convert` keeps.
    pub fn is_learned(self, name: &str) -> bool {
        match self {
            Method::Maple => maple::is_learned_key(name),
            Method::Cocoop => cocoop::is_learned(name),
            Method::Ivlp => ivlp::is_learned(name),
            Method::Coop => coop::is_learned(name),
            Method::Vpt => vpt::is_learned(name),
        }
    }
}

impl core::fmt::Display for Method {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Method::Coop => "CoOp",
            Method::Cocoop => "CoCoOp",
            Method::Ivlp => "IVLP",
            Method::Vpt => "VPT",
            Method::Maple => "MaPLe",
        })
    }
}

/// One tower's prompts: `n` rows at the input, then `deep[l−1]` (`[n, D]`) before block `l`
/// for `l = 1..=deep.len()` (placement: see the module documentation).
#[derive(Debug, Clone)]
pub struct TowerPrompts {
    /// Prompt rows.
    pub n: usize,
    /// `[n, D]`: the input prompt.
    pub input: Vec<f32>,
    /// `depth − 1` × `[n, D]`: the deep prompts of blocks 1..depth.
    pub deep: Vec<Vec<f32>>,
}

impl TowerPrompts {
    /// Blocks that take prompts, the input included (the trainers' PROMPT_DEPTH).
    pub fn depth(&self) -> usize {
        1 + self.deep.len()
    }

    /// The prompt that replaces the prompt rows before block `layer`, if that block takes one.
    pub fn deep_at(&self, layer: usize) -> Option<&[f32]> {
        layer
            .checked_sub(1)
            .and_then(|i| self.deep.get(i))
            .map(Vec::as_slice)
    }
}

/// A checkpoint's prompts as the towers take them.
#[derive(Debug, Clone)]
pub struct Prompts {
    /// The method that wrote them.
    pub method: Method,
    /// The text tower's prompts, if the method learns any.
    pub text: Option<TowerPrompts>,
    /// The image tower's prompts, if the method learns any.
    pub vision: Option<TowerPrompts>,
    /// CoCoOp's meta-network: the text context then depends on the image.
    pub meta_net: Option<MetaNet>,
}

impl Prompts {
    /// Reads the prompts of whichever method wrote `src` (docs/prompts.md §7) and checks them
    /// against `config`. A file no method's rules recognise is an error naming what it holds.
    pub fn load(config: &ClipConfig, src: &dyn TensorSource) -> Result<Self> {
        let method = Method::detect(src).ok_or_else(|| unrecognised(src))?;
        Self::load_as(method, config, src)
    }

    /// Reads `src` as `method`'s prompts.
    pub fn load_as(method: Method, config: &ClipConfig, src: &dyn TensorSource) -> Result<Self> {
        let k = Keys::new(src);
        match method {
            Method::Maple => MaplePrompts::load(config, src).map(MaplePrompts::into_prompts),
            Method::Cocoop => cocoop::load(config, &k),
            Method::Ivlp => ivlp::load(config, &k),
            Method::Coop => coop::load(config, &k),
            Method::Vpt => vpt::load(config, &k),
        }
    }

    /// Text prompt rows (0 without text prompts).
    pub fn text_n(&self) -> usize {
        self.text.as_ref().map_or(0, |t| t.n)
    }

    /// Image prompt rows (0 without image prompts).
    pub fn vision_n(&self) -> usize {
        self.vision.as_ref().map_or(0, |t| t.n)
    }

    /// Whether the text features depend on the image (CoCoOp).
    pub fn image_conditioned(&self) -> bool {
        self.meta_net.is_some()
    }

    /// The words the method's trainer puts before the class name when the file does not say
    /// (docs/prompts.md §1): "a photo of a" where its learned rows cover at most its 4 words
    /// (MaPLe, IVLP, CoCoOp, VPT), else one placeholder word per learned row, as CoOp's
    /// trainer writes "X X … X" (every placeholder row is replaced, so the word is immaterial).
    pub fn default_template(&self) -> String {
        let n = self.text_n();
        let whole_phrase = match self.method {
            Method::Maple | Method::Ivlp | Method::Vpt => n <= 4,
            Method::Coop | Method::Cocoop => n == 4,
        };
        if whole_phrase {
            String::from("a photo of a")
        } else {
            let mut s = String::new();
            for i in 0..n {
                s.push_str(if i == 0 { "X" } else { " X" });
            }
            s
        }
    }
}

/// The error for a file no method recognises: what it holds, briefly.
fn unrecognised(src: &dyn TensorSource) -> Error {
    let names = src.names();
    let mut shown: Vec<&str> = names.iter().copied().take(4).collect();
    if names.len() > 4 {
        shown.push("…");
    }
    Error::Prompts(format!(
        "no prompt method's tensors found (MaPLe: `prompt_learner.ctx` + `proj.*`; CoOp: `ctx`; \
         CoCoOp: `ctx` + `meta_net.*`; IVLP: `prompt_learner.ctx` + `*VPT*`; VPT: \
         `image_encoder.VPT`); the file holds {} tensor{}: {}",
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        shown.join(", ")
    ))
}

/// What a CoOp, IVLP or VPT file holds, in order, with `(rows, depth)` per tower (`(0, 0)`
/// where the method has no prompts): the text input and deep prompts, then the image input and
/// deep prompts, under the names their trainers save them with. (MaPLe's are `maple.rs`'s.)
pub fn learned_shapes(
    config: &ClipConfig,
    method: Method,
    (n_t, depth_t): (usize, usize),
    (n_v, depth_v): (usize, usize),
) -> Vec<(String, Vec<usize>)> {
    let (dt, dv) = (
        config.text.tower.hidden_size,
        config.vision.tower.hidden_size,
    );
    let mut v = Vec::new();
    if n_t > 0 && depth_t > 0 {
        let ctx = if method == Method::Ivlp {
            ivlp::CTX
        } else {
            coop::CTX
        };
        v.push((String::from(ctx), vec![n_t, dt]));
        for i in 1..depth_t {
            v.push((ivlp::text_deep_name(i), vec![n_t, dt]));
        }
    }
    if n_v > 0 && depth_v > 0 {
        v.push((String::from(vpt::INPUT), vec![n_v, dv]));
        for i in 1..depth_v {
            v.push((vpt::deep_name(i), vec![n_v, dv]));
        }
    }
    v
}

/// A checkpoint's names as the key rules read them: a DataParallel `module.` prefix on every
/// name is looked through.
pub(crate) struct Keys<'a> {
    pub src: &'a dyn TensorSource,
    /// `"module."` when every name carries it, else `""`.
    pub module: &'static str,
}

/// The DataParallel prefix of a checkpoint's names: `"module."` when every name carries it,
/// else `""`.
pub fn module_prefix(names: &[&str]) -> &'static str {
    if !names.is_empty() && names.iter().all(|n| n.starts_with("module.")) {
        "module."
    } else {
        ""
    }
}

impl<'a> Keys<'a> {
    pub fn new(src: &'a dyn TensorSource) -> Self {
        Keys {
            src,
            module: module_prefix(&src.names()),
        }
    }

    /// Whether tensor `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.src.tensor(&format!("{}{name}", self.module)).is_some()
    }

    /// Whether some name (prefix removed) satisfies `f`.
    pub fn any(&self, f: impl Fn(&str) -> bool) -> bool {
        self.src
            .names()
            .iter()
            .any(|n| n.strip_prefix(self.module).is_some_and(&f))
    }

    /// Names under `prefix` (module prefix and `prefix` removed).
    pub fn under(&self, prefix: &str) -> Vec<String> {
        let full = format!("{}{prefix}", self.module);
        self.src
            .names()
            .iter()
            .filter_map(|n| n.strip_prefix(full.as_str()).map(String::from))
            .collect()
    }

    /// A reader of the tensors under `prefix`.
    pub fn reader(&self, prefix: &str) -> Reader<'a> {
        Reader::new(self.src, &format!("{}{prefix}", self.module))
    }
}

/// A `[rows, width]` tensor `name` read through `r`; `want_rows` fixes the rows when known.
/// Errors name the tensor and say what the model needs.
pub(crate) fn matrix(
    r: &Reader,
    name: &str,
    want_rows: Option<usize>,
    width: usize,
    what: &str,
) -> Result<(usize, Vec<f32>)> {
    let full = format!("{}{name}", r.prefix);
    let s = r
        .shape(name)
        .ok_or_else(|| Error::Prompts(format!("`{full}` is missing")))?;
    let ok = s.len() == 2 && s[1] == width && s[0] > 0 && want_rows.is_none_or(|n| s[0] == n);
    if !ok {
        let rows = want_rows.map_or_else(|| String::from("n"), |n| format!("{n}"));
        return Err(Error::Prompts(format!(
            "`{full}` has shape {s:?}; this model needs [{rows}, {width}] ({what} {width})"
        )));
    }
    Ok((s[0], r.get(name, &[s[0], width])?))
}

/// Deep prompts `key(1)`, `key(2)`, … (each `[n, width]`): they must be numbered from 1 without
/// gaps and stop before block `layers`.
pub(crate) fn deep_prompts(
    r: &Reader,
    key: impl Fn(usize) -> String,
    found: &[usize],
    n: usize,
    width: usize,
    layers: usize,
    what: &str,
) -> Result<Vec<Vec<f32>>> {
    let count = found.iter().copied().max().unwrap_or(0);
    if count >= layers {
        return Err(Error::Prompts(format!(
            "`{}{}` prompts block {count}, but the model has {layers} blocks",
            r.prefix,
            key(count)
        )));
    }
    let mut deep = Vec::with_capacity(count);
    for i in 1..=count {
        if !found.contains(&i) {
            return Err(Error::Prompts(format!(
                "`{}{}` is missing (deep prompts must cover blocks 1..={count})",
                r.prefix,
                key(i)
            )));
        }
        deep.push(matrix(r, &key(i), Some(n), width, what)?.1);
    }
    Ok(deep)
}

/// The block indices `i` of the names `transformer.resblocks.{i}.VPT_shallow` in `names`.
pub(crate) fn vpt_blocks(names: &[String]) -> Result<Vec<usize>> {
    let mut found = Vec::new();
    for n in names {
        if let Some(i) = n
            .strip_prefix("transformer.resblocks.")
            .and_then(|r| r.strip_suffix(".VPT_shallow"))
        {
            let i: usize = i.parse().map_err(|_| {
                Error::Prompts(format!(
                    "unexpected tensor `transformer.resblocks.{i}.VPT_shallow`"
                ))
            })?;
            if i == 0 {
                return Err(Error::Prompts(
                    "a `VPT_shallow` prompt for block 0: block 0 takes the input prompt".into(),
                ));
            }
            found.push(i);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safetensors::{serialize, Dtype, OwnedTensor, SafeTensors};
    use alloc::string::ToString;

    /// A tiny model's config: Dt = 32, Dv = 64, E = 32, 3 layers each.
    fn cfg() -> ClipConfig {
        let mut c = ClipConfig::vit_b16();
        c.text.tower.hidden_size = 32;
        c.vision.tower.hidden_size = 64;
        c.projection_dim = 32;
        c.text.tower.num_hidden_layers = 3;
        c.vision.tower.num_hidden_layers = 3;
        c
    }

    /// A safetensors file of zero-filled f32 tensors, then `f` on it.
    fn with_file<R>(tensors: &[(&str, &[usize])], f: impl FnOnce(&dyn TensorSource) -> R) -> R {
        let owned: Vec<OwnedTensor> = tensors
            .iter()
            .map(|(n, s)| OwnedTensor {
                name: n.to_string(),
                dtype: Dtype::F32,
                shape: s.to_vec(),
                data: vec![0; 4 * s.iter().product::<usize>()],
            })
            .collect();
        let bytes = serialize(&owned, &[]);
        let st = SafeTensors::parse(&bytes).unwrap();
        f(&st)
    }

    fn load(tensors: &[(&str, &[usize])]) -> Result<Prompts> {
        with_file(tensors, |src| Prompts::load(&cfg(), src))
    }

    fn err(tensors: &[(&str, &[usize])]) -> String {
        load(tensors).unwrap_err().to_string()
    }

    #[test]
    fn methods_are_told_apart_by_their_keys() {
        let coop = load(&[("ctx", &[16, 32]), ("token_prefix", &[3, 1, 32])]).unwrap();
        assert_eq!(coop.method, Method::Coop);
        assert_eq!((coop.text_n(), coop.vision_n()), (16, 0));
        assert_eq!(coop.default_template().split(' ').count(), 16);
        let kg = load(&[
            ("ctx", &[4, 32]),
            ("bias_vectors", &[1, 32]),
            ("meta_net.linear1.weight", &[32, 32]),
        ])
        .unwrap();
        assert_eq!(kg.method, Method::Coop, "KgCoOp runs as CoOp");
        let co = load(&[
            ("module.ctx", &[4, 32]),
            ("module.meta_net.linear1.weight", &[2, 32]),
            ("module.meta_net.linear1.bias", &[2]),
            ("module.meta_net.linear2.weight", &[32, 2]),
            ("module.meta_net.linear2.bias", &[32]),
        ])
        .unwrap();
        assert_eq!(co.method, Method::Cocoop);
        assert!(co.image_conditioned());
        assert_eq!(co.default_template(), "a photo of a");
        let ivlp = load(&[
            ("logit_scale", &[]),
            ("prompt_learner.ctx", &[2, 32]),
            ("image_encoder.VPT", &[3, 64]),
            (
                "image_encoder.transformer.resblocks.1.VPT_shallow",
                &[3, 64],
            ),
            ("text_encoder.transformer.resblocks.1.VPT_shallow", &[2, 32]),
            ("text_encoder.transformer.resblocks.2.VPT_shallow", &[2, 32]),
            (
                "prompt_learner.ZS_image_encoder.conv1.weight",
                &[64, 3, 8, 8],
            ),
        ])
        .unwrap();
        assert_eq!(ivlp.method, Method::Ivlp);
        let (t, v) = (ivlp.text.unwrap(), ivlp.vision.unwrap());
        assert_eq!((t.n, t.depth(), v.n, v.depth()), (2, 3, 3, 2));
        let vpt = load(&[("logit_scale", &[]), ("image_encoder.VPT", &[8, 64])]).unwrap();
        assert_eq!(vpt.method, Method::Vpt);
        assert!(vpt.text.is_none());
        assert_eq!(vpt.default_template(), "a photo of a");
    }

    #[test]
    fn unusable_files_are_refused_with_what_they_hold() {
        let e = err(&[("visual.conv1.weight", &[64, 3, 8, 8])]);
        assert!(e.contains("no prompt method's tensors found"), "{e}");
        assert!(e.contains("1 tensor: visual.conv1.weight"), "{e}");
        let e = err(&[("ctx", &[3, 16, 32])]);
        assert!(e.contains("class-specific context (CoOp's CSC)"), "{e}");
        let e = err(&[("ctx", &[16, 31])]);
        assert!(e.contains("`ctx` has shape [16, 31]"), "{e}");
        let e = err(&[("ctx", &[76, 32])]);
        assert!(e.contains("no room for a label"), "{e}");
        // Deep prompts with a gap, past the last block, or in block 0.
        let e = err(&[
            ("image_encoder.VPT", &[8, 64]),
            (
                "image_encoder.transformer.resblocks.2.VPT_shallow",
                &[8, 64],
            ),
        ]);
        assert!(e.contains("resblocks.1.VPT_shallow` is missing"), "{e}");
        let e = err(&[
            ("image_encoder.VPT", &[8, 64]),
            (
                "image_encoder.transformer.resblocks.1.VPT_shallow",
                &[8, 64],
            ),
            (
                "image_encoder.transformer.resblocks.2.VPT_shallow",
                &[8, 64],
            ),
            (
                "image_encoder.transformer.resblocks.3.VPT_shallow",
                &[8, 64],
            ),
        ]);
        assert!(e.contains("the model has 3 blocks"), "{e}");
        let e = err(&[
            ("image_encoder.VPT", &[8, 64]),
            (
                "image_encoder.transformer.resblocks.0.VPT_shallow",
                &[8, 64],
            ),
        ]);
        assert!(e.contains("block 0"), "{e}");
        let e = err(&[
            ("image_encoder.VPT", &[8, 64]),
            (
                "image_encoder.transformer.resblocks.1.VPT_shallow",
                &[7, 64],
            ),
        ]);
        assert!(e.contains("needs [8, 64]"), "{e}");
        let e = err(&[("image_encoder.VPT", &[2000, 64])]);
        assert!(e.contains("at most 1024"), "{e}");
        let e = err(&[
            ("ctx", &[4, 32]),
            ("meta_net.linear1.weight", &[2, 32]),
            ("meta_net.linear1.bias", &[2]),
            ("meta_net.linear2.weight", &[32, 3]),
            ("meta_net.linear2.bias", &[32]),
        ]);
        assert!(
            e.contains("meta_net.linear2.weight` has shape [32, 3]"),
            "{e}"
        );
    }

    #[test]
    fn meta_net_by_hand() {
        // f = [3, 4], W1 = I, b1 = [0, −5]: one hidden unit alive, one cut by the ReLU.
        let m = MetaNet {
            hidden: 2,
            w1: vec![1.0, 0.0, 0.0, 1.0],
            b1: vec![0.0, -5.0],
            w2: vec![2.0, 1.0, -1.0, 3.0, 0.5, 0.0],
            b2: vec![0.25, 0.0, 1.0],
        };
        let (mut h, mut out) = ([0.0; 2], [0.0; 3]);
        m.bias(&[3.0, 4.0], &mut h, &mut out);
        // h = [3, relu(−1)] = [3, 0]; out = W2·h + b2 = [6.25, −3, 2.5].
        assert_eq!(h, [3.0, 0.0]);
        assert_eq!(out, [6.25, -3.0, 2.5]);
    }
}
