//! CLIP ViT-B/16 weights as plain structs mirroring the HF `CLIPModel` checkpoint names
//! (docs/model.md §2.1). Loading checks every shape against the config and packs each Linear for the GEMM.

use crate::config::{ClipConfig, TowerConfig};
use crate::error::{Error, Result};
use crate::gemm::PackedMatrix;
use crate::q8::Q8Matrix;
use crate::safetensors::{Dtype, TensorSource, TensorView};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;

/// `nn.LayerNorm`: `(x - mean) / sqrt(var + eps) * weight + bias` over the last axis.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// Scale, `[d]`.
    pub weight: Vec<f32>,
    /// Shift, `[d]`.
    pub bias: Vec<f32>,
    /// Added to the variance.
    pub eps: f32,
}

/// `y = x·Wᵀ + b` with W packed.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]` weight, packed for the GEMM.
    pub weight: PackedMatrix,
    /// `[out]`.
    pub bias: Vec<f32>,
    /// An int8 copy of W, used instead when present ([`crate::Model::quantize_image_tower`]).
    pub q8: Option<Q8Matrix>,
    /// A bf16 copy of W, used instead when present ([`crate::Model::bf16_image_tower`]).
    pub bf16: Option<crate::bf16::Bf16Matrix>,
}

/// `…encoder.layers.{i}`; q, k and v are fused into one `[3D]` Linear (order q, k, v).
#[derive(Debug, Clone)]
pub struct EncoderLayer {
    /// Before attention.
    pub layer_norm1: LayerNorm,
    /// `q_proj`, `k_proj`, `v_proj` fused: `[3d, d]`.
    pub qkv_proj: Linear,
    /// Attention output projection `[d, d]`.
    pub out_proj: Linear,
    /// Before the MLP.
    pub layer_norm2: LayerNorm,
    /// MLP up-projection `[4d, d]`.
    pub fc1: Linear,
    /// MLP down-projection `[d, 4d]`.
    pub fc2: Linear,
}

/// `vision_model.*`: patch embedding, class token, positions, encoder, post layer norm.
#[derive(Debug, Clone)]
pub struct VisionModel {
    /// Conv 16×16/16 as a matmul: [C·P·P] → `[D]`.
    pub patch_embedding: PackedMatrix,
    /// The class token, `[d]`.
    pub class_embedding: Vec<f32>,
    /// [1 + G², D]
    pub position_embedding: Vec<f32>,
    /// HF's `pre_layrnorm` (sic), applied before the encoder.
    pub pre_layrnorm: LayerNorm,
    /// The encoder layers.
    pub layers: Vec<EncoderLayer>,
    /// Applied to the class token after the encoder.
    pub post_layernorm: LayerNorm,
}

/// A lookup table `[rows, d]` kept in the checkpoint's precision (an f16 file stays f16 in
/// memory); rows are widened to f32 when read.
#[derive(Debug, Clone)]
pub enum Table {
    /// f32 rows.
    F32(Vec<f32>),
    /// IEEE half bits.
    F16(Vec<u16>),
}

impl Table {
    /// Row `i` (of width `out.len()`) into `out`.
    pub fn row_into(&self, i: usize, out: &mut [f32]) {
        let d = out.len();
        match self {
            Table::F32(v) => out.copy_from_slice(&v[i * d..(i + 1) * d]),
            Table::F16(v) => {
                for (o, &h) in out.iter_mut().zip(&v[i * d..(i + 1) * d]) {
                    *o = half::f16::from_bits(h).to_f32();
                }
            }
        }
    }

    /// The whole table widened to f32 (for uploading to another backend).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Table::F32(v) => v.clone(),
            Table::F16(v) => v
                .iter()
                .map(|&h| half::f16::from_bits(h).to_f32())
                .collect(),
        }
    }
}

/// `text_model.*`: token and position embeddings, encoder, final layer norm.
#[derive(Debug, Clone)]
pub struct TextModel {
    /// [V, D]
    pub token_embedding: Table,
    /// [L, D]
    pub position_embedding: Vec<f32>,
    /// The encoder layers.
    pub layers: Vec<EncoderLayer>,
    /// Applied after the encoder.
    pub final_layer_norm: LayerNorm,
}

impl TextModel {
    fn not_loaded() -> Self {
        TextModel {
            token_embedding: Table::F32(Vec::new()),
            position_embedding: Vec::new(),
            layers: Vec::new(),
            final_layer_norm: LayerNorm {
                weight: Vec::new(),
                bias: Vec::new(),
                eps: 0.0,
            },
        }
    }

