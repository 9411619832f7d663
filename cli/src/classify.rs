//! The whole `maple-classify` job: labels → text features (once), images → logits.

use crate::imageio::load_rgb8;
use crate::labels::{read_labels, tokenize_labels, Label};
use crate::loader::{load_model, load_tokenizer};
use crate::CliError;
use maple_core::ops::softmax;
use maple_core::preprocess::preprocess;
use maple_core::{Model, Parallel, TextFeatures};
use std::path::{Path, PathBuf};

pub struct Options {
    pub images: Vec<PathBuf>,
    pub classes: PathBuf,
    pub model: PathBuf,
    pub prompts: Option<PathBuf>,
    pub template: String,
    /// Threads for the CPU kernels; 0 = all cores.
    pub threads: usize,
    /// Images per forward pass.
    pub batch: usize,
}

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

impl Classifier {
    pub fn new(
        model_dir: &Path,
        prompts: Option<&Path>,
        classes: &Path,
        template: &str,
        threads: usize,
    ) -> Result<Self, CliError> {
        let labels = read_labels(classes)?;
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
        let rows = tokenize_labels(
            &tok,
            template,
            &labels,
            max_len,
            &classes.display().to_string(),
        )?;
        let par = Parallel::with_threads(threads);
        let text = model
            .encode_texts(&par, &rows)
            .map_err(|e| CliError(format!("{}: {e}", classes.display())))?;
        Ok(Classifier {
            model,
            labels,
            text,
            par,
        })
    }

    /// Preprocessed pixels `[3, S, S]` for one image file.
    pub fn load_image(&self, path: &Path) -> Result<Vec<f32>, CliError> {
        let img = load_rgb8(path)?;
        let s = self.model.clip.config.vision.image_size;
        preprocess(&img.data, img.width, img.height, s).map_err(|e| CliError::core(path, e))
    }

    /// Classifies images in batches of `batch`; the first bad image stops the run with its error.
    pub fn classify(&self, images: &[PathBuf], batch: usize) -> Result<Vec<ImageResult>, CliError> {
        let batch = batch.clamp(1, images.len().max(1));
        let mut ws = self.model.vision_workspace(batch, &self.par);
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(batch) {
            let mut pixels = Vec::new();
            for p in chunk {
                pixels.extend(self.load_image(p)?);
            }
            let feats = self
                .model
                .encode_images(&self.par, &mut ws, &pixels, chunk.len())
                .map_err(|e| CliError(e.to_string()))?;
            let e = self.text.dim;
            for (p, f) in chunk.iter().zip(feats.chunks_exact(e)) {
                let mut logits = vec![0.0; self.labels.len()];
                self.model
                    .logits(f, &self.text, &mut logits)
                    .map_err(|e| CliError(e.to_string()))?;
                let mut probs = logits.clone();
                softmax(&mut probs);
                out.push(ImageResult {
                    image: p.display().to_string(),
                    logits,
                    probs,
                });
            }
        }
        Ok(out)
    }
}

pub fn run(opts: &Options) -> Result<(Vec<Label>, Vec<ImageResult>), CliError> {
    // Cheap checks first, so a typo in an image path fails before the model loads.
    for p in &opts.images {
        if let Err(e) = std::fs::metadata(p) {
            return Err(CliError::io(p, e));
        }
    }
    let c = Classifier::new(
        &opts.model,
        opts.prompts.as_deref(),
        &opts.classes,
        &opts.template,
        opts.threads,
    )?;
    let results = c.classify(&opts.images, opts.batch)?;
    Ok((c.labels, results))
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
