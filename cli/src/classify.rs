//! The whole `maple-classify` job: labels → text features (once), images → logits.

use crate::imageio::load_rgb8;
use crate::imageio::Rgb8;
use crate::inputs::Input;
use crate::labels::{read_labels, tokenize_labels, Label};
use crate::loader::{load_model, load_tokenizer};
use crate::CliError;
use maple_core::ops::softmax;
use maple_core::preprocess::preprocess;
use maple_core::{Model, Parallel, TextFeatures, VisionWorkspace};
use std::path::{Path, PathBuf};

pub struct ImageResult {
    pub image: String,
    pub logits: Vec<f32>,
    pub probs: Vec<f32>,
}

/// A loaded model with its labels' text features, ready to classify any number of images.
pub struct Classifier {
    pub model: Model,
    pub labels: Vec<Label>,
    pub text: TextFeatures,
    par: Parallel,
}

/// One input's result: logits, or the one-line reason it failed.
pub struct Outcome {
    pub image: String,
    pub result: Result<ImageResult, String>,
    /// The decoded image, kept only when asked for (the HTML report's thumbnails).
    pub decoded: Option<Rgb8>,
}

impl Classifier {
    pub fn new(
        model_dir: &Path,
        prompts: Option<&Path>,
        classes: &Path,
        template: &str,
        threads: usize,
    ) -> Result<Self, CliError> {
        let labels = read_labels(classes)?;
        Self::with_labels(
            model_dir,
            prompts,
            labels,
            &classes.display().to_string(),
            template,
            threads,
        )
    }

    /// `source` names where the labels came from, in errors.
    pub fn with_labels(
        model_dir: &Path,
        prompts: Option<&Path>,
        labels: Vec<Label>,
        source: &str,
        template: &str,
        threads: usize,
    ) -> Result<Self, CliError> {
        let model = load_model(model_dir, prompts)?;
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
        let par = Parallel::with_threads(threads);
        let text = model
            .encode_texts(&par, &rows)
            .map_err(|e| CliError(format!("{source}: {e}")))?;
        Ok(Classifier {
            model,
            labels,
            text,
            par,
        })
    }

    pub fn vision_workspace(&self, batch: usize) -> VisionWorkspace {
        self.model.vision_workspace(batch, &self.par)
    }

    /// Decodes and preprocesses one image file → (`[3, S, S]` pixels, decoded RGB).
    pub fn load_image(&self, path: &Path) -> Result<(Vec<f32>, Rgb8), CliError> {
        let img = load_rgb8(path)?;
        let s = self.model.clip.config.vision.image_size;
        let px =
            preprocess(&img.data, img.width, img.height, s).map_err(|e| CliError::core(path, e))?;
        Ok((px, img))
    }

    /// Classifies up to one workspace batch of inputs; each gets an outcome, in order.
    pub fn classify_batch(
        &self,
        ws: &mut VisionWorkspace,
        inputs: &[Input],
        keep_decoded: bool,
    ) -> Vec<Outcome> {
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
            return out;
        }
        let e = self.text.dim;
        match self.model.encode_images(&self.par, ws, &pixels, ok.len()) {
            Ok(feats) => {
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
            }
            Err(err) => {
                for &i in &ok {
                    out[i].result = Err(err.to_string());
                }
            }
        }
        out
    }

    /// Classifies images in batches of `batch`; the first failure stops with its error.
    pub fn classify(&self, images: &[PathBuf], batch: usize) -> Result<Vec<ImageResult>, CliError> {
        let batch = batch.clamp(1, images.len().max(1));
        let mut ws = self.vision_workspace(batch);
        let inputs: Vec<Input> = images.iter().map(|p| Input::Image(p.clone())).collect();
        let mut out = Vec::with_capacity(images.len());
        for chunk in inputs.chunks(batch) {
            for o in self.classify_batch(&mut ws, chunk, false) {
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
