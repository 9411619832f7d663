//! Learning MaPLe prompts from a folder of labelled images (`../shared/maple-train-spec.md`):
//! the data (one sub-folder per class, few-shot sampling, the training augmentation), the
//! epoch loop with MaPLe's schedule, checkpoints, evaluation, and the prompts file it writes.
//! The math is [`maple_core::train`].

use crate::error::{path_display, Error, Result};
use crate::imageio::load_rgb8;
use crate::loader::{
    load_model_fingerprinted, load_text_tower, load_tokenizer, read_config, with_tensors_at_most,
    MAX_PROMPTS_BYTES,
};
use crate::outfile::write_atomic;
use maple_core::preprocess::{normalize_into, preprocess, resize_box_rgb8};
use maple_core::safetensors::{serialize, Dtype, OwnedTensor, SafeTensors, TensorSource};
use maple_core::synth::Rng;
use maple_core::train::{cosine_lr, PromptParams, Sgd, StepStats, TrainWorkspace};
use maple_core::{Model, Parallel, TokenRow};
use maple_text::{tokenize_labels, LabelSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Image files a class folder may hold (by extension, case-insensitive).
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// A folder of labelled images: `DIR/<class>/<image>`, classes in sorted order (folder name,
/// `_` read as a space), files sorted inside each.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The folder.
    pub dir: PathBuf,
    /// The classes, from the sub-folder names.
    pub classes: LabelSet,
    /// Every image with its class index, class by class.
    pub items: Vec<(PathBuf, usize)>,
}

fn sorted_entries(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut v = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::io(dir, e))?;
        if !e.file_name().to_string_lossy().starts_with('.') {
            v.push(e);
        }
    }
    v.sort_by_key(|e| e.file_name());
    Ok(v)
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

impl Dataset {
    /// Reads the folder. Errors: not a folder, fewer than 2 class folders, a class folder with
    /// no images, a class name that is not UTF-8.
    pub fn read(dir: &Path) -> Result<Dataset> {
        if !dir.is_dir() {
            return Err(Error::Invalid(format!(
                "{}: not a folder (training data is a folder with one sub-folder of images per class)",
                path_display(dir)
            )));
        }
        let mut names = Vec::new();
        let mut items = Vec::new();
        for e in sorted_entries(dir)? {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            let name = e.file_name().into_string().map_err(|_| {
                Error::Invalid(format!(
                    "{}: a class folder name must be UTF-8",
                    path_display(&p)
                ))
            })?;
            let class = names.len();
            let before = items.len();
            for f in sorted_entries(&p)? {
                let fp = f.path();
                if fp.is_file() && is_image(&fp) {
                    items.push((fp, class));
                }
            }
            if items.len() == before {
                return Err(Error::Invalid(format!(
                    "{}: the class folder holds no images ({})",
                    path_display(&p),
                    IMAGE_EXTENSIONS.join(", ")
                )));
            }
            names.push(name);
        }
        if names.len() < 2 {
            return Err(Error::Invalid(format!(
                "{}: {} class folder{}; training needs at least 2 (one sub-folder of images per class)",
                path_display(dir),
                names.len(),
                if names.len() == 1 { "" } else { "s" }
            )));
        }
        let classes = LabelSet::from_names(&names, &path_display(dir))?;
        Ok(Dataset {
            dir: dir.to_path_buf(),
            classes,
            items,
        })
    }

    /// Dassl's `generate_fewshot_dataset`: `shots` images drawn per class without replacement
    /// with the seed (all of a class's images when it has fewer), kept in folder order.
    pub fn few_shot(&self, shots: usize, seed: u64) -> Dataset {
        let mut rng = Rng::new(seed ^ 0x5EED_F00D);
        let mut out = Vec::new();
        for c in 0..self.classes.len() {
            let mut idx: Vec<usize> = (0..self.items.len())
                .filter(|&i| self.items[i].1 == c)
                .collect();
            if idx.len() > shots {
                // Partial Fisher–Yates: the first `shots` places are a uniform sample.
                for i in 0..shots {
                    let j = i + (rng.next_u64() % (idx.len() - i) as u64) as usize;
                    idx.swap(i, j);
                }
                idx.truncate(shots);
                idx.sort_unstable();
            }
            out.extend(idx.into_iter().map(|i| self.items[i].clone()));
        }
        Dataset {
            dir: self.dir.clone(),
            classes: self.classes.clone(),
            items: out,
        }
    }
}

