//! The whole `maple-classify` job: labels → text features (once), images → logits, on the
//! CPU or a GPU.

use crate::cache;
use crate::imageio::{load_rgb8, Rgb8};
use crate::inputs::Input;
use crate::labels::{read_labels, tokenize_labels, Label};
use crate::loader::{load_model_fingerprinted, load_text_tower, load_tokenizer};
use crate::CliError;
use maple_core::ops::softmax;
use maple_core::preprocess::preprocess;
use maple_core::{Model, Parallel, TextFeatures, TokenRow, VisionWorkspace};
use std::path::{Path, PathBuf};

pub struct ImageResult {
    pub image: String,
    pub logits: Vec<f32>,
    pub probs: Vec<f32>,
}

/// One input's result: logits, or the one-line reason it failed.
pub struct Outcome {
    pub image: String,
    pub result: Result<ImageResult, String>,
    /// The decoded image, kept only when asked for (the HTML report's thumbnails).
    pub decoded: Option<Rgb8>,
}

/// Where the towers run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Device {
    /// A hardware GPU if there is one, else the CPU (with a notice).
    Auto,
    /// Any GPU adapter, software ones included; an error if there is none.
    Gpu,
    Cpu,
}

/// Storage type of the GPU matmul weights (the math is f32 either way).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Precision {
    F32,
    F16,
}

#[allow(clippy::large_enum_variant)] // one value per run
enum Backend {
    Cpu(Option<VisionWorkspace>),
    #[cfg(feature = "gpu")]
    Gpu(Box<maple_gpu::GpuModel>),
}

/// A loaded model with its labels' text features, ready to classify any number of images.
pub struct Classifier {
    pub model: Model,
    pub labels: Vec<Label>,
    pub text: TextFeatures,
    par: Parallel,
    backend: Backend,
    device: Device,
    text_rows: Vec<TokenRow>,
    /// One line saying which device runs the model (and why, after a fallback).
    pub notice: Option<String>,
    /// Problems that did not stop the run (an unwritable or damaged text-feature cache).
    pub warnings: Vec<String>,
}

impl Classifier {
    /// CPU, labels from a file.
    pub fn new(
        model_dir: &Path,
        prompts: Option<&Path>,
        classes: &Path,
        template: &str,
        threads: usize,
    ) -> Result<Self, CliError> {
        let labels = read_labels(classes)?;
        let src = classes.display().to_string();
        Self::with_labels(
            model_dir,
            prompts,
            labels,
            &src,
            template,
            threads,
            Device::Cpu,
            Precision::F32,
            None,
        )
    }

    /// `source` names where the labels came from, in errors. With `cache_dir`, text features
    /// are read from / saved to the text-feature cache there ([`crate::cache`]).
    #[allow(clippy::too_many_arguments)]
    pub fn with_labels(
        model_dir: &Path,
        prompts: Option<&Path>,
        labels: Vec<Label>,
        source: &str,
        template: &str,
        threads: usize,
        device: Device,
        precision: Precision,
        cache_dir: Option<&Path>,
    ) -> Result<Self, CliError> {
        // On the CPU with a cache, the text tower is loaded only if the cache misses.
        let lazy_text = cache_dir.is_some() && device == Device::Cpu;
        let (model, fingerprint) = load_model_fingerprinted(model_dir, prompts, !lazy_text)?;
        let tok = load_tokenizer(model_dir)?;
        let n_ctx = model.prompts.as_ref().map_or(0, |p| p.n_ctx);
        let template_tokens = tok.encode(template)?.len() - 2;
        if n_ctx > template_tokens {
            return Err(CliError(format!(
                "{}: the prompts learn {n_ctx} context tokens but the template \"{template}\" has only {template_tokens}; use a --template with at least {n_ctx} words",
                prompts.map_or_else(String::new, |p| p.display().to_string())
            )));
        }
        let max_len = model.clip.config.text.max_position_embeddings;
        let rows = tokenize_labels(&tok, template, &labels, max_len, source)?;
        let mut c = Classifier {
            text: TextFeatures {
                dim: 0,
                data: Vec::new(),
            },
            model,
            labels,
            par: Parallel::with_threads(threads),
            backend: Backend::Cpu(None),
            device: Device::Cpu,
            text_rows: rows,
            notice: None,
            warnings: Vec::new(),
        };
        c.set_device(device, precision)?;
        let backend = c.backend_tag(precision);
        let cached = cache_dir.map(|dir| {
            let names: Vec<String> = c.labels.iter().map(|l| l.name.clone()).collect();
            let key = cache::key(fingerprint, backend, template, &names, &c.text_rows);
            (cache::path(dir, key), key)
        });
        if let Some((path, key)) = &cached {
            let dim = c.model.clip.config.projection_dim;
            match cache::load(path, *key, c.labels.len(), dim) {
                Ok(t) => {
                    c.text = t;
                    return Ok(c);
                }
                Err(cache::Miss::Absent) => {}
                Err(cache::Miss::Invalid(why)) => c.warnings.push(format!(
                    "ignoring text-feature cache {} ({why}); rebuilding it",
                    path.display()
                )),
            }
        }
        load_text_tower(model_dir, &mut c.model)?;
        c.text = match c.encode_texts_on_device() {
            Ok(t) => t,
            Err(e) if c.device == Device::Auto => {
                c.fall_back(&e);
                c.model
                    .encode_texts(&c.par, &c.text_rows)
                    .map_err(|e| CliError(format!("{source}: {e}")))?
            }
            Err(e) => return Err(CliError(format!("{source}: {e}"))),
        };
        // (Not saved if `auto` fell back to the CPU meanwhile: the key names the GPU.)
        if let Some((path, key)) = cached
            .as_ref()
            .filter(|_| c.backend_tag(precision) == backend)
        {
            if let Err(e) = cache::store(path, *key, &c.text) {
                c.warnings.push(format!(
                    "cannot write the text-feature cache ({e}); continuing without it"
                ));
            }
        }
        Ok(c)
    }

