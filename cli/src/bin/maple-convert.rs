//! maple-convert: PyTorch checkpoints (MaPLe `.pth.tar`, HF `pytorch_model.bin`, OpenAI state
//! dicts) or safetensors → safetensors with HF / MaPLe names. Never runs code from the input.

use clap::{Parser, ValueEnum};
use maple::convert::{convert, Kind};
use maple_core::Dtype;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    F32,
    F16,
}

/// Convert weights to safetensors. A MaPLe checkpoint becomes a prompt file for
/// `maple-classify --prompts` (only the prompt_learner tensors are kept); a CLIP checkpoint becomes
/// `model.safetensors` with Hugging Face names.
#[derive(Parser)]
#[command(
    name = "maple-convert",
    version,
    after_help = "Examples:\n  maple-convert MultiModalPromptLearner/model.pth.tar-5 maple_prompts.safetensors\n  maple-convert clip-vit-base-patch16/pytorch_model.bin model.safetensors --dtype f16"
)]
struct Args {
    /// Input: a torch.save archive (.pth.tar, .bin, .pt) or safetensors.
    input: PathBuf,
    /// Output safetensors file (written atomically).
    output: PathBuf,
    /// Store floating-point tensors in this dtype (default: as in the input).
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let dtype = a.dtype.map(|d| match d {
        DtypeArg::F32 => Dtype::F32,
        DtypeArg::F16 => Dtype::F16,
    });
    match convert(&a.input, &a.output, dtype) {
        Ok((kind, n)) => {
            let what = match kind {
                Kind::MaplePrompts => "MaPLe prompt tensors",
                Kind::Clip => "CLIP tensors",
            };
            eprintln!("wrote {} ({n} {what})", a.output.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("maple-convert: {e}");
            ExitCode::FAILURE
        }
    }
}