/// The learning rate over the epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// MaPLe's: one warm-up epoch at 1e-5, then cosine from the base rate.
    Cosine,
    /// The base rate throughout.
    Constant,
}

/// Everything a training run is told (the CLI's flags; MaPLe's defaults).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Epochs (MaPLe: 5).
    pub epochs: usize,
    /// Stop after this many steps in all (for tests and quick runs).
    pub max_steps: Option<usize>,
    /// Images per step (MaPLe: 4).
    pub batch_size: usize,
    /// Base learning rate (MaPLe: 0.0035).
    pub lr: f32,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// SGD momentum (0.9).
    pub momentum: f32,
    /// SGD weight decay (5e-4).
    pub weight_decay: f32,
    /// Context tokens for a fresh start (2).
    pub n_ctx: usize,
    /// Prompt depth for a fresh start (9).
    pub depth: usize,
    /// The class prompt is `"{template} {class}."`; its first n_ctx words initialise `ctx`.
    pub template: String,
    /// Images per class drawn with `seed` (all when `None`).
    pub shots: Option<usize>,
    /// Seeds the few-shot draw, the initialisation, shuffling and augmentation.
    pub seed: u64,
    /// RandomResizedCrop + flip (else the test transform).
    pub augment: bool,
    /// Reshuffle every epoch (else folder order, batches cycling through it).
    pub shuffle: bool,
    /// CPU threads.
    pub threads: usize,
    /// Start from these prompts instead of MaPLe's initialisation.
    pub init: Option<PathBuf>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 5,
            max_steps: None,
            batch_size: 4,
            lr: 0.0035,
            schedule: Schedule::Cosine,
            momentum: 0.9,
            weight_decay: 5e-4,
            n_ctx: 2,
            depth: 9,
            template: "a photo of a".into(),
            shots: None,
            seed: 1,
            augment: true,
            shuffle: true,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            init: None,
        }
    }
}

/// What the loop reports as it goes.
#[derive(Debug, Clone)]
pub enum Event {
    /// Before the first step: what will run.
    Start {
        /// Training images.
        images: usize,
        /// Classes.
        classes: usize,
        /// Steps per epoch.
        steps_per_epoch: usize,
        /// Total steps of the run (`max_steps` included).
        total_steps: usize,
        /// Trainable values.
        parameters: usize,
        /// Bytes of activations, gradients and backward weight packings.
        workspace_bytes: usize,
        /// Epoch the run starts at (0, or after a resumed checkpoint).
        first_epoch: usize,
    },
    /// One step done.
    Step {
        /// 0-based epoch.
        epoch: usize,
        /// Steps done in all.
        step: usize,
        /// This step's loss.
        loss: f32,
        /// Running accuracy over the epoch so far.
        accuracy: f32,
        /// Running images per second over the epoch so far.
        images_per_s: f32,
        /// Learning rate of this step.
        lr: f32,
    },
    /// An image that could not be read: skipped in this step.
    Skipped {
        /// The file.
        path: PathBuf,
        /// Why.
        error: String,
    },
    /// Accuracy on the held-out folder (before the first step: `epoch` is `None`).
    Eval {
        /// Epoch just finished, or `None` for the starting prompts.
        epoch: Option<usize>,
        /// Fraction of held-out images whose top class is theirs.
        accuracy: f32,
        /// Held-out images.
        images: usize,
    },
    /// One epoch done (and its checkpoint written, when there is a checkpoint folder).
    Epoch {
        /// 0-based epoch.
        epoch: usize,
        /// Mean loss over its steps.
        loss: f32,
        /// Accuracy over its images.
        accuracy: f32,
        /// The checkpoint written.
        checkpoint: Option<PathBuf>,
    },
}

/// A training run: model, prompts, optimizer, data and workspace.
pub struct Trainer {
    model: Model,
    params: PromptParams,
    grads: PromptParams,
    opt: Sgd,
    ws: TrainWorkspace,
    par: Parallel,
    data: Dataset,
    rows: Vec<TokenRow>,
    opts: TrainOptions,
    epoch: usize,
    steps: usize,
    eval: Option<Dataset>,
}

