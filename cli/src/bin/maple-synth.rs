//! maple-synth: deterministic synthetic CLIP ViT-B/16 (or tiny) weights + MaPLe prompts.

#[path = "../signals.rs"]
mod signals;

use clap::{Parser, ValueEnum};
use maple::synth::{write_model, Size, SynthSpec};
use maple_core::Dtype;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Clone, Copy, ValueEnum)]
enum SizeArg {
    Tiny,
    Full,
}

#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    F32,
    F16,
}

/// Write a synthetic model directory: config.json, model.safetensors (HF CLIPModel names)
/// and maple_prompts.safetensors (MaPLe names). The same seed gives the same bytes everywhere.
#[derive(Parser)]
#[command(name = "maple-synth", version)]
struct Args {
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// `full` = exact ViT-B/16 geometry (≈600 MB in f32); `tiny` = a few MB for fast tests.
    #[arg(long, value_enum, default_value = "full")]
    size: SizeArg,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Storage dtype of the CLIP weights (prompts keep MaPLe's own dtypes).
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
    /// MaPLe N_CTX.
    #[arg(long, default_value_t = 2)]
    n_ctx: usize,
    /// MaPLe PROMPT_DEPTH (9 base-to-novel, 3 cross-dataset).
    #[arg(long, default_value_t = 9)]
    depth: usize,
}

fn main() -> ExitCode {
    signals::install("maple-synth");
    let a = Args::parse();
    let spec = SynthSpec {
        size: match a.size {
            SizeArg::Tiny => Size::Tiny,
            SizeArg::Full => Size::Full,
        },
        seed: a.seed,
        dtype: match a.dtype {
            DtypeArg::F32 => Dtype::F32,
            DtypeArg::F16 => Dtype::F16,
        },
        n_ctx: a.n_ctx,
        depth: a.depth,
    };
    match write_model(&a.out, &spec) {
        Ok(()) => {
            eprintln!("wrote {}", a.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("maple-synth: {e}");
            ExitCode::FAILURE
        }
    }
}
