//! maple-classify: classify images with CLIP ViT-B/16 + MaPLe prompts.

use clap::{Parser, ValueEnum};
use maple_cli::classify::{json_line, run, text_block, Options};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Format {
    /// A readable table of the top-k labels with percentages.
    Text,
    /// One JSON object per image per line, every label's logit and probability.
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Device {
    /// Run on the CPU (the only device until the GPU backend lands).
    Cpu,
}

/// Classify images against your own labels with CLIP ViT-B/16 and MaPLe's learned prompts.
///
/// Logits equal those of MaPLe's PyTorch CustomCLIP in eval mode. Without --prompts the model
/// is zero-shot CLIP with the prompt "a photo of a {label}.".
#[derive(Parser)]
#[command(
    name = "maple-classify",
    version,
    after_help = "Examples:\n  \
maple-classify photo.jpg --classes labels.txt --model clip-vit-base-patch16/ --prompts maple_prompts.safetensors\n  \
MAPLE_MODEL=clip-vit-base-patch16/ maple-classify a.jpg b.png --classes labels.txt --format json\n\n\
Labels file: one label per line, UTF-8; blank lines and lines starting with # are skipped;\n\
`_` is read as a space.\n\n\
Exit status: 0 on success, 1 on any error (the error names the file and the problem)."
)]
struct Args {
    /// Image files (JPEG, PNG, WebP, GIF, BMP, TIFF).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// Labels file: one class name per line.
    #[arg(long, short = 'c', value_name = "FILE")]
    classes: PathBuf,
    /// Model directory in Hugging Face layout (config.json, model.safetensors, optional tokenizer.json).
    #[arg(long, short = 'm', env = "MAPLE_MODEL", value_name = "DIR")]
    model: PathBuf,
    /// MaPLe prompts as safetensors (MaPLe's key names, with or without `prompt_learner.`).
    #[arg(long, short = 'p', value_name = "FILE")]
    prompts: Option<PathBuf>,
    /// Prompt template; the label and a period follow it. Its first n_ctx words are learned.
    #[arg(long, default_value = "a photo of a")]
    template: String,
    /// How many labels to show per image (text) or list in "top" (json).
    #[arg(long, short = 'k', default_value_t = 5)]
    top_k: usize,
    #[arg(long, short = 'f', value_enum, default_value = "text")]
    format: Format,
    #[arg(long, value_enum, default_value = "cpu")]
    device: Device,
    /// CPU threads (0 = all cores).
    #[arg(long, short = 'j', default_value_t = 0)]
    threads: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let _ = a.device;
    let opts = Options {
        images: a.images,
        classes: a.classes,
        model: a.model,
        prompts: a.prompts,
        template: a.template,
        threads: a.threads,
        batch: a.batch_size,
    };
    match run(&opts) {
        Ok((labels, results)) => {
            let mut out = String::new();
            for r in &results {
                match a.format {
                    Format::Json => {
                        out.push_str(&json_line(&labels, r, a.top_k));
                        out.push('\n');
                    }
                    Format::Text => out.push_str(&text_block(&labels, r, a.top_k)),
                }
            }
            let mut so = std::io::stdout().lock();
            if so
                .write_all(out.as_bytes())
                .and_then(|_| so.flush())
                .is_err()
            {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("maple-classify: {e}");
            ExitCode::FAILURE
        }
    }
}