    fn is_loaded(&self) -> bool {
        !self.position_embedding.is_empty()
    }
}

/// CLIP: both towers, their projections and the logit scale, as in HF `CLIPModel`.
#[derive(Debug, Clone)]
pub struct Clip {
    /// The geometry the weights were checked against.
    pub config: ClipConfig,
    /// The image tower.
    pub vision_model: VisionModel,
    /// The text tower.
    pub text_model: TextModel,
    /// `[Dv]` → `[E]`
    pub visual_projection: PackedMatrix,
    /// `[Dt]` → `[E]`
    pub text_projection: PackedMatrix,
    /// The checkpoint's `logit_scale`, a logarithm: the factor on the cosine similarity is its exp.
    pub logit_scale: f32,
}

/// Linear weights already packed (a packed-weight cache): asked for each Linear, by the name
/// of its first checkpoint tensor (`….q_proj.weight` for the fused q, k, v), with the shape
/// `[k, n]` and storage (`f16`) the checkpoint would give. `None` = pack it from the tensors.
/// The checkpoint's shapes are checked either way; a Linear answered here is never read.
pub trait PanelSource {
    /// The packed `[k, n]` matrix for the weight named `name`, if there is a matching one.
    fn panels(&self, name: &str, k: usize, n: usize, f16: bool) -> Option<PackedMatrix>;

    /// An int8 or bf16 `[k, n]` copy of the encoder-layer Linear weight `name` (a packed-weight
    /// cache of [`crate::Model::quantize_image_tower`]'s or [`crate::Model::bf16_image_tower`]'s
    /// result), if there is one: the loader then keeps it and no f32 panels for that Linear.
    fn low(&self, name: &str, k: usize, n: usize) -> Option<LowWeight> {
        let _ = (name, k, n);
        None
    }
}

/// A Linear weight in reduced precision, as [`PanelSource::low`] hands it over.
pub enum LowWeight {
    /// Int8 per output column.
    Int8(Q8Matrix),
    /// Bf16.
    Bf16(crate::bf16::Bf16Matrix),
}

/// One entry of [`Clip::low_weights`].
pub struct LowBytes<'a> {
    /// The checkpoint name of its (first) weight tensor.
    pub name: String,
    /// The weight.
    pub weight: LowRef<'a>,
}

/// A borrowed [`LowWeight`].
#[derive(Clone, Copy)]
pub enum LowRef<'a> {
    /// Int8 per output column.
    Int8(&'a Q8Matrix),
    /// Bf16.
    Bf16(&'a crate::bf16::Bf16Matrix),
}

impl LowRef<'_> {
    /// `(k, n)`.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            LowRef::Int8(m) => (m.k, m.n),
            LowRef::Bf16(m) => (m.k, m.n),
        }
    }

    /// Whether it is read in place from shared bytes (a mapped packed-weight cache file).
    pub fn is_shared(&self) -> bool {
        match self {
            LowRef::Int8(m) => m.is_shared(),
            LowRef::Bf16(m) => m.is_shared(),
        }
    }

    /// Its bytes, made on each call (`Q8Matrix::to_bytes`, `Bf16Matrix::to_bytes`).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            LowRef::Int8(m) => m.to_bytes(),
            LowRef::Bf16(m) => m.to_bytes(),
        }
    }
}

impl Linear {
    /// A Linear of f32 panels `weight`, or (with `low`) of `low` and `weight` released.
    fn new(weight: PackedMatrix, bias: Vec<f32>, low: Option<LowWeight>) -> Self {
        let (q8, bf16) = match low {
            None => (None, None),
            Some(LowWeight::Int8(m)) => (Some(m), None),
            Some(LowWeight::Bf16(m)) => (None, Some(m)),
        };
        Linear {
            weight,
            bias,
            q8,
            bf16,
        }
    }
}

/// Reads tensors by name, checking shapes.
pub(crate) struct Reader<'a> {
    pub src: &'a dyn TensorSource,
    pub prefix: String,
    pub staging: RefCell<Vec<f32>>,
    pub packed: Option<&'a dyn PanelSource>,
}

impl<'a> Reader<'a> {
    pub fn new(src: &'a dyn TensorSource, prefix: &str) -> Self {
        Reader {
            src,
            prefix: String::from(prefix),
            staging: RefCell::new(Vec::new()),
            packed: None,
        }
    }