/// Token rows of the class prompts.
fn class_rows(
    model_dir: &Path,
    model: &Model,
    template: &str,
    classes: &LabelSet,
) -> Result<Vec<TokenRow>> {
    let tok = load_tokenizer(model_dir)?;
    Ok(tokenize_labels(
        &tok,
        template,
        classes,
        model.clip.config.text.max_position_embeddings,
    )?)
}

impl Trainer {
    /// Loads the model (with its text tower), the data and the starting prompts.
    pub fn new(model_dir: &Path, data: Dataset, opts: TrainOptions) -> Result<Trainer> {
        if opts.batch_size == 0 || opts.epochs == 0 {
            return Err(Error::Invalid(
                "--batch-size and --epochs must be at least 1".into(),
            ));
        }
        let config = read_config(model_dir)?;
        let (mut model, _) = load_model_fingerprinted(model_dir, None, false)?;
        load_text_tower(model_dir, &mut model).map_err(|e| {
            Error::Model(format!(
                "training needs the model's text tower, which did not load: {e}"
            ))
        })?;
        let params = match &opts.init {
            Some(p) => with_tensors_at_most(p, MAX_PROMPTS_BYTES, false, |src| {
                PromptParams::load(&config, src)
            })?,
            None => {
                // ctx from the template's token embeddings at positions 1..=n (spec §1).
                let tok = load_tokenizer(model_dir)?;
                let ids = tok.encode(&opts.template)?;
                let dt = config.text.tower.hidden_size;
                if ids.len() < opts.n_ctx + 2 {
                    return Err(Error::Invalid(format!(
                        "the template \"{}\" has {} tokens; --n-ctx {} needs at least that many words",
                        opts.template,
                        ids.len() - 2,
                        opts.n_ctx
                    )));
                }
                let mut ctx = vec![0.0; opts.n_ctx * dt];
                for (i, &id) in ids[1..1 + opts.n_ctx].iter().enumerate() {
                    model
                        .clip
                        .text_model
                        .token_embedding
                        .row_into(id as usize, &mut ctx[i * dt..(i + 1) * dt]);
                }
                PromptParams::init(&config, opts.n_ctx, opts.depth, Some(&ctx), opts.seed)
                    .map_err(Error::Compute)?
            }
        };
        model.prompts = Some(params.prompts());
        let rows = class_rows(model_dir, &model, &opts.template, &data.classes)?;
        let par = Parallel::with_threads(opts.threads.max(1));
        let ws =
            TrainWorkspace::new(&model, &rows, opts.batch_size, &par).map_err(Error::Compute)?;
        Ok(Trainer {
            grads: params.zeros_like(),
            opt: Sgd::new(opts.momentum, opts.weight_decay),
            model,
            params,
            ws,
            par,
            data,
            rows,
            opts,
            epoch: 0,
            steps: 0,
            eval: None,
        })
    }

    /// Evaluates on `dir` (same class folders as the training data) before and after every epoch.
    pub fn set_eval(&mut self, dir: &Path) -> Result<()> {
        let d = Dataset::read(dir)?;
        if d.classes.labels != self.data.classes.labels {
            return Err(Error::Invalid(format!(
                "{}: its class folders ({}) are not the training data's ({})",
                path_display(dir),
                names(&d.classes),
                names(&self.data.classes)
            )));
        }
        self.eval = Some(d);
        Ok(())
    }

    /// The prompts as trained so far.
    pub fn params(&self) -> &PromptParams {
        &self.params
    }

    /// Steps per epoch: ⌊N / B⌋ (Dassl's `drop_last`), or 1 when N < B.
    pub fn steps_per_epoch(&self) -> usize {
        let n = self.data.items.len();
        if n >= self.opts.batch_size {
            n / self.opts.batch_size
        } else {
            1
        }
    }

    fn lr(&self, epoch: usize) -> f32 {
        match self.opts.schedule {
            Schedule::Cosine => cosine_lr(self.opts.lr, epoch, self.opts.epochs),
            Schedule::Constant => self.opts.lr,
        }
    }

