//! maple-eval: accuracy of a model and its prompts on an ImageFolder, or on a Dassl/CoOp split
//! file with the base-to-novel protocol of MaPLe's papers (base, novel, harmonic mean).

#[path = "../devargs.rs"]
mod devargs;
#[path = "../signals.rs"]
mod signals;

use clap::{Parser, ValueEnum};
use devargs::{DeviceArg, PrecisionArg};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use maple::eval::{evaluate, harmonic_mean, split_parts, Accuracy, EvalSet, Protocol, Subsample};
use maple::{path_display, Classifier};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum SubsampleArg {
    /// Base classes, then novel classes, then their harmonic mean (the papers' table).
    BaseToNew,
    /// Every class at once.
    All,
    /// The first half of the sorted training labels only.
    Base,
    /// The second half only.
    New,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ListArg {
    Test,
    Val,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

#[derive(Parser)]
#[command(
    name = "maple-eval",
    version,
    about = "Accuracy of a model (and its prompts) on labelled images: an ImageFolder \
             (DIR/<class>/<image>), or a Dassl/CoOp split file (split_zhou_*.json) with the \
             base-to-novel protocol MaPLe, CoOp and CoCoOp report: the training list's labels \
             sorted, the first half (rounded up) are base classes and the rest novel, each half \
             classified against its own class names; prints base, novel and their harmonic mean.",
    after_help = "Examples:\n  maple-eval --split oxford_pets/split_zhou_OxfordPets.json --images oxford_pets/images \\\n      --model clip-vit-b16 --prompts MultiModalPromptLearner/model.pth.tar-5\n  maple-eval held_out/ --model clip-vit-b16 --prompts my_prompts.safetensors --format json"
)]
struct Args {
    /// An ImageFolder: one sub-folder of images per class (instead of --split).
    #[arg(required_unless_present = "split", conflicts_with = "split")]
    data_dir: Option<PathBuf>,
    /// A Dassl/CoOp split file: {"train": [[path, label, classname], ...], "val": ..., "test": ...}.
    #[arg(long)]
    split: Option<PathBuf>,
    /// The folder the split's paths are relative to (default: the split file's folder).
    #[arg(long, requires = "split")]
    images: Option<PathBuf>,
    /// Which classes of the split.
    #[arg(long, value_enum, default_value = "base-to-new", requires = "split")]
    subsample: SubsampleArg,
    /// Which list of the split is classified.
    #[arg(long, value_enum, default_value = "test", requires = "split")]
    list: ListArg,
    /// Model directory (config.json + weights) or Hugging Face id.
    #[arg(long)]
    model: PathBuf,
    /// Prompts file (any form maple-classify takes); without it the model runs zero-shot.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Prompt template (default: the prompts file's, else "a photo of a").
    #[arg(long)]
    template: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    #[arg(long, value_enum, default_value = "f32")]
    precision: PrecisionArg,
    /// CPU threads (default: every core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(short, long, value_enum, default_value = "text")]
    format: Format,
    /// No progress bar and no warnings.
    #[arg(short, long)]
    quiet: bool,
}

fn main() -> ExitCode {
    signals::install("maple-eval");
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
    match run(&a) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("maple-eval: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Evaluates every part the arguments name; `Ok(false)` when some images could not be read.
fn run(a: &Args) -> maple::Result<bool> {
    // The parts to evaluate, named as the output names them.
    let parts: Vec<(&str, EvalSet)> = match (&a.split, &a.data_dir) {
        (Some(split), _) => {
            let images = a
                .images
                .clone()
                .unwrap_or_else(|| split.parent().map(|p| p.to_path_buf()).unwrap_or_default());
            let protocol = match a.subsample {
                SubsampleArg::BaseToNew => Protocol::BaseToNew,
                SubsampleArg::All => Protocol::Only(Subsample::All),
                SubsampleArg::Base => Protocol::Only(Subsample::Base),
                SubsampleArg::New => Protocol::Only(Subsample::New),
            };
            let list = match a.list {
                ListArg::Test => "test",
                ListArg::Val => "val",
            };
            split_parts(split, &images, protocol, list)?
        }
        (None, Some(dir)) => vec![("all", EvalSet::image_folder(dir)?)],
        (None, None) => unreachable!("clap requires one"),
    };

    let mut b = Classifier::builder(&a.model)
        .labels(&parts[0].1.classes)
        .device(a.device.into())
        .precision(a.precision.into())
        .threads(a.threads)
        .batch_size(a.batch_size.max(1))
        .cache_dir(maple::default_cache_dir());
    if let Some(p) = &a.prompts {
        b = b.prompts(p);
    }
    if let Some(t) = &a.template {
        b = b.template(t.clone());
    }
    let mut c = b.build()?;

    let total: usize = parts.iter().map(|(_, p)| p.items.len()).sum();
    let bar = if !a.quiet && std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} images  {elapsed_precise}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut results: Vec<(&str, usize, Accuracy)> = Vec::new();
    let mut before = 0;
    for (name, set) in &parts {
        let acc = evaluate(&mut c, set, &mut |done, _| {
            bar.set_position((before + done) as u64)
        })?;
        before += set.items.len();
        results.push((name, set.classes.len(), acc));
    }
    bar.finish_and_clear();
    let mut all_read = true;
    for (_, _, acc) in &results {
        // (Each error names its image.)
        for (_, e) in &acc.unreadable {
            all_read = false;
            eprintln!("maple-eval: skipped: {e}");
        }
    }
    if !a.quiet {
        for w in c.take_warnings() {
            eprintln!("maple-eval: warning: {w}");
        }
    }
    let hm = (results.len() == 2)
        .then(|| harmonic_mean(results[0].2.fraction(), results[1].2.fraction()));
    match a.format {
        Format::Text => {
            for (name, classes, acc) in &results {
                println!(
                    "{:<6} {:>6.2}%  ({}/{} images, {} classes)",
                    format!("{name}:"),
                    100.0 * acc.fraction(),
                    acc.correct,
                    acc.total,
                    classes
                );
            }
            if let Some(hm) = hm {
                println!("{:<6} {:>6.2}%", "HM:", 100.0 * hm);
            }
        }
        Format::Json => {
            let mut o = serde_json::Map::new();
            for (name, classes, acc) in &results {
                o.insert(
                    name.to_string(),
                    serde_json::json!({
                        "accuracy": acc.fraction(),
                        "correct": acc.correct,
                        "images": acc.total,
                        "classes": classes,
                        "unreadable": acc.unreadable.iter().map(|(p, e)| serde_json::json!({"image": path_display(p), "error": e})).collect::<Vec<_>>(),
                    }),
                );
            }
            if let Some(hm) = hm {
                o.insert("hm".into(), hm.into());
            }
            println!("{}", serde_json::Value::Object(o));
        }
    }
    Ok(all_read)
}