    /// The tensor `name`, its shape checked.
    fn view(&self, name: &str, shape: &[usize]) -> Result<(String, TensorView<'_>)> {
        let full = format!("{}{}", self.prefix, name);
        let t = self
            .src
            .tensor(&full)
            .ok_or_else(|| Error::MissingTensor(full.clone()))?;
        if t.shape != shape {
            return Err(Error::Shape {
                name: full,
                expected: shape.to_vec(),
                found: t.shape,
            });
        }
        Ok((full, t))
    }

    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (full, t) = self.view(name, shape)?;
        let v = t.to_f32(&full)?;
        self.src.release(&full, &t);
        Ok(v)
    }

    /// Linear weights `names` (each `[n_each, k]`, stacked along the output) packed for the
    /// GEMM: as f16 panels when every part is f16 in the file, else as f32.
    fn weight(&self, names: &[String], n_each: usize, k: usize) -> Result<PackedMatrix> {
        let mut views = Vec::with_capacity(names.len());
        for name in names {
            views.push(self.view(name, &[n_each, k])?);
        }
        self.pack(&views, n_each * names.len(), k)
    }

    /// An encoder layer's Linear weight: its reduced-precision copy when the panel source has
    /// one (the f32 panels are then never made), else [`Self::weight`].
    fn layer_weight(
        &self,
        names: &[String],
        n_each: usize,
        k: usize,
    ) -> Result<(PackedMatrix, Option<LowWeight>)> {
        let n = n_each * names.len();
        if let (Some(src), Some(first)) = (self.packed, names.first()) {
            for name in names {
                self.view(name, &[n_each, k])?;
            }
            let full = format!("{}{}", self.prefix, first);
            let low = src.low(&full, k, n).filter(|l| match l {
                LowWeight::Int8(m) => (m.k, m.n) == (k, n),
                LowWeight::Bf16(m) => (m.k, m.n) == (k, n),
            });
            if let Some(low) = low {
                return Ok((PackedMatrix::released(k, n), Some(low)));
            }
        }
        Ok((self.weight(names, n_each, k)?, None))
    }

    /// Packs row-major `[n, k]` data given as consecutive parts.
    fn pack(&self, views: &[(String, TensorView<'_>)], n: usize, k: usize) -> Result<PackedMatrix> {
        let f16 = views.iter().all(|(_, t)| t.dtype == Dtype::F16);
        if let (Some(cache), Some((name, _))) = (self.packed, views.first()) {
            if let Some(m) = cache.panels(name, k, n, f16) {
                if (m.k, m.n, m.is_f16()) == (k, n, f16) {
                    return Ok(m);
                }
            }
        }
        if f16 {
            let mut bits = Vec::with_capacity(n * k);
            for (full, t) in views {
                bits.extend(f16_bits(t));
                self.src.release(full, t);
            }
            return Ok(PackedMatrix::from_out_in_f16(&bits, n, k));
        }
        // One staging buffer for every weight: fresh pages for each would cost more than the copy.
        let mut w = self.staging.borrow_mut();
        w.clear();
        for (full, t) in views {
            t.extend_f32(full, &mut w)?;
            self.src.release(full, t);
        }
        Ok(PackedMatrix::from_out_in(&w, n, k))
    }

    fn table(&self, name: &str, shape: &[usize]) -> Result<Table> {
        let (full, t) = self.view(name, shape)?;
        let table = if t.dtype == Dtype::F16 {
            Table::F16(f16_bits(&t).collect())
        } else {
            Table::F32(t.to_f32(&full)?)
        };
        self.src.release(&full, &t);
        Ok(table)
    }

    pub fn has(&self, name: &str) -> bool {
        self.src
            .tensor(&format!("{}{}", self.prefix, name))
            .is_some()
    }

    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.src
            .tensor(&format!("{}{}", self.prefix, name))
            .map(|t| t.shape)
    }

    fn layer_norm(&self, name: &str, d: usize, eps: f32) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.get(&format!("{name}.weight"), &[d])?,
            bias: self.get(&format!("{name}.bias"), &[d])?,
            eps,
        })
    }

    fn linear(&self, name: &str, n_out: usize, k_in: usize) -> Result<Linear> {
        let (weight, low) = self.layer_weight(&[format!("{name}.weight")], n_out, k_in)?;
        let bias = self.get(&format!("{name}.bias"), &[n_out])?;
        Ok(Linear::new(weight, bias, low))
    }

    fn layer(&self, name: &str, t: &TowerConfig) -> Result<EncoderLayer> {
        let (d, f) = (t.hidden_size, t.intermediate_size);
        let qkv = ["q_proj", "k_proj", "v_proj"];
        let w = qkv.map(|p| format!("{name}.self_attn.{p}.weight"));
        let mut b = Vec::with_capacity(3 * d);
        for p in qkv {
            b.extend(self.get(&format!("{name}.self_attn.{p}.bias"), &[d])?);
        }
        Ok(EncoderLayer {
            layer_norm1: self.layer_norm(&format!("{name}.layer_norm1"), d, t.layer_norm_eps)?,
            qkv_proj: {
                let (weight, low) = self.layer_weight(&w, d, d)?;
                Linear::new(weight, b, low)
            },
            out_proj: self.linear(&format!("{name}.self_attn.out_proj"), d, d)?,
            layer_norm2: self.layer_norm(&format!("{name}.layer_norm2"), d, t.layer_norm_eps)?,
            fc1: self.linear(&format!("{name}.mlp.fc1"), f, d)?,
            fc2: self.linear(&format!("{name}.mlp.fc2"), d, f)?,
        })
    }
}