    /// The item order of `epoch`: folder order, or a shuffle seeded by (seed, epoch) so a
    /// resumed run sees the same order.
    fn order(&self, epoch: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.data.items.len()).collect();
        if self.opts.shuffle {
            let mut rng = Rng::new(self.opts.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9));
            for i in (1..idx.len()).rev() {
                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                idx.swap(i, j);
            }
        }
        idx
    }

    /// One image as the network sees it: the test transform, or RandomResizedCrop(S, scale
    /// (0.08, 1), ratio (3/4, 4/3), bicubic) + a horizontal flip half the time.
    fn pixels(&self, path: &Path, rng: Option<&mut Rng>, out: &mut [f32]) -> Result<()> {
        let img = load_rgb8(path)?;
        let s = self.model.clip.config.vision.image_size;
        let fail = |e: maple_core::Error| Error::Image {
            image: path_display(path),
            message: e.to_string(),
        };
        match rng {
            None => {
                out.copy_from_slice(&preprocess(&img.data, img.width, img.height, s).map_err(fail)?)
            }
            Some(rng) => {
                let (w, h) = (img.width, img.height);
                let bx = random_resized_crop(rng, w, h);
                let mut crop = resize_box_rgb8(&img.data, w, h, bx, s, s).map_err(fail)?;
                if rng.next_u64() >> 63 == 1 {
                    for row in crop.chunks_exact_mut(s * 3) {
                        for x in 0..s / 2 {
                            for c in 0..3 {
                                row.swap(x * 3 + c, (s - 1 - x) * 3 + c);
                            }
                        }
                    }
                }
                normalize_into(&crop, s, out).map_err(fail)?;
            }
        }
        Ok(())
    }

    /// Runs the remaining epochs (or up to `max_steps`), calling `on` as it goes. After each
    /// epoch, when `checkpoints` is given, the run is saved there as `epoch-<N>.safetensors`
    /// (written whole or not at all).
    pub fn run(&mut self, checkpoints: Option<&Path>, on: &mut dyn FnMut(Event)) -> Result<()> {
        let spe = self.steps_per_epoch();
        let b = self.opts.batch_size.min(self.data.items.len());
        let remaining = (self.opts.epochs - self.epoch.min(self.opts.epochs)) * spe;
        let total = self
            .opts
            .max_steps
            .map_or(remaining, |m| m.saturating_sub(self.steps).min(remaining));
        on(Event::Start {
            images: self.data.items.len(),
            classes: self.data.classes.len(),
            steps_per_epoch: spe,
            total_steps: total,
            parameters: self.params.len(),
            workspace_bytes: self.ws.bytes(),
            first_epoch: self.epoch,
        });
        if self.eval.is_some() && self.epoch == 0 {
            let (accuracy, images) = self.evaluate()?;
            on(Event::Eval {
                epoch: None,
                accuracy,
                images,
            });
        }
        let s = self.model.clip.config.vision.image_size;
        let img_len = 3 * s * s;
        let mut pixels = vec![0.0f32; b * img_len];
        let mut labels = Vec::with_capacity(b);
        let mut done = 0;
        while self.epoch < self.opts.epochs && done < total {
            let epoch = self.epoch;
            let lr = self.lr(epoch);
            let order = self.order(epoch);
            let (mut loss_sum, mut seen, mut correct, mut steps) = (0.0f64, 0usize, 0usize, 0usize);
            let t0 = Instant::now();
            for step in 0..spe {
                if done >= total {
                    break;
                }
                labels.clear();
                let mut k = 0;
                for slot in 0..b {
                    let item = order[(step * b + slot) % order.len()];
                    let (path, class) = &self.data.items[item];
                    let mut rng = self.opts.augment.then(|| {
                        Rng::new(
                            self.opts.seed
                                ^ ((epoch * order.len() + item) as u64 + 1)
                                    .wrapping_mul(0xD1B5_4A32_D192_ED03),
                        )
                    });
                    match self.pixels(
                        path,
                        rng.as_mut(),
                        &mut pixels[k * img_len..(k + 1) * img_len],
                    ) {
                        Ok(()) => {
                            labels.push(*class);
                            k += 1;
                        }
                        Err(e) => on(Event::Skipped {
                            path: path.clone(),
                            error: e.to_string(),
                        }),
                    }
                }
                if k == 0 {
                    continue;
                }
                let StepStats { loss, correct: c } = self
                    .model
                    .loss_and_grad(
                        &self.par,
                        &mut self.ws,
                        &self.params,
                        &pixels[..k * img_len],
                        &labels,
                        &mut self.grads,
                    )
                    .map_err(Error::Compute)?;
                if !loss.is_finite() {
                    return Err(Error::Invalid(format!(
                        "the loss became {loss} at step {} (learning rate {lr}); nothing was written for this epoch",
                        self.steps + 1
                    )));
                }
                self.opt.step(&mut self.params, &self.grads, lr);
                self.model.prompts = Some(self.params.prompts());
                self.steps += 1;
                done += 1;
                steps += 1;
                loss_sum += loss as f64;
                seen += k;
                correct += c;
                on(Event::Step {
                    epoch,
                    step: self.steps,
                    loss,
                    accuracy: correct as f32 / seen as f32,
                    images_per_s: seen as f32 / t0.elapsed().as_secs_f32().max(1e-9),
                    lr,
                });
            }
            let epoch_done = steps == spe;
            if epoch_done {
                self.epoch += 1;
            }
            let checkpoint = match (checkpoints, epoch_done) {
                (Some(dir), true) => {
                    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                    let p = dir.join(format!("epoch-{}.safetensors", self.epoch));
                    write_atomic(&p, &self.checkpoint_bytes())?;
                    Some(p)
                }
                _ => None,
            };
            on(Event::Epoch {
                epoch,
                loss: (loss_sum / steps.max(1) as f64) as f32,
                accuracy: correct as f32 / seen.max(1) as f32,
                checkpoint,
            });
            if self.eval.is_some() {
                let (accuracy, images) = self.evaluate()?;
                on(Event::Eval {
                    epoch: Some(epoch),
                    accuracy,
                    images,
                });
            }
        }
        Ok(())
    }

    /// Accuracy of the current prompts on the held-out folder (test transform). Images that
    /// cannot be read are left out.
    pub fn evaluate(&mut self) -> Result<(f32, usize)> {
        let Some(ev) = &self.eval else {
            return Ok((0.0, 0));
        };
        let text = self
            .model
            .encode_texts(&self.par, &self.rows)
            .map_err(Error::Compute)?;
        let s = self.model.clip.config.vision.image_size;
        let mut ws = self.model.vision_workspace(1, &self.par);
        let mut px = vec![0.0f32; 3 * s * s];
        let mut logits = vec![0.0f32; text.len()];
        let (mut right, mut n) = (0usize, 0usize);
        for (path, class) in &ev.items {
            if self.pixels(path, None, &mut px).is_err() {
                continue;
            }
            let f = self
                .model
                .encode_images(&self.par, &mut ws, &px, 1)
                .map_err(Error::Compute)?;
            self.model
                .logits(f, &text, &mut logits)
                .map_err(Error::Compute)?;
            let best = crate::classify::top_k(&logits, 1)[0];
            right += usize::from(best == *class);
            n += 1;
        }
        Ok((right as f32 / n.max(1) as f32, n))
    }

    /// The prompts file: `prompt_learner.*` tensors in f32, with n_ctx, depth and template in
    /// the metadata. `maple-classify --prompts` and [`crate::Classifier`] load it.
    pub fn prompts_bytes(&self) -> Vec<u8> {
        let (tensors, meta) = self.tensors_and_meta(false);
        let meta: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (*k, v.as_str())).collect();
        serialize(&tensors, &meta)
    }

    fn checkpoint_bytes(&self) -> Vec<u8> {
        let (tensors, meta) = self.tensors_and_meta(true);
        let meta: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (*k, v.as_str())).collect();
        serialize(&tensors, &meta)
    }

    fn tensors_and_meta(
        &self,
        with_state: bool,
    ) -> (Vec<OwnedTensor>, Vec<(&'static str, String)>) {
        let own = |prefix: &str, p: &PromptParams| -> Vec<OwnedTensor> {
            p.tensors
                .iter()
                .map(|t| OwnedTensor {
                    name: format!("{prefix}{}", t.name),
                    dtype: Dtype::F32,
                    shape: t.shape.clone(),
                    data: t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                })
                .collect()
        };
        let mut tensors = own("prompt_learner.", &self.params);
        let mut meta = vec![
            ("format", "maple-prompts".to_string()),
            ("n_ctx", self.params.n_ctx.to_string()),
            ("prompt_depth", self.params.depth.to_string()),
            ("template", self.opts.template.clone()),
            ("classes", names(&self.data.classes)),
            ("epochs_done", self.epoch.to_string()),
            ("steps_done", self.steps.to_string()),
        ];
        if with_state {
            if let Some(b) = &self.opt.buffers {
                tensors.extend(own("optimizer.momentum.", b));
            }
            meta.push(("seed", self.opts.seed.to_string()));
        }
        (tensors, meta)
    }

    /// Continues from a checkpoint this trainer's [`run`](Self::run) wrote: prompts, momentum,
    /// epochs and steps done. The data and options must be the run's own.
    pub fn resume(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |m: String| Error::Invalid(format!("{}: {m}", path_display(path)));
        let st = SafeTensors::parse(&bytes).map_err(|e| Error::core(path, e))?;
        let get = |k: &str| st.metadata(k).map(str::to_string);
        let num = |k: &str| -> Result<usize> {
            get(k).and_then(|v| v.parse().ok()).ok_or_else(|| {
                bad(format!(
                    "not a maple-train checkpoint (no `{k}` in its metadata)"
                ))
            })
        };
        let (epochs, steps) = (num("epochs_done")?, num("steps_done")?);
        if get("classes").as_deref() != Some(names(&self.data.classes).as_str()) {
            return Err(bad(format!(
                "it was trained on other classes ({}) than this data's ({})",
                get("classes").unwrap_or_default(),
                names(&self.data.classes)
            )));
        }
        let config = self.model.clip.config;
        let params = PromptParams::load(&config, &st).map_err(|e| Error::core(path, e))?;
        if params.n_ctx != self.params.n_ctx || params.depth != self.params.depth {
            return Err(bad(
                "its prompts have another n_ctx or depth than this run's".into(),
            ));
        }
        let mut bufs = params.zeros_like();
        let mut have = 0;
        for t in &mut bufs.tensors {
            if let Some(v) = st.tensor(&format!("optimizer.momentum.{}", t.name)) {
                t.data = v.to_f32(&t.name).map_err(|e| Error::core(path, e))?;
                have += 1;
            }
        }
        self.opt.buffers = (have == bufs.tensors.len()).then_some(bufs);
        self.params = params;
        self.model.prompts = Some(self.params.prompts());
        self.epoch = epochs;
        self.steps = steps;
        Ok(())
    }
}

