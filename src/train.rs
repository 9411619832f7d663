//! Learning MaPLe prompts from a folder of labelled images (`docs/training.md`):
//! the data (one sub-folder per class, few-shot sampling, the training augmentation), the
//! epoch loop with MaPLe's schedule, checkpoints, evaluation, and the prompts file it writes.
//! The math is [`maple_core::train`].

use crate::error::{path_display, Error, Result};
use crate::imageio::load_rgb8;
use crate::loader::{
    load_model_fingerprinted, load_text_tower, load_tokenizer, map_file_at_most, read_config,
    with_tensors_at_most, MAX_PROMPTS_BYTES,
};
use crate::outfile::{write_atomic, OutputFile};
use maple_core::preprocess::{normalize_into, preprocess, resize_box_rgb8};
use maple_core::safetensors::{serialize, Dtype, OwnedTensor, SafeTensors, TensorSource};
use maple_core::synth::Rng;
use maple_core::train::{cosine_lr, PromptParams, Sgd, StepStats, TrainWorkspace};
use maple_core::{Method, Model, Parallel, TokenRow};
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
    /// The prompt method a fresh start trains (MaPLe; CoOp, IVLP and VPT too, not CoCoOp). A
    /// run from `init` trains the method of that file.
    pub method: Method,
    /// Context tokens for a fresh start (2): the prompt rows of the method's towers (both for
    /// IVLP, the image tower's for VPT).
    pub n_ctx: usize,
    /// Prompt depth for a fresh start (9), of each of the method's towers.
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
            method: Method::Maple,
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

impl TrainOptions {
    /// `method`'s repository recipe (docs/prompts.md §8): its epochs, batch size, learning
    /// rate, context tokens, depth and template (MaPLe 5, 4, 0.0035, 2, 9, "a photo of a";
    /// CoOp 50, 32, 0.002, 16 random tokens "X X … X", 1; CoCoOp 10, 1, 0.002, 4, 1; IVLP 5, 4,
    /// 0.0035, 2, 12; VPT 5, 4, 0.0025, 8, 12), the rest as [`Default`].
    pub fn recipe(method: Method) -> TrainOptions {
        let (epochs, batch_size, lr, n_ctx, depth) = match method {
            Method::Maple => (5, 4, 0.0035, 2, 9),
            Method::Coop => (50, 32, 0.002, 16, 1),
            Method::Cocoop => (10, 1, 0.002, 4, 1),
            Method::Ivlp => (5, 4, 0.0035, 2, 12),
            Method::Vpt => (5, 4, 0.0025, 8, 12),
        };
        TrainOptions {
            method,
            epochs,
            batch_size,
            lr,
            n_ctx,
            depth,
            template: TrainOptions::default_template(method, n_ctx),
            ..TrainOptions::default()
        }
    }

    /// The template a fresh start of `method` with `n_ctx` tokens uses: CoOp's trainer's
    /// random-context placeholder "X X … X", else "a photo of a".
    pub fn default_template(method: Method, n_ctx: usize) -> String {
        match method {
            Method::Coop => vec!["X"; n_ctx].join(" "),
            _ => "a photo of a".to_string(),
        }
    }

    /// Refuses hyper-parameters no run can use: zero epochs or batch size, a learning rate,
    /// momentum or weight decay that is negative or not a finite number.
    pub fn check(&self) -> Result<()> {
        if self.batch_size == 0 || self.epochs == 0 {
            return Err(Error::Invalid(
                "--batch-size and --epochs must be at least 1".into(),
            ));
        }
        for (flag, v) in [
            ("--lr", self.lr),
            ("--momentum", self.momentum),
            ("--weight-decay", self.weight_decay),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::Invalid(format!(
                    "{flag} {v}: it must be a finite number, 0 or more"
                )));
            }
        }
        if self.max_steps == Some(0) {
            return Err(Error::Invalid("--max-steps must be at least 1".into()));
        }
        Ok(())
    }
}