impl Clip {
    /// Loads every tensor of a HF `CLIPModel` checkpoint (f32, f16 or bf16), checking shapes.
    pub fn load(config: &ClipConfig, src: &dyn TensorSource) -> Result<Self> {
        Self::load_parts(config, src, true)
    }

    /// As [`load`](Self::load); with `text = false` the text tower and text projection are left
    /// out (a run whose text features come from a cache never needs them) and can be added later
    /// with [`load_text`](Self::load_text).
    pub fn load_parts(config: &ClipConfig, src: &dyn TensorSource, text: bool) -> Result<Self> {
        Self::load_packed(config, src, text, None)
    }

    /// As [`load_parts`](Self::load_parts), taking each Linear that `packed` has instead of
    /// packing it from `src` (whose shapes are still checked).
    pub fn load_packed(
        config: &ClipConfig,
        src: &dyn TensorSource,
        text: bool,
        packed: Option<&dyn PanelSource>,
    ) -> Result<Self> {
        config.validate()?;
        let mut r = Reader::new(src, "");
        r.packed = packed;
        let v = &config.vision;
        let dv = v.tower.hidden_size;
        let pd = v.patch_dim();
        let patch_embedding = {
            let name = "vision_model.embeddings.patch_embedding.weight";
            // [D, C, P, P] is [D, C·P·P] row-major: check the 4-d shape, read it as a Linear.
            let view = r.view(name, &[dv, v.num_channels, v.patch_size, v.patch_size])?;
            r.pack(&[view], dv, pd)?
        };
        let vision_model = VisionModel {
            patch_embedding,
            class_embedding: r.get("vision_model.embeddings.class_embedding", &[dv])?,
            position_embedding: r.get(
                "vision_model.embeddings.position_embedding.weight",
                &[v.num_positions(), dv],
            )?,
            pre_layrnorm: r.layer_norm("vision_model.pre_layrnorm", dv, v.tower.layer_norm_eps)?,
            layers: (0..v.tower.num_hidden_layers)
                .map(|i| r.layer(&format!("vision_model.encoder.layers.{i}"), &v.tower))
                .collect::<Result<_>>()?,
            post_layernorm: r.layer_norm(
                "vision_model.post_layernorm",
                dv,
                v.tower.layer_norm_eps,
            )?,
        };
        let e = config.projection_dim;
        let visual_projection = r.weight(&["visual_projection.weight".to_string()], e, dv)?;
        let (text_model, text_projection) = if text {
            Self::text_parts(config, &r)?
        } else {
            (
                TextModel::not_loaded(),
                PackedMatrix::from_out_in(&[], 0, 0),
            )
        };
        let logit_scale = match r.shape("logit_scale") {
            Some(s) if s.is_empty() => r.get("logit_scale", &[])?[0],
            Some(s) if s == [1] => r.get("logit_scale", &[1])?[0],
            Some(s) => {
                return Err(Error::Shape {
                    name: "logit_scale".to_string(),
                    expected: Vec::new(),
                    found: s,
                })
            }
            None => return Err(Error::MissingTensor("logit_scale".to_string())),
        };
        if !logit_scale.is_finite() || logit_scale.abs() > 20.0 {
            return Err(Error::Input(format!(
                "logit_scale = {logit_scale} is not a usable log-scale"
            )));
        }
        Ok(Clip {
            config: *config,
            vision_model,
            text_model,
            visual_projection,
            text_projection,
            logit_scale,
        })
    }

