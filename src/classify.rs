//! [`Classifier`]: a model, its prompts and a label set, ready to classify images given as
//! files, encoded bytes or pixels, in batches of any size, on a GPU or the CPU.

use crate::cache;
use crate::error::{Error, Result};
use crate::hub::resolve_model;
use crate::imageio::{decode_rgb8, load_rgb8};
use crate::loader::{
    find_non_finite, load_model_packed, load_text_tower_packed, tokenizer_source, weights_file,
    Loaded, TokenizerSource,
};
use crate::packcache::{Holds, PackCache, PackSet};
use maple_core::ops::softmax;
use maple_core::preprocess::{preprocess, rgb_from_rgba};
use maple_core::{Model, Parallel, TextFeatures, TextWorkspace, TokenRow, VisionWorkspace};
use maple_text::labels::check_template;
use maple_text::{tokenize_labels, ClipTokenizer, Label, LabelSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The template without one given or recorded in the prompts file: CLIP's and MaPLe's.
pub const DEFAULT_TEMPLATE: &str = "a photo of a";

/// Where the towers should run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// A hardware GPU if wgpu finds one (Vulkan, Metal, DX12), else the CPU. A GPU that fails
    /// later (lost device, out of memory, validation error) is replaced by the CPU too.
    #[default]
    Auto,
    /// Any GPU adapter, software ones (lavapipe, SwiftShader) included; [`Error::Device`] if
    /// there is none or it fails.
    Gpu,
    /// The CPU only.
    Cpu,
}

/// How the GPU stores its matmul weights (the math is f32 either way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 weights.
    #[default]
    F32,
    /// f16 weights (GPUs with `shader-f16`); logits within about 1e-2 of f32. The CPU has no
    /// such mode: asking for it with [`Device::Cpu`] is [`Error::Invalid`].
    F16,
    /// int8 Linears in the image tower, on the CPU (weights per output column, activations per
    /// row; AVX-512 VNNI where the CPU has it, else a portable kernel). Attention, LayerNorm and
    /// the text tower stay f32. About three times the f32 speed; logits within about 0.1 of f32 on
    /// ViT-B/16 (tests/int8.rs measures it). [`Device::Auto`] runs it on the CPU;
    /// [`Device::Gpu`] with it is [`Error::Invalid`].
    Int8,
    /// bf16 Linears in the image tower, on the CPU (bf16 weights and activations, f32
    /// accumulation, AVX-512 BF16's `vdpbf16ps` or Arm BF16's `bfdot`). About 1.3× the f32
    /// speed on x86; logits within about 0.05 of f32 (tests/int8.rs measures it), closer than
    /// int8. A CPU without bf16 instructions computes in f32 instead, with a warning. Devices as for [`Precision::Int8`].
    Bf16,
}

impl Precision {
    /// The name `--precision` takes: `f32`, `f16`, `int8`, `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Int8 => "int8",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What is running the model now, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ActiveDevice {
    /// The CPU. `fallback` says why no GPU is used when one was allowed
    /// ([`Device::Auto`]): none found, or the one found failed.
    Cpu {
        /// Why the GPU is not used (`None` when the CPU was asked for).
        fallback: Option<String>,
    },
    /// A GPU.
    Gpu {
        /// The adapter's name and backend, as wgpu describes it.
        adapter: String,
    },
}

impl fmt::Display for ActiveDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActiveDevice::Cpu { fallback: None } => f.write_str("running on the CPU"),
            ActiveDevice::Cpu { fallback: Some(w) } => write!(f, "running on the CPU ({w})"),
            ActiveDevice::Gpu { adapter } => write!(f, "running on the GPU: {adapter}"),
        }
    }
}

/// One image to classify.
#[derive(Clone, Copy, Debug)]
pub enum ImageSource<'a> {
    /// An image file (JPEG, PNG, WebP, GIF, BMP, TIFF; the content decides the format).
    Path(&'a Path),
    /// An encoded image file held in memory.
    Bytes(&'a [u8]),
    /// Pixels: `height` rows of `width` RGB triples.
    Rgb8 {
        /// `width * height * 3` bytes.
        data: &'a [u8],
        /// Columns.
        width: usize,
        /// Rows.
        height: usize,
    },
    /// Pixels: `height` rows of `width` RGBA quadruples. Alpha is dropped, not composited
    /// (as Pillow's `convert("RGB")` does).
    Rgba8 {
        /// `width * height * 4` bytes.
        data: &'a [u8],
        /// Columns.
        width: usize,
        /// Rows.
        height: usize,
    },
}

impl ImageSource<'_> {
    /// How errors name this image: its path, or `<bytes>` / `<pixels>`.
    pub fn name(&self) -> String {
        match self {
            ImageSource::Path(p) => p.display().to_string(),
            ImageSource::Bytes(_) => "<bytes>".into(),
            ImageSource::Rgb8 { .. } | ImageSource::Rgba8 { .. } => "<pixels>".into(),
        }
    }
}

/// One label's score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score<'a> {
    /// Position in the label set.
    pub index: usize,
    /// The label as written.
    pub label: &'a str,
    /// MaPLe's logit: `logit_scale · cos(image, text)`.
    pub logit: f32,
    /// Softmax of the logits over the label set.
    pub prob: f32,
}

/// An image's scores against every label.
#[derive(Clone, Debug)]
pub struct Classification {
    labels: Arc<LabelSet>,
    /// One logit per label, in label order.
    pub logits: Vec<f32>,
    /// Softmax of `logits`.
    pub probs: Vec<f32>,
}

impl Classification {
    /// The labels the scores are for, in order.
    pub fn labels(&self) -> &[Label] {
        &self.labels.labels
    }

