//! OpenAI CLIP state-dict names under HF `CLIPModel` names (docs/model.md §2.1): packed `in_proj_weight`
//! split into q/k/v rows, `visual.proj` and `text_projection` transposed, everything else renamed.
//! Also reads the frozen CLIP copy inside MaPLe checkpoints (`image_encoder.…`, `text_encoder.…`).

use crate::safetensors::{TensorSource, TensorView};
use alloc::borrow::Cow;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// OpenAI's state-dict names (`visual.conv1.weight`, packed `in_proj_weight`, ...) seen as HF `CLIPModel` names.
pub struct OpenAiNames<'s> {
    src: &'s dyn TensorSource,
    visual: &'static str,
    text: &'static str,
    /// Every HF name this source can produce, in the source's order.
    names: Vec<String>,
}

/// HF block suffix → (OpenAI block suffix, which third of in_proj, if any).
const BLOCK: &[(&str, &str, Option<usize>)] = &[
    ("self_attn.q_proj.weight", "attn.in_proj_weight", Some(0)),
    ("self_attn.k_proj.weight", "attn.in_proj_weight", Some(1)),
    ("self_attn.v_proj.weight", "attn.in_proj_weight", Some(2)),
    ("self_attn.q_proj.bias", "attn.in_proj_bias", Some(0)),
    ("self_attn.k_proj.bias", "attn.in_proj_bias", Some(1)),
    ("self_attn.v_proj.bias", "attn.in_proj_bias", Some(2)),
    ("self_attn.out_proj.weight", "attn.out_proj.weight", None),
    ("self_attn.out_proj.bias", "attn.out_proj.bias", None),
    ("layer_norm1.weight", "ln_1.weight", None),
    ("layer_norm1.bias", "ln_1.bias", None),
    ("layer_norm2.weight", "ln_2.weight", None),
    ("layer_norm2.bias", "ln_2.bias", None),
    ("mlp.fc1.weight", "mlp.c_fc.weight", None),
    ("mlp.fc1.bias", "mlp.c_fc.bias", None),
    ("mlp.fc2.weight", "mlp.c_proj.weight", None),
    ("mlp.fc2.bias", "mlp.c_proj.bias", None),
];

/// Plain renames (HF, OpenAI without prefix, is it on the vision side).
const PLAIN: &[(&str, &str, bool)] = &[
    (
        "vision_model.embeddings.patch_embedding.weight",
        "conv1.weight",
        true,
    ),
    (
        "vision_model.embeddings.class_embedding",
        "class_embedding",
        true,
    ),
    (
        "vision_model.embeddings.position_embedding.weight",
        "positional_embedding",
        true,
    ),
    ("vision_model.pre_layrnorm.weight", "ln_pre.weight", true),
    ("vision_model.pre_layrnorm.bias", "ln_pre.bias", true),
    ("vision_model.post_layernorm.weight", "ln_post.weight", true),
    ("vision_model.post_layernorm.bias", "ln_post.bias", true),
    (
        "text_model.embeddings.token_embedding.weight",
        "token_embedding.weight",
        false,
    ),
    (
        "text_model.embeddings.position_embedding.weight",
        "positional_embedding",
        false,
    ),
    (
        "text_model.final_layer_norm.weight",
        "ln_final.weight",
        false,
    ),
    ("text_model.final_layer_norm.bias", "ln_final.bias", false),
];

impl<'s> OpenAiNames<'s> {
    /// `Some` when `src` holds OpenAI-named CLIP weights (plain, or MaPLe's frozen copy).
    pub fn detect(src: &'s dyn TensorSource) -> Option<Self> {
        let (visual, text) = if src.tensor("visual.conv1.weight").is_some() {
            ("visual.", "")
        } else if src.tensor("image_encoder.conv1.weight").is_some() {
            ("image_encoder.", "text_encoder.")
        } else {
            return None;
        };
        let mut me = OpenAiNames {
            src,
            visual,
            text,
            names: Vec::new(),
        };
        me.names = src.names().iter().flat_map(|n| me.hf_name(n)).collect();
        Some(me)
    }