    /// Adds the text tower and text projection to a model loaded without them.
    pub fn load_text(&mut self, src: &dyn TensorSource) -> Result<()> {
        self.load_text_packed(src, None)
    }

    /// As [`load_text`](Self::load_text), taking the Linears `packed` has (see
    /// [`load_packed`](Self::load_packed)).
    pub fn load_text_packed(
        &mut self,
        src: &dyn TensorSource,
        packed: Option<&dyn PanelSource>,
    ) -> Result<()> {
        let mut r = Reader::new(src, "");
        r.packed = packed;
        (self.text_model, self.text_projection) = Self::text_parts(&self.config, &r)?;
        Ok(())
    }

    /// Every packed Linear weight the model holds (not released), named as
    /// [`PanelSource::panels`] is asked for them: what a packed-weight cache saves.
    pub fn packed_weights(&self) -> Vec<(String, &PackedMatrix)> {
        let mut list: Vec<(String, &PackedMatrix)> = Vec::new();
        list.push((
            "vision_model.embeddings.patch_embedding.weight".into(),
            &self.vision_model.patch_embedding,
        ));
        let towers: [(&str, &[EncoderLayer]); 2] = [
            ("vision_model", &self.vision_model.layers),
            ("text_model", &self.text_model.layers),
        ];
        for (tower, layers) in towers {
            for (i, l) in layers.iter().enumerate() {
                let at = format!("{tower}.encoder.layers.{i}");
                list.push((format!("{at}.self_attn.q_proj.weight"), &l.qkv_proj.weight));
                list.push((
                    format!("{at}.self_attn.out_proj.weight"),
                    &l.out_proj.weight,
                ));
                list.push((format!("{at}.mlp.fc1.weight"), &l.fc1.weight));
                list.push((format!("{at}.mlp.fc2.weight"), &l.fc2.weight));
            }
        }
        list.push(("visual_projection.weight".into(), &self.visual_projection));
        if self.has_text() {
            list.push(("text_projection.weight".into(), &self.text_projection));
        }
        list.retain(|(_, m)| !m.is_released() && m.k * m.n > 0);
        list
    }

    /// The image tower's reduced-precision Linear weights, named as [`PanelSource::low`] is
    /// asked for them: what a packed-weight cache of an int8 or bf16 tower saves.
    pub fn low_weights(&self) -> Vec<LowBytes<'_>> {
        let mut list = Vec::new();
        for (i, l) in self.vision_model.layers.iter().enumerate() {
            let at = format!("vision_model.encoder.layers.{i}");
            let lins = [
                ("self_attn.q_proj", &l.qkv_proj),
                ("self_attn.out_proj", &l.out_proj),
                ("mlp.fc1", &l.fc1),
                ("mlp.fc2", &l.fc2),
            ];
            for (name, lin) in lins {
                let weight = match (&lin.q8, &lin.bf16) {
                    (Some(m), _) => LowRef::Int8(m),
                    (_, Some(m)) => LowRef::Bf16(m),
                    _ => continue,
                };
                let name = format!("{at}.{name}.weight");
                list.push(LowBytes { name, weight });
            }
        }
        list
    }

    /// Whether the text tower is loaded.
    pub fn has_text(&self) -> bool {
        self.text_model.is_loaded()
    }

    fn text_parts(config: &ClipConfig, r: &Reader<'_>) -> Result<(TextModel, PackedMatrix)> {
        let t = &config.text;
        let dt = t.tower.hidden_size;
        let text_model = TextModel {
            token_embedding: r.table(
                "text_model.embeddings.token_embedding.weight",
                &[t.vocab_size, dt],
            )?,
            position_embedding: r.get(
                "text_model.embeddings.position_embedding.weight",
                &[t.max_position_embeddings, dt],
            )?,
            layers: (0..t.tower.num_hidden_layers)
                .map(|i| r.layer(&format!("text_model.encoder.layers.{i}"), &t.tower))
                .collect::<Result<_>>()?,
            final_layer_norm: r.layer_norm(
                "text_model.final_layer_norm",
                dt,
                t.tower.layer_norm_eps,
            )?,
        };
        let text_projection = r.weight(
            &["text_projection.weight".to_string()],
            config.projection_dim,
            dt,
        )?;
        Ok((text_model, text_projection))
    }
}

/// The raw f16 bits of an f16 tensor (little-endian in every file format read here).
fn f16_bits<'a>(t: &'a TensorView<'_>) -> impl Iterator<Item = u16> + 'a {
    t.data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
}