    /// Every label's score, in label order.
    pub fn scores(&self) -> impl Iterator<Item = Score<'_>> {
        (0..self.logits.len()).map(|i| self.score(i))
    }

    /// The `k` best scores, best first (ties keep label order).
    pub fn top(&self, k: usize) -> Vec<Score<'_>> {
        top_k(&self.logits, k)
            .into_iter()
            .map(|i| self.score(i))
            .collect()
    }

    /// The best score.
    pub fn best(&self) -> Score<'_> {
        self.score(top_k(&self.logits, 1)[0])
    }

    fn score(&self, i: usize) -> Score<'_> {
        Score {
            index: i,
            label: &self.labels.labels[i].text,
            logit: self.logits[i],
            prob: self.probs[i],
        }
    }
}

/// Indices of the `k` best scores, best first (ties keep label order).
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

#[derive(Clone, Debug)]
enum Labels {
    Unset,
    Ready(LabelSet),
    Failed(maple_text::TextError),
}

/// Settings for a [`Classifier`]; made by [`Classifier::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct ClassifierBuilder {
    model: OsString,
    prompts: Option<PathBuf>,
    labels: Labels,
    template: Option<String>,
    device: Device,
    precision: Precision,
    threads: usize,
    batch_size: usize,
    cache_dir: Option<PathBuf>,
}

impl ClassifierBuilder {
    /// MaPLe prompts: MaPLe's checkpoint (`model.pth.tar-N`) or a safetensors file with the
    /// `prompt_learner.*` tensors. Without prompts the model is zero-shot CLIP.
    pub fn prompts(mut self, path: impl AsRef<Path>) -> Self {
        self.prompts = Some(path.as_ref().to_path_buf());
        self
    }

