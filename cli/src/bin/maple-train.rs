//! maple-train: learn MaPLe prompts from a folder of labelled images, on the CPU.

#[path = "../signals.rs"]
mod signals;

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use maple::engine::Method;
use maple::outfile::OutputFile;
use maple::path_display;
use maple::train::{Dataset, Event, Schedule, TrainOptions, Trainer};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum MethodArg {
    /// MaPLe: 2 context tokens, depth 9, lr 0.0035, 5 epochs, batch 4.
    Maple,
    /// CoOp: 16 random context tokens ("X X … X"), lr 0.002, 50 epochs, batch 32.
    Coop,
    /// CoCoOp: 4 context tokens from "a photo of a" and the meta-network, lr 0.002, 10 epochs,
    /// batch 1.
    Cocoop,
    /// IVLP: 2 text and 2 image prompts, depth 12 in both towers, lr 0.0035, 5 epochs, batch 4.
    Ivlp,
    /// VPT: 8 image prompts, depth 12, lr 0.0025, 5 epochs, batch 4.
    Vpt,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Method {
        match m {
            MethodArg::Maple => Method::Maple,
            MethodArg::Coop => Method::Coop,
            MethodArg::Cocoop => Method::Cocoop,
            MethodArg::Ivlp => Method::Ivlp,
            MethodArg::Vpt => Method::Vpt,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ScheduleArg {
    /// MaPLe's: one warm-up epoch at 1e-5, then cosine annealing from --lr.
    Cosine,
    /// --lr throughout.
    Constant,
}

/// Learn MaPLe prompts (context tokens and deep prompts of both CLIP towers) from a folder
/// with one sub-folder of images per class, following MaPLe's recipe (SGD with momentum,
/// warm-up + cosine schedule, RandomResizedCrop + flip). The towers stay frozen. The output is
/// a prompts file for `maple-classify --prompts`. --method coop, cocoop, ivlp or vpt trains
/// those methods' prompts instead, each with its trainer's defaults.
#[derive(Parser)]
#[command(
    name = "maple-train",
    version,
    after_help = "Example:\n  maple-train photos/ --model clip-vit-b16 --shots 16 --out my_prompts.safetensors\n  maple-classify new.jpg --model clip-vit-b16 --prompts my_prompts.safetensors --labels cat,dog"
)]
struct Args {
    /// Training images: DATA_DIR/CLASS/IMAGE. Folder names are the classes (`_` reads as
    /// a space), in sorted order.
    data_dir: PathBuf,
    /// Model directory (config.json, model.safetensors, tokenizer).
    #[arg(long)]
    model: PathBuf,
    /// Where to write the trained prompts (safetensors; `-`: stdout, when it is not a
    /// terminal).
    #[arg(long)]
    out: PathBuf,
    /// Start from these prompts (safetensors or MaPLe's .pth.tar) instead of MaPLe's
    /// initialisation.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Continue a run from one of its checkpoints (same data and options).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Folder for a checkpoint after each epoch [default: OUT.checkpoints].
    #[arg(long)]
    checkpoints: Option<PathBuf>,
    /// Write no checkpoints.
    #[arg(long, conflicts_with = "checkpoints")]
    no_checkpoints: bool,
    /// The prompt method; its repository recipe gives the defaults of --epochs, --batch-size,
    /// --lr, --n-ctx, --depth and --template. With --init, give the file's method.
    #[arg(long, value_enum, default_value = "maple")]
    method: MethodArg,
    /// [default: the method's, MaPLe 5]
    #[arg(long)]
    epochs: Option<usize>,
    /// Stop after this many steps in all.
    #[arg(long)]
    max_steps: Option<usize>,
    /// [default: the method's, MaPLe 4]
    #[arg(long)]
    batch_size: Option<usize>,
    /// Base learning rate [default: the method's, MaPLe 0.0035].
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f32>,
    #[arg(long, value_enum, default_value = "cosine")]
    lr_schedule: ScheduleArg,
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    momentum: f32,
    #[arg(long, default_value_t = 5e-4, allow_negative_numbers = true)]
    weight_decay: f32,
    /// Context tokens: the prompt rows of each of the method's towers (a fresh start only;
    /// --init files carry their own) [default: the method's, MaPLe 2].
    #[arg(long)]
    n_ctx: Option<usize>,
    /// Prompt depth: layers that take prompts, the input included (a fresh start only)
    /// [default: the method's, MaPLe 9].
    #[arg(long)]
    depth: Option<usize>,
    /// Class prompts read "{template} {class}."; its first words initialise the context
    /// ("X" placeholders: a random one) [default: "a photo of a"; CoOp "X X … X"].
    #[arg(long)]
    template: Option<String>,
    /// Images per class, drawn with --seed (default: all).
    #[arg(long)]
    shots: Option<usize>,
    /// Seeds the few-shot draw, initialisation, shuffling and augmentation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Use the test transform (resize + centre crop) instead of RandomResizedCrop + flip.
    #[arg(long)]
    no_augment: bool,
    /// Keep folder order instead of reshuffling each epoch.
    #[arg(long)]
    no_shuffle: bool,
    /// Held-out folder (same class folders): accuracy before training and after each epoch.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// CPU threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// No progress bar or per-epoch lines.
    #[arg(short, long)]
    quiet: bool,
}

fn main() -> ExitCode {
    signals::install("maple-train");
    let a = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.exit_code() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
    };
    match run(a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("maple-train: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: Args) -> Result<(), maple::Error> {
    // Refuse an unwritable output before spending minutes training.
    let to_stdout = a.out.as_os_str() == "-";
    if to_stdout {
        if std::io::stdout().is_terminal() {
            return Err(maple::Error::Invalid(
                "--out -: refusing to write a binary safetensors file to a terminal".into(),
            ));
        }
    } else {
        OutputFile::check(&a.out)?;
    }
    // The checkpoint folder: given, or beside a file --out; checked now, not after an epoch.
    let ckpt = if a.no_checkpoints {
        None
    } else if let Some(c) = &a.checkpoints {
        Some(c.clone())
    } else if maple::outfile::is_plain_file_path(&a.out) {
        let mut p = a.out.clone().into_os_string();
        p.push(".checkpoints");
        Some(PathBuf::from(p))
    } else {
        return Err(maple::Error::Invalid(format!(
            "--out {}: not a file that a checkpoint folder can go beside; give \
             --checkpoints DIR or --no-checkpoints",
            path_display(&a.out)
        )));
    };

    let mut data = Dataset::read(&a.data_dir)?;
    if let Some(k) = a.shots {
        if k == 0 {
            return Err(maple::Error::Invalid("--shots must be at least 1".into()));
        }
        data = data.few_shot(k, a.seed);
    }
    let method = Method::from(a.method);
    let recipe = TrainOptions::recipe(method);
    let n_ctx = a.n_ctx.unwrap_or(recipe.n_ctx);
    let template = a
        .template
        .clone()
        .unwrap_or_else(|| TrainOptions::default_template(method, n_ctx));
    let opts = TrainOptions {
        method,
        epochs: a.epochs.unwrap_or(recipe.epochs),
        max_steps: a.max_steps,
        batch_size: a.batch_size.unwrap_or(recipe.batch_size),
        lr: a.lr.unwrap_or(recipe.lr),
        schedule: match a.lr_schedule {
            ScheduleArg::Cosine => Schedule::Cosine,
            ScheduleArg::Constant => Schedule::Constant,
        },
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        n_ctx,
        depth: a.depth.unwrap_or(recipe.depth),
        template,
        shots: a.shots,
        seed: a.seed,
        augment: !a.no_augment,
        shuffle: !a.no_shuffle,
        threads: a
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        init: a.init.clone(),
    };
    let mut t = Trainer::new(&a.model, data, opts)?;
    if let Some(e) = &a.eval {
        t.set_eval(e)?;
    }
    if let Some(r) = &a.resume {
        t.resume(r)?;
    }
    // Before the first step, not after an epoch (made now if missing).
    if let Some(c) = &ckpt {
        Trainer::check_checkpoints(c)?;
    }
    let tty = !a.quiet && std::io::stderr().is_terminal();
    let mut bar = ProgressBar::hidden();
    let quiet = a.quiet;
    let say = |bar: &ProgressBar, line: String| {
        if !quiet {
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
    };
    t.run(ckpt.as_deref(), &mut |ev| match ev {
        Event::Start {
            images,
            classes,
            steps_per_epoch,
            total_steps,
            parameters,
            workspace_bytes,
            first_epoch,
        } => {
            say(
                &bar,
                format!(
                    "training {parameters} prompt values on {images} images of {classes} classes: \
                     {total_steps} steps ({steps_per_epoch} per epoch{}), workspace {:.0} MB",
                    if first_epoch > 0 {
                        format!(", resuming after epoch {first_epoch}")
                    } else {
                        String::new()
                    },
                    workspace_bytes as f64 / 1e6
                ),
            );
            if tty {
                bar = ProgressBar::with_draw_target(
                    Some(total_steps as u64),
                    ProgressDrawTarget::stderr(),
                );
                bar.set_style(
                    ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
                        .expect("a valid template"),
                );
            }
        }
        Event::Step {
            epoch,
            images,
            loss,
            accuracy,
            images_per_s,
            ..
        } => {
            if images > 0 {
                bar.set_message(format!(
                    "epoch {}  loss {loss:.4}  acc {:.1}%  {images_per_s:.2} img/s",
                    epoch + 1,
                    100.0 * accuracy
                ));
            }
            bar.inc(1);
        }
        Event::CheckpointFailed { error, .. } => say(
            &bar,
            format!("maple-train: warning: no checkpoint for this epoch: {error}"),
        ),
        Event::Skipped { path, error } => {
            // Image errors name their file already.
            let name = path_display(&path);
            let what = if error.starts_with(&name) {
                error
            } else {
                format!("{name}: {error}")
            };
            say(&bar, format!("maple-train: warning: skipped {what}"));
        }
        Event::Epoch {
            epoch,
            loss,
            accuracy,
            checkpoint,
        } => say(
            &bar,
            format!(
                "epoch {}: loss {loss:.4}, train accuracy {:.1}%{}",
                epoch + 1,
                100.0 * accuracy,
                checkpoint.map_or(String::new(), |p| format!(
                    ", checkpoint {}",
                    path_display(&p)
                ))
            ),
        ),
        Event::Eval {
            epoch,
            accuracy,
            images,
        } => say(
            &bar,
            format!(
                "{}: held-out accuracy {:.1}% ({images} images)",
                epoch.map_or("before training".to_string(), |e| format!(
                    "epoch {}",
                    e + 1
                )),
                100.0 * accuracy
            ),
        ),
    })?;
    bar.finish_and_clear();
    if to_stdout {
        let mut o = std::io::stdout().lock();
        o.write_all(&t.prompts_bytes())
            .and_then(|()| o.flush())
            .map_err(|e| maple::Error::Invalid(format!("cannot write to stdout: {e}")))?;
    } else {
        let mut out = OutputFile::create(&a.out)?;
        out.write_bytes(&t.prompts_bytes())?;
        out.commit()?;
    }
    if !a.quiet {
        eprintln!(
            "wrote {}",
            if to_stdout {
                "stdout".into()
            } else {
                path_display(&a.out)
            }
        );
    }
    Ok(())
}