    fn set_device(&mut self, device: Device, precision: Precision) -> Result<(), CliError> {
        self.device = device;
        if precision == Precision::F16 && device == Device::Cpu {
            return Err(CliError(
                "--precision f16 is for GPUs (f16 weight storage); the CPU computes in f32".into(),
            ));
        }
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
            let p = match precision {
                Precision::F32 => maple_gpu::Precision::F32,
                Precision::F16 => maple_gpu::Precision::F16,
            };
            let opened = Gpu::open(choice).and_then(|g| {
                let name = g.describe();
                GpuModel::upload(g, &self.model, p).map(|m| (m, name))
            });
            match opened {
                Ok((m, name)) => {
                    self.notice = Some(format!("running on the GPU: {name}"));
                    self.backend = Backend::Gpu(Box::new(m));
                    Ok(())
                }
                Err(e) if device == Device::Auto => {
                    self.fall_back(&e.0);
                    Ok(())
                }
                Err(e) => Err(CliError(format!("--device gpu: {e}"))),
            }
        }
        #[cfg(not(feature = "gpu"))]
        {
            let _ = precision;
            if device == Device::Auto {
                self.fall_back("this build has no GPU backend");
                return Ok(());
            }
            Err(CliError(
                "--device gpu: this build has no GPU backend (cargo feature `gpu`)".into(),
            ))
        }
    }

    /// What computes the features, as the cache key names it.
    fn backend_tag(&self, precision: Precision) -> &'static str {
        match (&self.backend, precision) {
            (Backend::Cpu(_), _) => "cpu",
            (_, Precision::F32) => "gpu-f32",
            (_, Precision::F16) => "gpu-f16",
        }
    }

    /// `auto` only: drop the GPU and say why.
    fn fall_back(&mut self, why: &str) {
        self.notice = Some(format!("running on the CPU ({why})"));
        self.backend = Backend::Cpu(None);
        self.device = Device::Cpu;
    }

    fn encode_texts_on_device(&mut self) -> Result<TextFeatures, String> {
        match &mut self.backend {
            Backend::Cpu(_) => self
                .model
                .encode_texts(&self.par, &self.text_rows)
                .map_err(|e| e.to_string()),
            #[cfg(feature = "gpu")]
            Backend::Gpu(g) => g.encode_texts(&self.text_rows).map_err(|e| e.0),
        }
    }

    /// Image features `[count, E]` on the current device. Under `auto` a GPU failure moves the
    /// run (text features included) to the CPU, with a notice.
    fn encode_images(
        &mut self,
        pixels: &[f32],
        count: usize,
        batch: usize,
    ) -> Result<Vec<f32>, CliError> {
        #[cfg(feature = "gpu")]
        if let Backend::Gpu(g) = &mut self.backend {
            match g.encode_images(pixels, count) {
                Ok(f) => return Ok(f),
                Err(e) if self.device == Device::Auto => {
                    self.fall_back(&e.0);
                    if let Some(n) = &self.notice {
                        eprintln!("maple-classify: {n}");
                    }
                    self.text = self
                        .model
                        .encode_texts(&self.par, &self.text_rows)
                        .map_err(|e| CliError(e.to_string()))?;
                }
                Err(e) => return Err(CliError(format!("--device gpu: {e}"))),
            }
        }
        let (model, par) = (&self.model, &self.par);
        let Backend::Cpu(ws) = &mut self.backend else {
            return Err(CliError("no backend".into()));
        };
        let ws = ws.get_or_insert_with(|| model.vision_workspace(batch, par));
        model
            .encode_images(par, ws, pixels, count)
            .map(|f| f.to_vec())
            .map_err(|e| CliError(e.to_string()))
    }

    /// Decodes and preprocesses one image file → (`[3, S, S]` pixels, decoded RGB).
    pub fn load_image(&self, path: &Path) -> Result<(Vec<f32>, Rgb8), CliError> {
        let img = load_rgb8(path)?;
        let s = self.model.clip.config.vision.image_size;
        let px =
            preprocess(&img.data, img.width, img.height, s).map_err(|e| CliError::core(path, e))?;
        Ok((px, img))
    }

    /// Classifies up to `batch` inputs; each gets an outcome, in order. Bad images are
    /// outcomes; a GPU failure under `--device gpu` is fatal (`Err`).
    pub fn classify_batch(
        &mut self,
        inputs: &[Input],
        keep_decoded: bool,
        batch: usize,
    ) -> Result<Vec<Outcome>, CliError> {
        let mut out: Vec<Outcome> = Vec::with_capacity(inputs.len());
        let mut pixels = Vec::new();
        let mut ok = Vec::new();
        for inp in inputs {
            let image = inp.path().display().to_string();
            let loaded = match inp {
                Input::Failed(p, why) => Err(format!("{}: {why}", p.display())),
                Input::Image(p) => self.load_image(p).map_err(|e| e.0),
            };
            match loaded {
                Ok((px, img)) => {
                    pixels.extend(px);
                    ok.push(out.len());
                    out.push(Outcome {
                        image,
                        result: Err(String::new()),
                        decoded: keep_decoded.then_some(img),
                    });
                }
                Err(e) => out.push(Outcome {
                    image,
                    result: Err(e),
                    decoded: None,
                }),
            }
        }
        if ok.is_empty() {
            return Ok(out);
        }
        let feats = self.encode_images(&pixels, ok.len(), batch.max(ok.len()))?;
        let e = self.text.dim;
        for (&i, f) in ok.iter().zip(feats.chunks_exact(e)) {
            let mut logits = vec![0.0; self.labels.len()];
            out[i].result = self
                .model
                .logits(f, &self.text, &mut logits)
                .map(|_| {
                    let mut probs = logits.clone();
                    softmax(&mut probs);
                    ImageResult {
                        image: out[i].image.clone(),
                        logits,
                        probs,
                    }
                })
                .map_err(|e| e.to_string());
        }
        Ok(out)
    }

    /// Classifies images in batches of `batch`; the first failure stops with its error.
    pub fn classify(
        &mut self,
        images: &[PathBuf],
        batch: usize,
    ) -> Result<Vec<ImageResult>, CliError> {
        let batch = batch.clamp(1, images.len().max(1));
        let inputs: Vec<Input> = images.iter().map(|p| Input::Image(p.clone())).collect();
        let mut out = Vec::with_capacity(images.len());
        for chunk in inputs.chunks(batch) {
            for o in self.classify_batch(chunk, false, batch)? {
                out.push(o.result.map_err(CliError)?);
            }
        }
        Ok(out)
    }
}

/// Indices of the `k` best scores, best first (ties keep label order).
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// One JSON object per image: `{"image", "scores": [{"label","logit","prob"}…], "top": […]}`.
pub fn json_line(labels: &[Label], r: &ImageResult, k: usize) -> String {
    let scores: Vec<serde_json::Value> = labels
        .iter()
        .zip(r.logits.iter().zip(&r.probs))
        .map(|(l, (&logit, &prob))| serde_json::json!({"label": l.text, "logit": logit, "prob": prob}))
        .collect();
    let top: Vec<&str> = top_k(&r.logits, k)
        .into_iter()
        .map(|i| labels[i].text.as_str())
        .collect();
    serde_json::json!({"image": r.image, "scores": scores, "top": top}).to_string()
}

/// A readable block: the image, then its top-k labels with percentages.
pub fn text_block(labels: &[Label], r: &ImageResult, k: usize) -> String {
    let mut s = format!("{}\n", r.image);
    for i in top_k(&r.logits, k) {
        s.push_str(&format!(
            "  {:>6.2}%  {:<30}  (logit {:.3})\n",
            100.0 * r.probs[i],
            labels[i].text,
            r.logits[i]
        ));
    }
    s
}