    /// The class names. Each is trimmed and `_` reads as a space; an empty or duplicate name is
    /// an error from [`build`](Self::build).
    pub fn labels<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.labels = match LabelSet::from_names(names, "labels") {
            Ok(l) => Labels::Ready(l),
            Err(e) => Labels::Failed(e),
        };
        self
    }

    /// Labels already parsed (from a labels file, say: see [`crate::read_labels`]).
    pub fn label_set(mut self, labels: LabelSet) -> Self {
        self.labels = Labels::Ready(labels);
        self
    }

    /// The prompt template; each label's prompt is `"{template} {label}."`. MaPLe's learned
    /// context replaces its first n_ctx tokens. Default: the template the prompts file says
    /// it was trained with (`maple-train` records it), else `"a photo of a"`. One that differs
    /// from the file's is used, with a warning.
    pub fn template(mut self, template: impl Into<String>) -> Self {
        self.template = Some(template.into());
        self
    }

    /// Where to run. Default [`Device::Auto`].
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// Weight storage: [`Precision::F16`] on GPUs, [`Precision::Int8`] or [`Precision::Bf16`]
    /// on the CPU. Default [`Precision::F32`].
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// CPU threads; 0 (the default) uses every core. More threads than the cores the process may
    /// use (`std::thread::available_parallelism`) are never started: they only slow the run.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Most images per forward pass (default 8); longer batches are split. Memory grows with it.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Keeps text features in `dir` (one file per model, prompts, template and label set), so a
    /// later run with the same labels skips the text tower. Off by default; see
    /// [`default_cache_dir`](crate::default_cache_dir) for the usual place.
    pub fn cache_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.cache_dir = dir;
        self
    }

    /// Loads the model and prompts, opens the device and computes the labels' text features.
    pub fn build(mut self) -> Result<Classifier> {
        let labels = match self.labels {
            Labels::Ready(l) => l,
            Labels::Failed(e) => return Err(e.into()),
            Labels::Unset => {
                return Err(Error::Invalid(
                    "no labels: give the classifier labels before building it".into(),
                ))
            }
        };
        if self.precision == Precision::F16 && self.device == Device::Cpu {
            return Err(Error::Invalid(
                "f16 precision is for GPUs (f16 weight storage); the CPU computes in f32".into(),
            ));
        }
        if matches!(self.precision, Precision::Int8 | Precision::Bf16) {
            if self.device == Device::Gpu {
                return Err(Error::Invalid(format!(
                    "{} precision runs on the CPU (the GPU kernels are f32 and f16)",
                    self.precision
                )));
            }
            self.device = Device::Cpu;
        }
        let model_dir = model_dir(&self.model)?;
        // A cache directory that cannot be made is one warning, and no cache.
        let mut warnings = env_warnings(self.device);
        // An unknown kernel set is an error wherever a GPU may run (not a silent fallback to
        // the CPU under Auto); with the CPU asked for it is ignored, with a warning.
        #[cfg(feature = "gpu")]
        if let Err(e) = maple_gpu::KernelSet::from_env() {
            if self.device == Device::Cpu {
                warnings.push(format!("{} (ignored: the CPU is asked for)", e.0));
            } else {
                return Err(Error::Invalid(e.0));
            }
        }
        if self.precision == Precision::Bf16 && !maple_core::bf16::has_bf16() {
            warnings.push(
                "this CPU has no bf16 instructions (AVX-512 BF16 or Arm BF16): --precision bf16 computes in f32 instead".into(),
            );
            self.precision = Precision::F32;
        }
        if let Some(dir) = &self.cache_dir {
            let problem = match std::fs::create_dir_all(dir) {
                Err(e) => Some(e.to_string()),
                Ok(()) => cache::unsafe_dir(dir),
            };
            if let Some(why) = problem {
                warnings.push(format!(
                    "cannot use the cache directory {} ({why}); continuing without caches",
                    dir.display()
                ));
                self.cache_dir = None;
            } else {
                // What runs killed mid-write left (their temporaries of cache files).
                crate::outfile::remove_stale_temporaries(dir, None);
            }
        }
        // On the CPU with a cache, the text tower is loaded only if the cache misses.
        let lazy_text = self.cache_dir.is_some() && self.device == Device::Cpu;
        // With a cache directory, the Linear weights come packed from the packed-weight cache
        // (written at the end of the first build that misses).
        // (A directory without weights has none: the loader then says what is missing.)
        // An int8 or bf16 run also keeps its image tower's Linears converted, in a second file.
        let low_holds = match self.precision {
            Precision::Int8 => Some(Holds::Int8),
            Precision::Bf16 => Some(Holds::Bf16),
            Precision::F32 | Precision::F16 => None,
        };
        let (packs, low_packs) = match (&self.cache_dir, weights_file(&model_dir)) {
            (Some(dir), Ok(weights)) => {
                let config = std::fs::read(model_dir.join("config.json")).unwrap_or_default();
                let low = low_holds.map(|h| PackCache::open_holding(dir, &weights, &config, h));
                (Some(PackCache::open(dir, &weights, &config)), low)
            }
            _ => (None, None),
        };
        // Every run needs the image tower: its blocks are checked on every thread at once.
        let threads = crate::cap_threads(self.threads);
        // (An int8 or bf16 run whose converted file is valid never reads the encoder layers'
        // f32 panels: only the rest of the image tower is checked there.)
        let low_valid = low_packs.as_ref().is_some_and(PackCache::is_valid);
        if let Some(p) = &packs {
            p.check_ahead(threads, |n| {
                let layer = n.starts_with("vision_model.encoder.");
                (n.starts_with("vision_model.") && !(low_valid && layer))
                    || n.starts_with("visual_")
            });
        }
        if let Some(p) = &low_packs {
            p.check_ahead(threads, |_| true);
        }
        let pack_set = PackSet {
            panels: packs.as_ref(),
            low: low_packs.as_ref(),
        };
        // The tokenizer (building its BPE tables takes about as long as loading a cached model)
        // is only needed when the text features are not cached. Without a cache it is needed
        // for sure, and built on another thread meanwhile.
        let tok_src = tokenizer_source(&model_dir)?;
        let (loaded, tok) = std::thread::scope(|s| {
            let tok = self.cache_dir.is_none().then(|| s.spawn(|| tok_src.load()));
            let loaded = load_model_packed(
                &model_dir,
                self.prompts.as_deref(),
                !lazy_text,
                packs.as_ref().map(|_| &pack_set as _),
                packs.as_ref().map(PackCache::key),
            );
            let tok = tok.map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(Error::Invalid("the tokenizer thread panicked".into())))
            });
            (loaded, tok)
        });
        let Loaded {
            model,
            fingerprint,
            template: trained_with,
        } = loaded?;
        let template = match (self.template, trained_with) {
            (Some(given), Some(file)) if given != file => {
                warnings.push(format!(
                    "the prompts were trained with the template \"{file}\"; using the \
                     template given, \"{given}\""
                ));
                given
            }
            (Some(given), _) => given,
            (None, Some(file)) => file,
            // A file that does not say (the trainers' own checkpoints): the template its
            // method's trainer used (docs/prompts.md §1).
            (None, None) => model
                .prompts
                .as_ref()
                .map_or_else(|| DEFAULT_TEMPLATE.to_string(), |p| p.default_template()),
        };
        let tok = tok.transpose()?;
        let mut c = Classifier {
            text: TextFeatures {
                dim: 0,
                data: Vec::new(),
            },
            text_rows: None,
            labels: Arc::new(labels),
            model,
            model_dir,
            prompts_path: self.prompts,
            fingerprint,
            tok,
            tok_src,
            template,
            par: Parallel::with_threads(threads),
            backend: Backend::Cpu(None),
            requested: self.device,
            precision: self.precision,
            active: ActiveDevice::Cpu { fallback: None },
            cache_dir: self.cache_dir,
            batch_size: self.batch_size,
            warnings,
            packs,
            cond_ws: None,
        };
        if let Err(e) = c.open_device() {
            // The build fails, so its warnings would go unseen: they may say why.
            return Err(match e {
                Error::Device(m) if !c.warnings.is_empty() => {
                    Error::Device(format!("{m} ({})", c.warnings.join("; ")))
                }
                e => e,
            });
        }
        // (Its end writes the packed-weight cache: before quantizing, so it holds the f32
        // panels whatever the precision.)
        c.compute_text()?;
        // (Each converts only the Linears the int8/bf16 cache file did not have.)
        match c.precision {
            Precision::Int8 => c.model.quantize_image_tower(),
            Precision::Bf16 => c.model.bf16_image_tower(),
            Precision::F32 | Precision::F16 => {}
        }
        if let Some(low) = &low_packs {
            c.warnings.extend(low.take_warnings());
            if low.needs_store() {
                if let Err(e) = low.store(&c.model.clip) {
                    c.warnings.push(format!(
                        "cannot write the packed-weight cache {} ({e}); continuing without it",
                        low.path().display()
                    ));
                }
                low.stored();
            }
        }
        Ok(c)
    }
}

