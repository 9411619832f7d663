//! maple-classify: classify images with CLIP ViT-B/16 + MaPLe prompts.

mod devargs;
mod inputs;
mod output;
mod report;
mod signals;

use clap::{Parser, ValueEnum};
use devargs::{DeviceArg, PrecisionArg};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use inputs::{collect, Input};
use maple::hub::DEFAULT_MODEL;
use maple::imageio::load_rgb8;
use maple::outfile::OutputFile;
use maple::{
    path_display, ActiveDevice, Classifier, Device, Error, ImageSource, LabelSet, Precision,
    Preprocessor,
};
use output::{header, record, Format};
use report::{card, finish, start, thumbnail, Entry};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A fatal error, as the one line printed after `maple-classify: `.
struct Fatal(String);

impl From<Error> for Fatal {
    fn from(e: Error) -> Fatal {
        match e {
            Error::Device(m) => Fatal(format!("--device gpu: {m}")),
            e => Fatal(e.to_string()),
        }
    }
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum FormatArg {
    /// A readable table of the top-k labels with percentages.
    Text,
    /// One JSON object per image per line, every label's logit and probability.
    Json,
    /// CSV: image,rank,label,logit,prob,error — top-k rows per image, one row per failure.
    Csv,
}

/// Classify images against your own labels with CLIP ViT-B/16 and MaPLe's learned prompts
/// (or CoOp's, CoCoOp's, IVLP's or VPT's).
///
/// Logits equal those of the method's PyTorch CustomCLIP in eval mode. Without --prompts the
/// model is zero-shot CLIP with the prompt "a photo of a {label}.".
#[derive(Parser)]
#[command(
    name = "maple-classify",
    version,
    after_help = "Examples:\n  \
maple-classify photo.jpg --classes labels.txt --prompts MultiModalPromptLearner/model.pth.tar-5\n  \
maple-classify ~/Pictures --labels \"cat,dog,a red car\" --format csv --output results.csv\n  \
find . -name '*.jpg' | maple-classify - --classes labels.txt --format json\n  \
maple-classify holiday/ --classes labels.txt --report report.html\n\n\
Inputs: files are always tried; directories are walked recursively for .jpg .jpeg .png .webp\n\
.gif .bmp .tif .tiff files, in sorted order; `-` reads one path per line from stdin.\n\n\
Labels file: one label per line, UTF-8; blank lines and lines starting with # are skipped;\n\
`_` is read as a space.\n\n\
Model: a directory (config.json + model.safetensors or pytorch_model.bin), or a Hugging Face\n\
id looked up in the hub cache (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub) and\n\
downloaded there if missing (unless HF_HUB_OFFLINE=1).\n\n\
Exit status:\n  \
0  every image was classified\n  \
1  fatal error (bad model, prompts, labels or arguments); nothing is written\n  \
2  some images failed (each has an error record in the output and a line on stderr)"
)]
struct Args {
    /// Image files or directories; `-` reads paths from stdin.
    #[arg(required = true, value_name = "IMAGE|DIR|-")]
    inputs: Vec<PathBuf>,
    /// Labels file: one class name per line.
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        required_unless_present = "labels",
        conflicts_with = "labels"
    )]
    classes: Option<PathBuf>,
    /// Labels inline, comma-separated: --labels "cat,dog,a red car".
    #[arg(long, short = 'l', value_name = "LIST")]
    labels: Option<String>,
    /// Model directory or Hugging Face id.
    #[arg(long, short = 'm', env = "MAPLE_MODEL", value_name = "DIR|ID", default_value = DEFAULT_MODEL)]
    model: String,
    /// Learned prompts: a MaPLe, CoOp, CoCoOp, IVLP or VPT checkpoint as its trainer wrote it
    /// (model.pth.tar-N), or its maple-convert/maple-train safetensors; the method is read from
    /// the tensor names. CoCoOp's text features depend on each image: they are computed per
    /// batch and never cached.
    #[arg(long, short = 'p', value_name = "FILE")]
    prompts: Option<PathBuf>,
    /// Prompt template; the label and a period follow it. Its first n_ctx words are learned.
    /// [default: the one the prompts file was trained with (maple-train records it), else the
    /// method's trainer's: "a photo of a", or "X X … X" for CoOp's n random context rows]
    #[arg(long)]
    template: Option<String>,
    /// How many labels to show per image (text, csv) or list in "top" (json).
    #[arg(long, short = 'k', default_value_t = 5, value_parser = parse_top_k)]
    top_k: usize,
    #[arg(long, short = 'f', value_enum, default_value = "text")]
    format: FormatArg,
    /// Write results to FILE instead of stdout (`-`: stdout). A regular file is replaced at the
    /// end, atomically, keeping its permissions; a device or FIFO is written into.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// Also write a self-contained HTML page with thumbnails and score bars.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Where to run the model.
    #[arg(long, value_enum, env = "MAPLE_DEVICE", default_value = "auto")]
    device: DeviceArg,
    /// Weights: f32; f16 (GPU storage); int8 or bf16 (CPU image tower).
    #[arg(long, value_enum, default_value = "f32")]
    precision: PrecisionArg,
    /// CPU threads (0 = all cores; more than the cores are not started).
    #[arg(long, short = 'j', default_value_t = 0)]
    threads: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Do not read or write the caches: text features and packed weights (MAPLE_CACHE_DIR, else
    /// ~/.cache/maple)
    #[arg(long)]
    no_cache: bool,
    /// No progress bar and no per-image error lines on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// Where results go: stdout, or a file written through a temporary file.
enum Sink {
    Stdout(std::io::Stdout),
    File(OutputFile),
}

impl Sink {
    /// `-` (or no `--output`) is stdout; a file is opened now, before any work, so a
    /// destination that cannot be written fails first.
    fn open(path: Option<&Path>) -> Result<Sink, Fatal> {
        match path {
            None => Ok(Sink::Stdout(stdout_checked()?)),
            Some(p) if p.as_os_str() == "-" => Ok(Sink::Stdout(stdout_checked()?)),
            Some(p) => Ok(Sink::File(create_output(p)?)),
        }
    }

    fn write(&mut self, s: &str) -> Result<(), Fatal> {
        match self {
            Sink::Stdout(o) => o
                .lock()
                .write_all(s.as_bytes())
                .map_err(|e| Fatal(format!("cannot write to stdout: {e}"))),
            Sink::File(f) => Ok(f.write_bytes(s.as_bytes())?),
        }
    }

    /// Flushes stdout, or renames the file into place.
    fn finish(self) -> Result<(), Fatal> {
        match self {
            Sink::Stdout(mut o) => o
                .flush()
                .map_err(|e| Fatal(format!("cannot write to stdout: {e}"))),
            Sink::File(f) => Ok(f.commit()?),
        }
    }
}

/// Stdout, if it was open when the program started (`maple-classify … >&-` closes it). Rust's
/// runtime puts `/dev/null` in place of a closed stdout before `main`, so every result would
/// vanish and the run still exit 0; [`STDOUT_CLOSED`] is noted earlier than that.
fn stdout_checked() -> Result<std::io::Stdout, Fatal> {
    if STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Fatal(
            "stdout is closed: nowhere to write the results (give --output FILE)".into(),
        ));
    }
    Ok(std::io::stdout())
}