/// Memory this process could still take: the smaller of Linux's `MemAvailable` and the
/// address-space limit (`ulimit -v`), else unknown.
fn available_memory() -> Option<u64> {
    let avail = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            kb.checked_mul(1024)
        });
    #[cfg(unix)]
    let limit = {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut r) } == 0;
        // (rlim_t is u64 on Linux and macOS, not on every Unix.)
        #[allow(clippy::unnecessary_cast)]
        (ok && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur as u64)
    };
    #[cfg(not(unix))]
    let limit: Option<u64> = None;
    match (avail, limit) {
        (Some(a), Some(l)) => Some(a.min(l)),
        (a, l) => a.or(l),
    }
}

/// `123 MB`, `4.4 GB`, `10.7 TB`.
fn bytes_text(b: u128) -> String {
    let b = b as f64;
    if b >= 1e12 {
        format!("{:.1} TB", b / 1e12)
    } else if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else {
        format!("{:.0} MB", b / 1e6)
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
        /// Images this step trained on: 0 when none of its images could be read (the step
        /// counts, without an update).
        images: usize,
        /// This step's loss (NaN when `images` is 0).
        loss: f32,
        /// Running accuracy over the epoch so far.
        accuracy: f32,
        /// Running images per second over the epoch so far.
        images_per_s: f32,
        /// Learning rate of this step.
        lr: f32,
    },
    /// An image that could not be read: skipped (reported once per run; later epochs skip
    /// it without a word).
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
    /// An epoch's checkpoint could not be written; the run goes on.
    CheckpointFailed {
        /// The checkpoint file.
        path: PathBuf,
        /// Why (the error names the file).
        error: String,
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

/// What an epoch has done so far.
#[derive(Default)]
struct EpochStats {
    /// Steps counted (with or without an update).
    steps: usize,
    /// Steps that updated the prompts (at least one image read).
    updates: usize,
    loss_sum: f64,
    seen: usize,
    correct: usize,
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
    /// Items that failed to load (each reported once).
    unreadable: std::collections::HashSet<usize>,
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

/// The template's token embeddings at positions 1..=n_ctx (`[n_ctx, Dt]`): the context a fresh
/// start begins from (docs/training.md §1).
fn template_ctx(model_dir: &Path, model: &Model, opts: &TrainOptions) -> Result<Vec<f32>> {
    let tok = load_tokenizer(model_dir)?;
    let ids = tok.encode(&opts.template)?;
    let dt = model.clip.config.text.tower.hidden_size;
    if ids.len() < opts.n_ctx.saturating_add(2) {
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
    Ok(ctx)
}

impl Trainer {
    /// Loads the model (with its text tower), the data and the starting prompts.
    pub fn new(model_dir: &Path, data: Dataset, mut opts: TrainOptions) -> Result<Trainer> {
        opts.check()?;
        // More threads than cores are never started (as maple-classify); at least one.
        opts.threads = crate::cap_threads(opts.threads).max(1);
        let config = read_config(model_dir)?;
        if opts.init.is_none() && opts.method == Method::Maple {
            // Checked before anything is sized by them (PromptParams::init checks again).
            if let Some(why) = config.prompt_shape_problem(opts.n_ctx, opts.depth) {
                return Err(Error::Invalid(why));
            }
        }
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
            None if opts.method != Method::Maple => {
                // CoOp, IVLP, VPT as their trainers start: ctx from the template's words (random
                // when the template is the trainers' "X X … X" placeholder), the rest normal(0.02).
                let ctx = if opts.method == Method::Vpt
                    || opts.template.split_whitespace().all(|w| w == "X")
                {
                    None
                } else {
                    Some(template_ctx(model_dir, &model, &opts)?)
                };
                let dims = (opts.n_ctx, opts.depth);
                PromptParams::init_family(
                    &config,
                    opts.method,
                    dims,
                    dims,
                    ctx.as_deref(),
                    opts.seed,
                )
                .map_err(Error::Compute)?
            }
            None => {
                // ctx from the template's token embeddings at positions 1..=n (docs/training.md §1).
                let ctx = template_ctx(model_dir, &model, &opts)?;
                PromptParams::init(&config, opts.n_ctx, opts.depth, Some(&ctx), opts.seed)
                    .map_err(Error::Compute)?
            }
        };
        model.prompts = Some(params.prompts());
        let rows = class_rows(model_dir, &model, &opts.template, &data.classes)?;
        // The workspace's size is known before it is allocated: refuse what cannot fit.
        let batch = opts.batch_size.min(data.items.len()).max(1);
        let need = TrainWorkspace::required_bytes(&model, &rows, batch, opts.threads);
        let have = available_memory();
        if have.is_some_and(|h| need > h as u128) || need > isize::MAX as u128 {
            return Err(Error::Invalid(format!(
                "training {} classes at --batch-size {} needs a {} workspace{}: \
                 use fewer classes or a smaller --batch-size",
                data.classes.len(),
                opts.batch_size,
                bytes_text(need),
                have.map_or(String::new(), |h| format!(
                    ", more than the {} of memory available",
                    bytes_text(h as u128)
                )),
            )));
        }
        let par = Parallel::with_threads(opts.threads);
        let ws = TrainWorkspace::new(&model, &rows, batch, &par).map_err(Error::Compute)?;
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
            unreadable: Default::default(),
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

    /// Checks, before any training, that checkpoints can be written into `dir`: it is made
    /// if missing, and must be a folder a file can be created in.
    pub fn check_checkpoints(dir: &Path) -> Result<()> {
        if dir.exists() && !dir.is_dir() {
            return Err(Error::Invalid(format!(
                "{}: is not a folder (checkpoints go into a folder; give --checkpoints DIR or \
                 --no-checkpoints)",
                path_display(dir)
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        crate::outfile::remove_stale_temporaries(dir, None);
        OutputFile::check(&dir.join("epoch-1.safetensors"))
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
        // Images of the last batch that trained (kept for the check of the prompts that
        // are about to be written).
        let mut last: Vec<usize> = Vec::with_capacity(b);
        let mut lr = self.lr(self.epoch);
        while self.epoch < self.opts.epochs && done < total {
            let epoch = self.epoch;
            lr = self.lr(epoch);
            let order = self.order(epoch);
            let mut e = EpochStats::default();
            let t0 = Instant::now();
            for step in 0..spe {
                if done >= total {
                    break;
                }
                // A step whose images all fail counts as a step (with no update), so every
                // epoch and the run end whatever the data holds.
                let k = self.load_batch(epoch, step, &order, &mut pixels, &mut labels, on)?;
                let loss = if k > 0 {
                    last.clone_from(&labels);
                    Some(self.train_step(&pixels[..k * img_len], &labels, lr, &mut e)?)
                } else {
                    None
                };
                self.steps += 1;
                done += 1;
                e.steps += 1;
                on(Event::Step {
                    epoch,
                    step: self.steps,
                    images: k,
                    loss: loss.unwrap_or(f32::NAN),
                    accuracy: e.correct as f32 / e.seen.max(1) as f32,
                    images_per_s: e.seen as f32 / t0.elapsed().as_secs_f32().max(1e-9),
                    lr,
                });
            }
            let epoch_done = e.steps == spe;
            if epoch_done && e.updates == 0 {
                return Err(Error::Invalid(format!(
                    "{}: none of the images of epoch {} could be read ({} of its {} images \
                     failed); nothing to train on",
                    path_display(&self.data.dir),
                    epoch + 1,
                    self.unreadable.len(),
                    self.data.items.len()
                )));
            }
            if epoch_done {
                self.epoch += 1;
                if checkpoints.is_some() {
                    self.check_prompts(&pixels[..last.len() * img_len], &last, lr)?;
                }
            }
            // A checkpoint that cannot be written (a full disk) costs a warning, not the run:
            // the run goes on to write its prompts file.
            let checkpoint = match (checkpoints, epoch_done) {
                (Some(dir), true) => {
                    let p = dir.join(format!("epoch-{}.safetensors", self.epoch));
                    match std::fs::create_dir_all(dir)
                        .map_err(|e| Error::io(dir, e))
                        .and_then(|()| write_atomic(&p, &self.checkpoint_bytes()))
                    {
                        Ok(()) => Some(p),
                        Err(e) => {
                            on(Event::CheckpointFailed {
                                path: p,
                                error: e.to_string(),
                            });
                            None
                        }
                    }
                }
                _ => None,
            };
            on(Event::Epoch {
                epoch,
                loss: (e.loss_sum / e.updates.max(1) as f64) as f32,
                accuracy: e.correct as f32 / e.seen.max(1) as f32,
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
        // What the run's prompts file will hold.
        self.check_prompts(&pixels[..last.len() * img_len], &last, lr)?;
        Ok(())
    }

    /// Checks the prompts about to be written (a checkpoint, the prompts file) on the last
    /// batch that trained: every step checks the loss of the prompts it starts from, which
    /// leaves the last update unchecked. Prompts that are finite but so large that the towers
    /// overflow (a learning rate far too large) give a loss that is not.
    fn check_prompts(&mut self, pixels: &[f32], labels: &[usize], lr: f32) -> Result<()> {
        if labels.is_empty() {
            return Ok(());
        }
        let loss = self.loss_and_grad(pixels, labels)?.loss;
        if loss.is_finite() {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "the prompts after step {} give a loss of {loss} (learning rate {lr}); nothing \
             was written for this epoch (try a smaller --lr)",
            self.steps
        )))
    }

    /// Decodes the images of `step` of an epoch into `pixels` (their classes into `labels`),
    /// skipping those that cannot be read: each is reported once per run, and a run none of
    /// whose images can be read stops with an error. Returns how many were loaded.
    fn load_batch(
        &mut self,
        epoch: usize,
        step: usize,
        order: &[usize],
        pixels: &mut [f32],
        labels: &mut Vec<usize>,
        on: &mut dyn FnMut(Event),
    ) -> Result<usize> {
        let s = self.model.clip.config.vision.image_size;
        let img_len = 3 * s * s;
        let b = pixels.len() / img_len;
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
                Err(e) => {
                    if self.unreadable.insert(item) {
                        on(Event::Skipped {
                            path: path.clone(),
                            error: e.to_string(),
                        });
                    }
                    if self.unreadable.len() == self.data.items.len() {
                        return Err(Error::Invalid(format!(
                            "{}: none of its {} images could be read; nothing to train on",
                            path_display(&self.data.dir),
                            self.data.items.len()
                        )));
                    }
                }
            }
        }
        Ok(k)
    }

    /// The loss of the current prompts on a batch, and its gradients into `self.grads`.
    fn loss_and_grad(&mut self, pixels: &[f32], labels: &[usize]) -> Result<StepStats> {
        self.model
            .loss_and_grad(
                &self.par,
                &mut self.ws,
                &self.params,
                pixels,
                labels,
                &mut self.grads,
            )
            .map_err(Error::Compute)
    }

    /// One SGD step on a batch: loss and gradients, the update, and the check that the loss
    /// and every updated prompt value are finite (a learning rate too large for the data
    /// ends the run here, before anything of this epoch is written).
    fn train_step(
        &mut self,
        pixels: &[f32],
        labels: &[usize],
        lr: f32,
        e: &mut EpochStats,
    ) -> Result<f32> {
        let StepStats { loss, correct } = self.loss_and_grad(pixels, labels)?;
        let diverged = |what: &str| {
            Error::Invalid(format!(
                "{what} at step {} (learning rate {lr}); nothing was written for this epoch \
                 (try a smaller --lr)",
                self.steps + 1
            ))
        };
        if !loss.is_finite() {
            return Err(diverged(&format!("the loss became {loss}")));
        }
        self.opt.step(&mut self.params, &self.grads, lr);
        if let Some(t) = self
            .params
            .tensors
            .iter()
            .find(|t| t.data.iter().any(|v| !v.is_finite()))
        {
            return Err(diverged(&format!(
                "the prompt tensor {} became infinite or NaN",
                t.name
            )));
        }
        self.model.prompts = Some(self.params.prompts());
        e.updates += 1;
        e.loss_sum += loss as f64;
        e.seen += labels.len();
        e.correct += correct;
        Ok(loss)
    }

    /// Accuracy of the current prompts on the held-out folder (test transform). Images that
    /// cannot be read are left out.
    pub fn evaluate(&mut self) -> Result<(f32, usize)> {
        let Some(ev) = &self.eval else {
            return Ok((0.0, 0));
        };
        // CoCoOp's text features depend on the image: encoded per image below instead.
        let conditioned = self.model.text_depends_on_image();
        let text = if conditioned {
            maple_core::TextFeatures {
                dim: self.model.clip.config.projection_dim,
                data: Vec::new(),
            }
        } else {
            self.model
                .encode_texts(&self.par, &self.rows)
                .map_err(Error::Compute)?
        };
        let mut tws = conditioned.then(|| self.model.text_workspace(32, &self.par));
        let s = self.model.clip.config.vision.image_size;
        let mut ws = self.model.vision_workspace(1, &self.par);
        let mut px = vec![0.0f32; 3 * s * s];
        let mut logits = vec![0.0f32; self.rows.len()];
        let (mut right, mut n) = (0usize, 0usize);
        for (path, class) in &ev.items {
            if self.pixels(path, None, &mut px).is_err() {
                continue;
            }
            let f = self
                .model
                .encode_images(&self.par, &mut ws, &px, 1)
                .map_err(Error::Compute)?;
            match tws.as_mut() {
                Some(tws) => {
                    let rows = &self.rows;
                    self.model
                        .conditioned_logits(&self.par, tws, f, 1, rows, &mut logits)
                        .map_err(Error::Compute)?;
                }
                None => self
                    .model
                    .logits(f, &text, &mut logits)
                    .map_err(Error::Compute)?,
            }
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
        let prefix = match self.params.method {
            Method::Maple => maple_core::maple::KEY_PREFIX,
            _ => "",
        };
        let mut tensors = own(prefix, &self.params);
        let mut meta = vec![
            ("format", "maple-prompts".to_string()),
            ("method", self.params.method.name().to_string()),
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
            meta.push(("class_list", class_list(&self.data.classes)));
            meta.extend(self.run_options());
        }
        (tensors, meta)
    }

    /// The options a resumed run must share with the run that wrote the checkpoint (as the
    /// checkpoint's metadata records them), each with the flag that sets it.
    fn run_options(&self) -> Vec<(&'static str, String)> {
        let o = &self.opts;
        vec![
            ("batch_size", o.batch_size.to_string()),
            ("epochs", o.epochs.to_string()),
            ("lr", o.lr.to_string()),
            (
                "lr_schedule",
                match o.schedule {
                    Schedule::Cosine => "cosine",
                    Schedule::Constant => "constant",
                }
                .into(),
            ),
            ("momentum", o.momentum.to_string()),
            ("weight_decay", o.weight_decay.to_string()),
            ("shots", o.shots.map_or("all".into(), |k| k.to_string())),
            ("augment", o.augment.to_string()),
            ("shuffle", o.shuffle.to_string()),
        ]
    }

    /// Continues from a checkpoint this trainer's [`run`](Self::run) wrote: prompts, momentum,
    /// epochs and steps done. The data and options must be the run's own: a checkpoint of
    /// other classes or options (batch size, learning rate, schedule, template, seed, …), a
    /// final prompts file, or one whose momentum does not fit its prompts is refused, naming
    /// what differs.
    pub fn resume(&mut self, path: &Path) -> Result<()> {
        // Bounded: a checkpoint is the prompts and their momentum (tens of MB for ViT-B/16).
        let bytes = map_file_at_most(path, MAX_CHECKPOINT_BYTES)?;
        let bad = |m: String| Error::Invalid(format!("{}: {m}", path_display(path)));
        let st = SafeTensors::parse(&bytes).map_err(|e| Error::core(path, e))?;
        let get = |k: &str| st.metadata(k).map(str::to_string);
        if get("format").as_deref() != Some("maple-prompts") {
            return Err(bad(
                "not a maple-train checkpoint (no `format: maple-prompts` in its metadata)".into(),
            ));
        }
        if get("seed").is_none() {
            return Err(bad(
                "a final prompts file (--out), not a checkpoint: give one of the run's \
                 epoch-N.safetensors checkpoints"
                    .into(),
            ));
        }
        let num = |k: &str| -> Result<usize> {
            get(k).and_then(|v| v.parse().ok()).ok_or_else(|| {
                bad(format!(
                    "not a maple-train checkpoint (no `{k}` in its metadata)"
                ))
            })
        };
        let (epochs, steps) = (num("epochs_done")?, num("steps_done")?);
        let ours = class_list(&self.data.classes);
        match get("class_list") {
            Some(theirs) if theirs == ours => {}
            Some(theirs) => {
                return Err(bad(format!(
                    "it was trained on other classes ({theirs}) than this data's ({ours})"
                )))
            }
            None => {
                return Err(bad(
                    "written by an older maple-train (its classes are not recorded as a list)"
                        .into(),
                ))
            }
        }
        let mut wanted = self.run_options();
        wanted.push(("template", self.opts.template.clone()));
        wanted.push(("seed", self.opts.seed.to_string()));
        for (k, v) in wanted {
            let flag = format!("--{}", k.replace('_', "-"));
            match get(k) {
                Some(theirs) if theirs == v => {}
                Some(theirs) => {
                    return Err(bad(format!(
                        "the run it continues had {flag} {theirs:?}, this one has {v:?}; \
                         resume with the run's own options"
                    )))
                }
                None => {
                    return Err(bad(format!(
                        "written by an older maple-train (no `{k}` in its metadata)"
                    )))
                }
            }
        }
        let config = self.model.clip.config;
        let params = PromptParams::load(&config, &st).map_err(|e| Error::core(path, e))?;
        if params.method != self.params.method
            || params.n_ctx != self.params.n_ctx
            || params.depth != self.params.depth
            || params.n_vis != self.params.n_vis
            || params.depth_vis != self.params.depth_vis
        {
            return Err(bad(
                "its prompts have another method, n_ctx or depth than this run's".into(),
            ));
        }
        let mut bufs = params.zeros_like();
        let mut have = 0;
        for t in &mut bufs.tensors {
            let name = format!("optimizer.momentum.{}", t.name);
            if let Some(v) = st.tensor(&name) {
                if v.shape != t.shape {
                    return Err(bad(format!(
                        "{name} has shape {:?}; its prompt tensor has {:?}",
                        v.shape, t.shape
                    )));
                }
                t.data = v.to_f32(&name).map_err(|e| Error::core(path, e))?;
                if t.data.iter().any(|x| !x.is_finite()) {
                    return Err(bad(format!("{name} holds NaN or infinite values")));
                }
                have += 1;
            }
        }
        if have != 0 && have != bufs.tensors.len() {
            return Err(bad(format!(
                "it holds momentum for {have} of its {} prompt tensors",
                bufs.tensors.len()
            )));
        }
        if steps > 0 && have == 0 && self.opts.momentum != 0.0 {
            return Err(bad(
                "it has no momentum tensors, though the run had taken steps".into(),
            ));
        }
        self.opt.buffers = (have == bufs.tensors.len()).then_some(bufs);
        self.params = params;
        self.model.prompts = Some(self.params.prompts());
        self.epoch = epochs;
        self.steps = steps;
        Ok(())
    }
}

/// The largest checkpoint `--resume` reads.
const MAX_CHECKPOINT_BYTES: u64 = 256 << 20;

/// The classes as a JSON array: unambiguous whatever the names hold (`, ` included).
fn class_list(l: &LabelSet) -> String {
    serde_json::Value::from(l.labels.iter().map(|l| l.text.clone()).collect::<Vec<_>>()).to_string()
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