fn names(l: &LabelSet) -> String {
    l.labels
        .iter()
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// torchvision `RandomResizedCrop.get_params` with scale (0.08, 1) and ratio (3/4, 4/3):
/// `(x0, y0, w, h)` of the box to resize.
pub fn random_resized_crop(
    rng: &mut Rng,
    width: usize,
    height: usize,
) -> (usize, usize, usize, usize) {
    let area = (width * height) as f64;
    let uni = |rng: &mut Rng, a: f64, b: f64| {
        a + (b - a) * ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    };
    let (lr0, lr1) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * uni(rng, 0.08, 1.0);
        let ar = uni(rng, lr0, lr1).exp();
        let w = (target * ar).sqrt().round() as usize;
        let h = (target / ar).sqrt().round() as usize;
        if w > 0 && h > 0 && w <= width && h <= height {
            let y0 = (rng.next_u64() % (height - h + 1) as u64) as usize;
            let x0 = (rng.next_u64() % (width - w + 1) as u64) as usize;
            return (x0, y0, w, h);
        }
    }
    // Fallback: the whole image, cropped to the nearest allowed ratio, centred.
    let r = width as f64 / height as f64;
    let (w, h) = if r < 3.0 / 4.0 {
        (
            width,
            ((width as f64 / (3.0 / 4.0)).round() as usize).min(height),
        )
    } else if r > 4.0 / 3.0 {
        (
            ((height as f64 * (4.0 / 3.0)).round() as usize).min(width),
            height,
        )
    } else {
        (width, height)
    };
    ((width - w) / 2, (height - h) / 2, w.max(1), h.max(1))
}