/// An output file (its temporary file is removed if a signal ends the run: [`signals`]).
fn create_output(path: &Path) -> Result<OutputFile, Fatal> {
    Ok(OutputFile::create(path)?)
}

/// Whether file descriptor 1 was closed when the process started.
static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs as a constructor, before Rust's runtime opens `/dev/null` on closed standard streams.
#[cfg(any(target_os = "linux", target_os = "macos"))]
#[used]
#[cfg_attr(target_os = "linux", link_section = ".init_array")]
#[cfg_attr(target_os = "macos", link_section = "__DATA,__mod_init_func")]
static NOTE_CLOSED_STDOUT: extern "C" fn() = {
    extern "C" fn note() {
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        if unsafe { libc::fcntl(1, libc::F_GETFD) } == -1 {
            STDOUT_CLOSED.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    note
};

/// Whether two destinations are one file: the same name, or (for names that exist) the same
/// file through links. Devices and FIFOs are written into, so two names for one are fine.
fn same_destination(a: &Path, b: &Path) -> bool {
    if std::fs::metadata(a).is_ok_and(|m| !m.is_file()) {
        return false;
    }
    if a == b || maple::outfile::same_file(a, b) {
        return true;
    }
    // Names that do not exist yet: the same place once their folders are resolved.
    let place = |p: &Path| {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = std::fs::canonicalize(dir.unwrap_or(Path::new("."))).ok()?;
        Some(dir.join(p.file_name()?))
    };
    matches!((place(a), place(b)), (Some(x), Some(y)) if x == y)
}

/// `--top-k`: at least 1 (0 would print nothing for every image and still exit 0).
fn parse_top_k(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1 (how many labels to show per image)".into()),
        Ok(k) => Ok(k),
        Err(_) => Err(format!("\"{s}\" is not a whole number")),
    }
}

fn main() -> ExitCode {
    signals::install("maple-classify");
    // Argument errors are fatal errors: exit 1, as documented (clap's own default is 2, which
    // here means "some images failed"). Help and version exit 0.
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
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(2),
        Err(e) => {
            eprintln!("maple-classify: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Decodes one input and preprocesses it for the model; with `thumbs`, also a JPEG thumbnail
/// for the report (the decoded image itself is not kept).
fn prepare(
    c: &Preprocessor,
    input: &Input,
    thumbs: bool,
) -> (Result<Vec<f32>, Error>, Option<Vec<u8>>) {
    let p = match input {
        Input::Failed(p, why) => {
            return (
                Err(Error::Image {
                    image: path_display(p),
                    message: why.clone(),
                }),
                None,
            )
        }
        Input::Image(p) => p,
    };
    let img = match load_rgb8(p) {
        Ok(img) => img,
        Err(e) => return (Err(e), None),
    };
    let px = c
        .preprocess(&ImageSource::Rgb8 {
            data: &img.data,
            width: img.width,
            height: img.height,
        })
        .map_err(|e| match e {
            Error::Image { message, .. } => Error::Image {
                image: path_display(p),
                message,
            },
            e => e,
        });
    // Only the thumbnail outlives this call, never the full-size pixels.
    let thumb = if thumbs { thumbnail(img, 240) } else { None };
    (px, thumb)
}

/// Returns the number of images that failed.
fn run(a: Args) -> Result<usize, Fatal> {
    let format = match a.format {
        FormatArg::Text => Format::Text,
        FormatArg::Json => Format::Json,
        FormatArg::Csv => Format::Csv,
    };
    let labels = match (&a.classes, &a.labels) {
        (Some(p), _) => maple::read_labels(p)?,
        (None, Some(l)) => LabelSet::parse_inline(l, "--labels").map_err(Error::from)?,
        (None, None) => {
            return Err(Fatal(
                "give labels with --classes FILE or --labels LIST".into(),
            ))
        }
    };
    if let (Some(o), Some(r)) = (&a.output, &a.report) {
        if o.as_os_str() != "-" && same_destination(o, r) {
            return Err(Fatal(format!(
                "--output and --report are the same file ({}): give each its own",
                path_display(r)
            )));
        }
    }
    // Destinations first: one that cannot be written fails before the model is even loaded.
    let mut sink = Sink::open(a.output.as_deref())?;
    let mut report = match &a.report {
        Some(p) if p.as_os_str() == "-" => {
            return Err(Fatal(
                "--report needs a file name (stdout carries the results)".into(),
            ))
        }
        Some(p) => Some(create_output(p)?),
        None => None,
    };
    let mut stdin = std::io::stdin().lock();
    let inputs = collect(&a.inputs, &mut stdin);
    if inputs.is_empty() {
        return Err(Fatal(format!(
            "no images found in {}",
            a.inputs
                .iter()
                .map(|p| path_display(p))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let device: Device = a.device.into();
    let precision: Precision = a.precision.into();
    if precision == Precision::F16 && device == Device::Cpu {
        return Err(Fatal(
            "--precision f16 is for GPUs (f16 weight storage); the CPU computes in f32".into(),
        ));
    }
    if matches!(precision, Precision::Int8 | Precision::Bf16) && device == Device::Gpu {
        return Err(Fatal(format!(
            "--precision {precision} runs on the CPU (give --device cpu or auto); the GPU has f32 and f16"
        )));
    }
    let cache_dir = if a.no_cache {
        None
    } else {
        maple::default_cache_dir()
    };
    let batch = a.batch_size.clamp(1, inputs.len());
    let mut builder = Classifier::builder(&a.model)
        .label_set(labels)
        .device(device)
        .precision(precision)
        .threads(a.threads)
        .batch_size(batch)
        .cache_dir(cache_dir);
    if let Some(p) = &a.prompts {
        builder = builder.prompts(p);
    }
    if let Some(t) = &a.template {
        builder = builder.template(t.as_str());
    }
    let mut c = builder.build()?;
    if device != Device::Cpu && !a.quiet {
        eprintln!("maple-classify: {}", c.device());
    }
    for w in c.take_warnings() {
        eprintln!("maple-classify: warning: {w}");
    }

    sink.write(&header(format))?;
    if let Some(r) = &mut report {
        let title = format!(
            "maple-classify: {}",
            if a.prompts.is_some() {
                "MaPLe"
            } else {
                "zero-shot CLIP"
            }
        );
        r.write_bytes(start(&title).as_bytes())?;
    }
    let bar = if !a.quiet && inputs.len() > 1 && std::io::stderr().is_terminal() {
        let b =
            ProgressBar::with_draw_target(Some(inputs.len() as u64), ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec}  ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut failed = 0;
    // Images are decoded and preprocessed one batch ahead on another thread while this one runs
    // the model: at most three batches are in memory at once (being prepared, waiting, being
    // classified), whatever the folder's size.
    let pre = c.preprocessor();
    let thumbs_wanted = report.is_some();
    std::thread::scope(|scope| -> Result<(), Fatal> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        scope.spawn(|| {
            for chunk in inputs.chunks(batch) {
                let prepared: (Vec<_>, Vec<_>) = chunk
                    .iter()
                    .map(|i| prepare(&pre, i, thumbs_wanted))
                    .unzip();
                if tx.send(prepared).is_err() {
                    break; // the classifier stopped (a fatal error)
                }
            }
            drop(tx);
        });
        for (chunk, (pixels, thumbs)) in inputs.chunks(batch).zip(rx) {
            let was_gpu = matches!(c.device(), ActiveDevice::Gpu { .. });
            let results = c.classify_preprocessed(pixels)?;
            if was_gpu && !matches!(c.device(), ActiveDevice::Gpu { .. }) {
                bar.suspend(|| eprintln!("maple-classify: {}", c.device()));
            }
            for ((input, r), thumb) in chunk.iter().zip(results).zip(thumbs) {
                let image = path_display(input.path());
                let result = r.map_err(|e| e.to_string());
                if let Err(e) = &result {
                    failed += 1;
                    if !a.quiet {
                        bar.suspend(|| eprintln!("maple-classify: {e}"));
                    }
                }
                sink.write(&record(format, c.labels(), &image, &result, a.top_k))?;
                if let Some(r) = &mut report {
                    let e = Entry {
                        image,
                        result,
                        thumb,
                    };
                    r.write_bytes(card(c.labels(), &e, a.top_k).as_bytes())?;
                }
                bar.inc(1);
            }
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    if let Some(mut r) = report {
        r.write_bytes(finish(inputs.len(), c.labels().len(), failed).as_bytes())?;
        r.commit()?;
    }
    sink.finish()?;
    Ok(failed)
}