    fn openai_name(&self, hf: &str) -> Option<(String, Option<usize>, bool)> {
        if let Some(&(_, o, vis)) = PLAIN.iter().find(|(h, _, _)| *h == hf) {
            return Some((
                format!("{}{o}", if vis { self.visual } else { self.text }),
                None,
                false,
            ));
        }
        match hf {
            "visual_projection.weight" => {
                return Some((format!("{}proj", self.visual), None, true))
            }
            "text_projection.weight" => {
                return Some((format!("{}text_projection", self.text), None, true))
            }
            "logit_scale" => return Some(("logit_scale".to_string(), None, false)),
            _ => {}
        }
        let (tower, rest) = if let Some(r) = hf.strip_prefix("vision_model.encoder.layers.") {
            (self.visual, r)
        } else {
            (self.text, hf.strip_prefix("text_model.encoder.layers.")?)
        };
        let (i, suffix) = rest.split_once('.')?;
        let &(_, o, third) = BLOCK.iter().find(|(h, _, _)| *h == suffix)?;
        Some((
            format!("{tower}transformer.resblocks.{i}.{o}"),
            third,
            false,
        ))
    }

    fn hf_name(&self, openai: &str) -> Vec<String> {
        let mut out = Vec::new();
        let side = |p: &str, vis: bool| {
            if vis {
                openai.strip_prefix(self.visual)
            } else {
                openai.strip_prefix(p)
            }
        };
        for &(h, o, vis) in PLAIN {
            if side(self.text, vis) == Some(o) {
                out.push(h.to_string());
            }
        }
        if openai == format!("{}proj", self.visual) {
            out.push("visual_projection.weight".into());
        }
        if openai == format!("{}text_projection", self.text) {
            out.push("text_projection.weight".into());
        }
        if openai == "logit_scale" {
            out.push(openai.into());
        }
        for (prefix, hf_tower) in [(self.visual, "vision_model"), (self.text, "text_model")] {
            let Some(rest) = openai
                .strip_prefix(prefix)
                .and_then(|r| r.strip_prefix("transformer.resblocks."))
            else {
                continue;
            };
            if let Some((i, suffix)) = rest.split_once('.') {
                for &(h, o, _) in BLOCK {
                    if o == suffix {
                        out.push(format!("{hf_tower}.encoder.layers.{i}.{h}"));
                    }
                }
            }
        }
        out
    }
}

impl TensorSource for OpenAiNames<'_> {
    fn tensor(&self, hf: &str) -> Option<TensorView<'_>> {
        let (name, third, transpose) = self.openai_name(hf)?;
        let t = self.src.tensor(&name)?;
        let es = t.dtype.size();
        if let Some(k) = third {
            // Rows k·D..(k+1)·D of a [3D, …] tensor.
            let rows = *t.shape.first()?;
            if rows % 3 != 0 {
                return None;
            }
            let row_bytes = t.data.len() / rows;
            let n = rows / 3;
            let mut shape = t.shape.clone();
            shape[0] = n;
            let data = match t.data {
                Cow::Borrowed(b) => Cow::Borrowed(&b[k * n * row_bytes..(k + 1) * n * row_bytes]),
                Cow::Owned(v) => Cow::Owned(v[k * n * row_bytes..(k + 1) * n * row_bytes].to_vec()),
            };
            return Some(TensorView {
                dtype: t.dtype,
                shape,
                data,
            });
        }
        if transpose {
            let (r, c) = match t.shape.as_slice() {
                [r, c] => (*r, *c),
                _ => return Some(t),
            };
            let mut out = alloc::vec![0u8; t.data.len()];
            for i in 0..r {
                for j in 0..c {
                    out[(j * r + i) * es..(j * r + i + 1) * es]
                        .copy_from_slice(&t.data[(i * c + j) * es..(i * c + j + 1) * es]);
                }
            }
            return Some(TensorView {
                dtype: t.dtype,
                shape: alloc::vec![c, r],
                data: Cow::Owned(out),
            });
        }
        Some(t)
    }

    fn release(&self, name: &str, view: &TensorView<'_>) {
        self.src.release(name, view)
    }

    fn names(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).collect()
    }
}