/// Warnings for settings in the environment that would otherwise be ignored without a word:
/// `MAPLE_SIMD` naming no kernel path or one this CPU lacks, `WGPU_BACKEND` naming no backend.
fn env_warnings(device: Device) -> Vec<String> {
    use maple_core::simd::{isa, names, Isa, IsaRefusal};
    let mut w = Vec::new();
    if let Some(v) = std::env::var_os("MAPLE_SIMD") {
        let v = v.to_string_lossy();
        match Isa::from_env_value(&v) {
            Err(IsaRefusal::Unknown) => w.push(format!(
                "MAPLE_SIMD=\"{v}\" is not one of {}; ignored (using {})",
                names().join(", "),
                isa().name()
            )),
            Err(IsaRefusal::Unsupported) => w.push(format!(
                "MAPLE_SIMD={v}: this CPU cannot run that path; using {}",
                isa().name()
            )),
            Ok(_) => {}
        }
    }
    if device != Device::Cpu {
        if let Some(v) = std::env::var_os("WGPU_BACKEND") {
            let v = v.to_string_lossy();
            const KNOWN: &[&str] = &[
                "vulkan", "vk", "dx12", "d3d12", "metal", "mtl", "opengl", "gles", "gl", "webgpu",
                "noop",
            ];
            let parts: Vec<String> = v.split(',').map(|p| p.trim().to_lowercase()).collect();
            let unknown: Vec<&String> = parts
                .iter()
                .filter(|p| !KNOWN.contains(&p.as_str()))
                .collect();
            if !unknown.is_empty() {
                w.push(format!(
                    "WGPU_BACKEND=\"{v}\": {} not a backend (vulkan, metal, dx12, gl){}",
                    unknown
                        .iter()
                        .map(|u| format!("\"{u}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                        + if unknown.len() == 1 { " is" } else { " are" },
                    if unknown.len() == parts.len() {
                        "; no GPU backend is left to try"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    w
}

/// A model directory from a directory path or a Hugging Face id.
fn model_dir(spec: &OsStr) -> Result<PathBuf> {
    match spec.to_str() {
        Some(s) => resolve_model(s),
        None => {
            let p = Path::new(spec);
            crate::loader::check_model_dir(p)?;
            Ok(p.to_path_buf())
        }
    }
}

#[allow(clippy::large_enum_variant)] // one value per classifier
enum Backend {
    /// The CPU, with its workspace once the first image has come (and the batch it holds).
    Cpu(Option<(VisionWorkspace, usize)>),
    #[cfg(feature = "gpu")]
    Gpu(Box<maple_gpu::GpuModel>),
}

/// A loaded model with its labels' text features, ready to classify any number of images.
///
/// ```
/// # let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
/// use maple::{Classifier, Device};
/// let mut c = Classifier::builder(&dir)
///     .prompts(dir.join("maple_prompts.safetensors"))
///     .labels(["cat", "dog", "red car"])
///     .device(Device::Cpu)
///     .build()?;
/// let pixels = vec![128u8; 64 * 48 * 3];
/// let result = c.classify_rgb8(&pixels, 64, 48)?;
/// println!("{}: {:.1}%", result.best().label, 100.0 * result.best().prob);
/// # Ok::<(), maple::Error>(())
/// ```
pub struct Classifier {
    model: Model,
    model_dir: PathBuf,
    prompts_path: Option<PathBuf>,
    fingerprint: u128,
    /// Built when first needed (a text-feature cache hit needs none).
    tok: Option<ClipTokenizer>,
    tok_src: TokenizerSource,
    template: String,
    labels: Arc<LabelSet>,
    text: TextFeatures,
    /// The labels' token rows, made when first needed.
    text_rows: Option<Vec<TokenRow>>,
    par: Parallel,
    backend: Backend,
    requested: Device,
    precision: Precision,
    active: ActiveDevice,
    cache_dir: Option<PathBuf>,
    batch_size: usize,
    warnings: Vec<String>,
    /// The packed-weight cache the model was loaded from (with a cache directory).
    packs: Option<PackCache>,
    /// CoCoOp's text workspace (its text features are computed per image batch).
    cond_ws: Option<TextWorkspace>,
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classifier")
            .field("model", &self.model_dir)
            .field("prompts", &self.model.prompts.is_some())
            .field("template", &self.template)
            .field("labels", &self.labels.labels.len())
            .field("device", &self.active)
            .field("precision", &self.precision)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl Classifier {
    /// Starts building a classifier for `model`: a directory (`config.json` and
    /// `model.safetensors` or `pytorch_model.bin`; HF or OpenAI tensor names) or a Hugging Face
    /// id such as `openai/clip-vit-base-patch16`, looked up in the hub cache and, with the `hub`
    /// feature, downloaded there when missing.
    pub fn builder(model: impl AsRef<OsStr>) -> ClassifierBuilder {
        ClassifierBuilder {
            model: model.as_ref().to_os_string(),
            prompts: None,
            labels: Labels::Unset,
            template: None,
            device: Device::Auto,
            precision: Precision::F32,
            threads: 0,
            batch_size: 8,
            cache_dir: None,
        }
    }

    /// The labels, in order.
    pub fn labels(&self) -> &[Label] {
        &self.labels.labels
    }

    /// The model (CLIP and MaPLe prompts).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// What runs the model now. Under [`Device::Auto`] this changes to the CPU, with the
    /// reason, if the GPU fails during a call.
    pub fn device(&self) -> &ActiveDevice {
        &self.active
    }

    /// Problems that did not stop anything (an unwritable cache directory, a damaged
    /// text-feature or packed-weight cache), each one line; taking them empties the list.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// Replaces the labels; only the text tower runs again (or the cache answers).
    pub fn set_labels<I, S>(&mut self, names: I) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.set_label_set(LabelSet::from_names(names, "labels")?)
    }

    /// [`set_labels`](Self::set_labels) with labels already parsed.
    pub fn set_label_set(&mut self, labels: LabelSet) -> Result<()> {
        let (old_labels, old_rows) = (
            std::mem::replace(&mut self.labels, Arc::new(labels)),
            self.text_rows.take(),
        );
        if let Err(e) = self.compute_text() {
            self.labels = old_labels;
            self.text_rows = old_rows;
            return Err(e);
        }
        Ok(())
    }

    /// Classifies one image file.
    pub fn classify_path(&mut self, path: impl AsRef<Path>) -> Result<Classification> {
        self.classify_one(ImageSource::Path(path.as_ref()))
    }

    /// Classifies one encoded image (the bytes of a JPEG, PNG, … file).
    pub fn classify_bytes(&mut self, bytes: &[u8]) -> Result<Classification> {
        self.classify_one(ImageSource::Bytes(bytes))
    }

    /// Classifies RGB pixels (`width * height * 3` bytes, row-major).
    pub fn classify_rgb8(
        &mut self,
        data: &[u8],
        width: usize,
        height: usize,
    ) -> Result<Classification> {
        self.classify_one(ImageSource::Rgb8 {
            data,
            width,
            height,
        })
    }

    /// Classifies RGBA pixels (`width * height * 4` bytes, row-major; alpha is dropped).
    pub fn classify_rgba8(
        &mut self,
        data: &[u8],
        width: usize,
        height: usize,
    ) -> Result<Classification> {
        self.classify_one(ImageSource::Rgba8 {
            data,
            width,
            height,
        })
    }

    fn classify_one(&mut self, image: ImageSource<'_>) -> Result<Classification> {
        self.classify_batch(&[image])?
            .pop()
            .unwrap_or_else(|| Err(Error::Invalid("no result".into())))
    }

    /// Classifies any number of images, in forward passes of at most the builder's batch size.
    /// Each image gets its own result, in order: an image that cannot be read or decoded is an
    /// `Err` in its place. The outer `Err` is for failures that stop everything (the GPU failing
    /// under [`Device::Gpu`]).
    pub fn classify_batch(
        &mut self,
        images: &[ImageSource<'_>],
    ) -> Result<Vec<Result<Classification>>> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.batch_size) {
            let pre: Vec<Result<Vec<f32>>> = chunk.iter().map(|i| self.preprocess(i)).collect();
            out.extend(self.classify_preprocessed(pre)?);
        }
        Ok(out)
    }

    /// The side of the square images the model takes (224 for ViT-B/16).
    pub fn image_size(&self) -> usize {
        self.model.clip.config.vision.image_size
    }

    /// Decodes (if needed) and preprocesses one image into `[3, S, S]` floats, exactly as
    /// Pillow + torchvision do for CLIP (bicubic resize of the short side, centre crop,
    /// normalisation).
    pub fn preprocess(&self, image: &ImageSource<'_>) -> Result<Vec<f32>> {
        self.preprocessor().preprocess(image)
    }

    /// The preprocessing of this classifier as a value of its own (`Copy + Send`), for decoding
    /// and preprocessing images on other threads while this one classifies.
    pub fn preprocessor(&self) -> Preprocessor {
        Preprocessor {
            size: self.image_size(),
        }
    }

    /// Classifies images already preprocessed by [`preprocess`](Self::preprocess) (one
    /// `[3, S, S]` buffer each; an `Err` passes through in its place), in forward passes of at
    /// most the batch size.
    pub fn classify_preprocessed(
        &mut self,
        images: Vec<Result<Vec<f32>>>,
    ) -> Result<Vec<Result<Classification>>> {
        let feats = self.embed_preprocessed(images)?;
        if self.conditioned() {
            return self.conditioned_scores(feats);
        }
        Ok(feats
            .into_iter()
            .map(|f| f.and_then(|f| self.scores(&f)))
            .collect())
    }

    /// Whether the text features depend on the image (CoCoOp): computed per batch, never
    /// cached.
    fn conditioned(&self) -> bool {
        self.model.text_depends_on_image()
    }

    /// CoCoOp: each image's logits against the labels encoded under its own context, on the
    /// CPU (docs/prompts.md §3).
    fn conditioned_scores(
        &mut self,
        feats: Vec<Result<Vec<f32>>>,
    ) -> Result<Vec<Result<Classification>>> {
        self.ensure_rows()?;
        self.load_text_tower()?;
        let ok: Vec<&[f32]> = feats.iter().filter_map(|f| f.as_deref().ok()).collect();
        let flat = ok.concat();
        let c = self.labels.len();
        let mut logits = vec![0.0; ok.len() * c];
        if !ok.is_empty() {
            let (model, par) = (&self.model, &self.par);
            let ws = self
                .cond_ws
                .get_or_insert_with(|| model.text_workspace(32, par));
            let rows = self.text_rows.as_deref().unwrap_or_default();
            model
                .conditioned_logits(par, ws, &flat, ok.len(), rows, &mut logits)
                .map_err(Error::Compute)?;
        }
        let mut next = logits.chunks_exact(c.max(1));
        Ok(feats
            .into_iter()
            .map(|f| {
                f.and_then(|_| {
                    let l = next.next().unwrap_or_default().to_vec();
                    self.classification(l)
                })
            })
            .collect())
    }

    /// The length of a feature row ([`embed_images`](Self::embed_images),
    /// [`embed_texts`](Self::embed_texts)): CLIP's projection size, 512 for ViT-B/16.
    pub fn embedding_dim(&self) -> usize {
        self.model.clip.config.projection_dim
    }

    /// The model's logit scale, exp(`logit_scale`) (100 for trained CLIP): a logit is this times
    /// the dot product of an image row and a text row.
    pub fn logit_scale(&self) -> f32 {
        self.model.clip.logit_scale.exp()
    }

    /// The labels' text features, `[labels, E]` row-major, L2-normalised: the rows
    /// [`embed_texts`](Self::embed_texts) gives for the labels' names. Empty under CoCoOp,
    /// whose text features depend on the image.
    pub fn text_features(&self) -> &[f32] {
        &self.text.data
    }

    /// Image features: each image's row of [`embedding_dim`](Self::embedding_dim) values,
    /// L2-normalised, in order, an image that cannot be read or decoded an `Err` in its place
    /// (as in [`classify_batch`](Self::classify_batch)). With MaPLe prompts these are the
    /// prompted image tower's features, the ones classification compares with the labels';
    /// the logits are [`logit_scale`](Self::logit_scale) times their dot products.
    pub fn embed_images(&mut self, images: &[ImageSource<'_>]) -> Result<Vec<Result<Vec<f32>>>> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.batch_size) {
            let pre: Vec<Result<Vec<f32>>> = chunk.iter().map(|i| self.preprocess(i)).collect();
            out.extend(self.embed_preprocessed(pre)?);
        }
        Ok(out)
    }

    /// [`embed_images`](Self::embed_images) for images already preprocessed.
    pub fn embed_preprocessed(
        &mut self,
        images: Vec<Result<Vec<f32>>>,
    ) -> Result<Vec<Result<Vec<f32>>>> {
        let img_len = 3 * self.image_size() * self.image_size();
        let e = self.embedding_dim();
        let mut out: Vec<Result<Vec<f32>>> = Vec::with_capacity(images.len());
        let mut pending: Vec<usize> = Vec::new();
        let mut pixels: Vec<f32> = Vec::new();
        let n = images.len();
        for (i, r) in images.into_iter().enumerate() {
            match r {
                Ok(px) if px.len() == img_len => {
                    pixels.extend_from_slice(&px);
                    pending.push(i);
                    out.push(Err(Error::Invalid("not embedded".into())));
                }
                Ok(px) => out.push(Err(Error::Invalid(format!(
                    "expected 3×{s}×{s} preprocessed values, got {}",
                    px.len(),
                    s = self.image_size()
                )))),
                Err(e) => out.push(Err(e)),
            }
            if pending.len() == self.batch_size || (i + 1 == n && !pending.is_empty()) {
                let feats = self.encode_images(&pixels, pending.len())?;
                if feats.iter().any(|v| !v.is_finite()) {
                    return Err(self.non_finite("the image tower"));
                }
                for (&j, f) in pending.iter().zip(feats.chunks_exact(e)) {
                    out[j] = Ok(f.to_vec());
                }
                pending.clear();
                pixels.clear();
            }
        }
        Ok(out)
    }

    /// Text features of any texts, one row each, L2-normalised, computed as the labels' are:
    /// each text goes into the template ("a photo of a {text}.") behind the prompts' learned
    /// context, so `embed_texts(&["dog"])` is the row a label "dog" would get. The labels, the
    /// text-feature cache and the classifier's state are left as they are. A text the label
    /// rules refuse (empty, over 64 KiB, too long for the context) is an error naming it; no
    /// texts give no rows.
    pub fn embed_texts<S: AsRef<str>>(&mut self, texts: &[S]) -> Result<Vec<Vec<f32>>> {
        if self.conditioned() {
            return Err(Error::Invalid(
                "CoCoOp's text features depend on the image: there is no text embedding without one"
                    .into(),
            ));
        }
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let set = LabelSet::from_names(texts.iter().map(|t| t.as_ref()), "texts")?;
        let rows = self.rows_for(&set)?;
        self.load_text_tower()?;
        let feats = match Self::encode_rows(&mut self.backend, &self.model, &self.par, &rows) {
            Ok(t) => t,
            Err(e) if self.requested == Device::Auto && self.backend_tag() != "cpu" => {
                self.move_to_cpu(e)?;
                Self::encode_rows(&mut self.backend, &self.model, &self.par, &rows)
                    .map_err(|e| Error::Text(maple_text::TextError(format!("texts: {e}"))))?
            }
            Err(e) if self.backend_tag() != "cpu" => return Err(Error::Device(e)),
            Err(e) => return Err(Error::Text(maple_text::TextError(format!("texts: {e}")))),
        };
        if let Some(i) = feats.data.iter().position(|v| !v.is_finite()) {
            let text = &set.labels[i / feats.dim.max(1)].text;
            return Err(self.non_finite(&format!("the text tower (text \"{text}\")")));
        }
        Ok(feats
            .data
            .chunks_exact(feats.dim.max(1))
            .map(<[f32]>::to_vec)
            .collect())
    }

    fn scores(&self, feature: &[f32]) -> Result<Classification> {
        let mut logits = vec![0.0; self.labels.len()];
        self.model
            .logits(feature, &self.text, &mut logits)
            .map_err(Error::Compute)?;
        self.classification(logits)
    }

    /// Probabilities beside the logits.
    fn classification(&self, logits: Vec<f32>) -> Result<Classification> {
        if logits.iter().any(|v| !v.is_finite()) {
            return Err(self.non_finite("the logit scale"));
        }
        let mut probs = logits.clone();
        softmax(&mut probs);
        Ok(Classification {
            labels: self.labels.clone(),
            logits,
            probs,
        })
    }

    /// The error for NaN or infinite features or logits from `what`: a model whose weights hold
    /// them cannot classify anything. It names the first such tensor when it finds one.
    fn non_finite(&self, what: &str) -> Error {
        let files = weights_file(&self.model_dir)
            .ok()
            .into_iter()
            .chain(self.prompts_path.clone());
        let why = files
            .filter_map(|p| find_non_finite(&p))
            .next()
            .unwrap_or_else(|| {
                format!(
                    "the weights in {} or the prompts overflow",
                    crate::path_display(&self.model_dir)
                )
            });
        Error::Model(format!("{what} gives NaN or infinite values: {why}"))
    }

    /// Makes the labels' token rows (building the tokenizer and checking the template against
    /// the prompts first, if no call has yet).
    fn ensure_rows(&mut self) -> Result<()> {
        if self.text_rows.is_some() {
            return Ok(());
        }
        let labels = Arc::clone(&self.labels);
        self.text_rows = Some(self.rows_for(&labels)?);
        Ok(())
    }

    /// The token rows of `labels` in this classifier's template (building the tokenizer and
    /// checking the template against the prompts first, if no call has yet).
    fn rows_for(&mut self, labels: &LabelSet) -> Result<Vec<TokenRow>> {
        if self.tok.is_none() {
            let tok = self.tok_src.load()?;
            let n_ctx = self.model.text_n();
            let what = self
                .prompts_path
                .as_ref()
                .map_or_else(String::new, |p| p.display().to_string());
            check_template(&tok, &self.template, n_ctx, &what)?;
            self.tok = Some(tok);
        }
        let tok = self.tok.as_ref().expect("built above");
        let max_len = self.model.clip.config.text.max_position_embeddings;
        Ok(tokenize_labels(tok, &self.template, labels, max_len)?)
    }

    fn open_device(&mut self) -> Result<()> {
        let device = self.requested;
        if device == Device::Cpu {
            return Ok(());
        }
        #[cfg(feature = "gpu")]
        {
            use maple_gpu::{AdapterChoice, Gpu, GpuModel};
            let choice = if device == Device::Auto {
                AdapterChoice::Hardware
            } else {
                AdapterChoice::Any
            };
            let p = match self.precision {
                Precision::F32 | Precision::Int8 | Precision::Bf16 => maple_gpu::Precision::F32,
                Precision::F16 => maple_gpu::Precision::F16,
            };
            let opened = Gpu::open(choice).and_then(|g| {
                let name = g.describe();
                GpuModel::upload(g, &self.model, p).map(|m| (m, name))
            });
            match opened {
                Ok((m, adapter)) => {
                    self.active = ActiveDevice::Gpu { adapter };
                    self.backend = Backend::Gpu(Box::new(m));
                    Ok(())
                }
                Err(e) if device == Device::Auto => {
                    self.fall_back(e.0);
                    Ok(())
                }
                Err(e) => Err(Error::Device(e.0)),
            }
        }
        #[cfg(not(feature = "gpu"))]
        {
            if device == Device::Auto {
                self.fall_back("this build has no GPU backend".into());
                return Ok(());
            }
            Err(Error::Device(
                "this build has no GPU backend (cargo feature `gpu`)".into(),
            ))
        }
    }

    /// What computes the features, as the cache key names it.
    fn backend_tag(&self) -> &'static str {
        match (&self.backend, self.precision) {
            (Backend::Cpu(_), _) => "cpu",
            (_, Precision::F32 | Precision::Int8 | Precision::Bf16) => "gpu-f32",
            (_, Precision::F16) => "gpu-f16",
        }
    }

    /// `Auto` only: drop the GPU and say why.
    fn fall_back(&mut self, why: String) {
        if self.precision == Precision::F16 {
            self.warnings.push(
                "f16 precision is GPU weight storage; on the CPU the model runs in f32".into(),
            );
        }
        self.active = ActiveDevice::Cpu {
            fallback: Some(why),
        };
        self.backend = Backend::Cpu(None);
    }

    /// Loads the text tower if a text-feature cache hit had left it out (from the packed-weight
    /// cache where it has the panels; [`Self::store_packs`] rewrites it if it lacked them).
    fn load_text_tower(&mut self) -> Result<()> {
        if self.model.clip.has_text() {
            return Ok(());
        }
        let packs = self.packs.as_ref().map(|p| p as _);
        load_text_tower_packed(&self.model_dir, &mut self.model, packs)?;
        Ok(())
    }

    /// Writes the packed-weight cache if loading missed any of its entries; passes on its
    /// warnings. A cache that cannot be written costs a warning, never the run.
    fn store_packs(&mut self) {
        let Some(packs) = &self.packs else {
            return;
        };
        self.warnings.extend(packs.take_warnings());
        // (Not once the image tower is int8 or bf16: its f32 panels are gone, and a file without them
        // would only be rewritten by the next run.)
        let f32_image = self.model.image_precision() == maple_core::model::LinearPrecision::F32;
        if packs.needs_store() && f32_image {
            if let Err(e) = packs.store(&self.model.clip) {
                self.warnings.push(format!(
                    "cannot write the packed-weight cache {} ({e}); continuing without it",
                    packs.path().display()
                ));
            }
            packs.stored();
        }
    }

    /// `Auto` only, when the GPU fails mid-run: fall back, then compute the text features again
    /// on the CPU (loading the text tower if a cache hit had left it out).
    fn move_to_cpu(&mut self, why: String) -> Result<()> {
        self.fall_back(why);
        if self.conditioned() {
            return Ok(());
        }
        self.ensure_rows()?;
        self.load_text_tower()?;
        let rows = self.text_rows.as_deref().unwrap_or_default();
        self.text = self
            .model
            .encode_texts(&self.par, rows)
            .map_err(Error::Compute)?;
        self.store_packs();
        Ok(())
    }

    /// The labels' text features: from the cache if it has them, else from the text tower
    /// (loaded now if it was left out), then saved to the cache.
    fn compute_text(&mut self) -> Result<()> {
        if self.conditioned() {
            // CoCoOp: per image batch, on the CPU (conditioned_scores); nothing to cache.
            self.ensure_rows()?;
            self.load_text_tower()?;
            self.text = TextFeatures {
                dim: self.embedding_dim(),
                data: Vec::new(),
            };
            return Ok(());
        }
        let tag = self.backend_tag();
        let cached = self.cache_dir.as_ref().map(|dir| {
            let names: Vec<String> = self.labels.labels.iter().map(|l| l.name.clone()).collect();
            let key = cache::key(
                self.fingerprint,
                tag,
                &self.template,
                &names,
                self.tok_src.id(),
            );
            (cache::path(dir, key), key)
        });
        if let Some((path, key)) = &cached {
            let dim = self.model.clip.config.projection_dim;
            match cache::load(path, *key, self.labels.len(), dim) {
                Ok(t) => {
                    self.text = t;
                    self.store_packs();
                    return Ok(());
                }
                Err(cache::Miss::Absent) => {}
                Err(cache::Miss::Invalid(why)) => self.warnings.push(format!(
                    "ignoring text-feature cache {} ({why}); rebuilding it",
                    path.display()
                )),
            }
        }
        self.ensure_rows()?;
        self.load_text_tower()?;
        match self.encode_texts_on_device() {
            Ok(t) => self.text = t,
            Err(e) if self.requested == Device::Auto && self.backend_tag() != "cpu" => {
                self.move_to_cpu(e)?
            }
            Err(e) if self.backend_tag() != "cpu" => return Err(Error::Device(e)),
            Err(e) => {
                return Err(Error::Text(maple_text::TextError(format!(
                    "{}: {e}",
                    self.labels.origin
                ))))
            }
        }
        if let Some(i) = self.text.data.iter().position(|v| !v.is_finite()) {
            let label = &self.labels.labels[i / self.text.dim.max(1)].text;
            return Err(self.non_finite(&format!("the text tower (label \"{label}\")")));
        }
        // (Not saved if `auto` fell back to the CPU meanwhile: the key names the GPU.)
        if let Some((path, key)) = cached.as_ref().filter(|_| self.backend_tag() == tag) {
            if let Err(e) = cache::store(path, *key, &self.text) {
                self.warnings.push(format!(
                    "cannot write the text-feature cache ({e}); continuing without it"
                ));
            }
        }
        self.store_packs();
        Ok(())
    }

    /// The labels' features from their token rows ([`Self::ensure_rows`] first).
    fn encode_texts_on_device(&mut self) -> std::result::Result<TextFeatures, String> {
        let rows = self.text_rows.as_deref().unwrap_or_default();
        Self::encode_rows(&mut self.backend, &self.model, &self.par, rows)
    }

    /// Text features of token rows on the current device.
    fn encode_rows(
        backend: &mut Backend,
        model: &Model,
        par: &Parallel,
        rows: &[TokenRow],
    ) -> std::result::Result<TextFeatures, String> {
        match backend {
            Backend::Cpu(_) => model.encode_texts(par, rows).map_err(|e| e.to_string()),
            #[cfg(feature = "gpu")]
            Backend::Gpu(g) => g.encode_texts(rows).map_err(|e| e.0),
        }
    }

    /// Image features `[count, E]` on the current device. Under `Auto` a GPU failure moves the
    /// classifier (text features included) to the CPU.
    fn encode_images(&mut self, pixels: &[f32], count: usize) -> Result<Vec<f32>> {
        #[cfg(feature = "gpu")]
        if let Backend::Gpu(g) = &mut self.backend {
            match g.encode_images(pixels, count) {
                Ok(f) => return Ok(f),
                Err(e) if self.requested == Device::Auto => self.move_to_cpu(e.0)?,
                Err(e) => return Err(Error::Device(e.0)),
            }
        }
        let (model, par) = (&self.model, &self.par);
        let Backend::Cpu(ws) = &mut self.backend else {
            return Err(Error::Invalid("no backend".into()));
        };
        // The workspace holds the largest batch seen so far; a larger one replaces it.
        if ws.as_ref().is_none_or(|(_, cap)| *cap < count) {
            *ws = Some((model.vision_workspace(count, par), count));
        }
        let Some((ws, _)) = ws.as_mut() else {
            return Err(Error::Invalid("no workspace".into()));
        };
        model
            .encode_images(par, ws, pixels, count)
            .map(|f| f.to_vec())
            .map_err(Error::Compute)
    }
}

/// Decodes and preprocesses images for a [`Classifier`] (from
/// [`Classifier::preprocessor`]) without borrowing it: Pillow-exact decoding, RGB, bicubic
/// resize and center crop to the model's input size, CLIP's normalisation.
#[derive(Clone, Copy, Debug)]
pub struct Preprocessor {
    size: usize,
}

impl Preprocessor {
    /// One image as the model's `[3, S, S]` input (see [`Classifier::preprocess`]).
    pub fn preprocess(&self, image: &ImageSource<'_>) -> Result<Vec<f32>> {
        let s = self.size;
        let fail = |m: String| Error::Image {
            image: image.name(),
            message: m,
        };
        let prep = |data: &[u8], w: usize, h: usize| {
            preprocess(data, w, h, s).map_err(|e| fail(e.to_string()))
        };
        match *image {
            ImageSource::Path(p) => {
                let img = load_rgb8(p)?;
                prep(&img.data, img.width, img.height)
            }
            ImageSource::Bytes(b) => {
                let img = decode_rgb8(b).map_err(fail)?;
                prep(&img.data, img.width, img.height)
            }
            ImageSource::Rgb8 {
                data,
                width,
                height,
            } => {
                check_len(data, width, height, 3).map_err(fail)?;
                prep(data, width, height)
            }
            ImageSource::Rgba8 {
                data,
                width,
                height,
            } => {
                check_len(data, width, height, 4).map_err(fail)?;
                prep(&rgb_from_rgba(data), width, height)
            }
        }
    }
}

fn check_len(
    data: &[u8],
    width: usize,
    height: usize,
    channels: usize,
) -> std::result::Result<(), String> {
    let want = width
        .checked_mul(height)
        .and_then(|n| n.checked_mul(channels));
    if width == 0 || height == 0 {
        return Err(format!("{width}×{height} pixels: the image is empty"));
    }
    match want {
        Some(n) if n == data.len() => Ok(()),
        _ => Err(format!(
            "{width}×{height} pixels need {} bytes, got {}",
            want.map_or_else(|| "more".to_string(), |n| n.to_string()),
            data.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    #[test]
    fn classifier_is_send() {
        assert_send::<Classifier>();
        assert_send::<Error>();
    }

    #[test]
    fn pixel_lengths() {
        assert!(check_len(&[0; 12], 2, 2, 3).is_ok());
        assert_eq!(
            check_len(&[0; 11], 2, 2, 3).unwrap_err(),
            "2×2 pixels need 12 bytes, got 11"
        );
        assert!(check_len(&[], 0, 5, 3).is_err());
        assert!(check_len(&[0; 3], usize::MAX, 2, 3).is_err());
    }

    #[test]
    fn top_k_order() {
        assert_eq!(top_k(&[0.1, 0.5, 0.5, -1.0], 3), vec![1, 2, 0]);
        assert_eq!(top_k(&[1.0], 5), vec![0]);
    }
}
