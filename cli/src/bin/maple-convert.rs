//! maple-convert: PyTorch checkpoints (MaPLe `.pth.tar`, HF `pytorch_model.bin`, OpenAI state
//! dicts) or safetensors → safetensors with HF / MaPLe names. Never runs code from the input.

#[path = "../signals.rs"]
mod signals;

use clap::{Parser, ValueEnum};
use maple::convert::{convert, convert_to_bytes, Kind};
use maple::path_display;
use maple_core::Dtype;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
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
    /// Output safetensors file (written atomically; `-`: stdout, when it is not a terminal).
    output: PathBuf,
    /// Store floating-point tensors in this dtype (default: as in the input).
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
}

/// `-` as the output: the bytes go to stdout, never to a terminal.
fn convert_to_stdout(input: &Path, dtype: Option<Dtype>) -> Result<(Kind, usize), String> {
    let out = std::io::stdout();
    if out.is_terminal() {
        return Err("refusing to write a binary safetensors file to a terminal".into());
    }
    let (kind, n, bytes) = convert_to_bytes(input, dtype).map_err(|e| e.to_string())?;
    let mut out = out.lock();
    out.write_all(&bytes)
        .and_then(|_| out.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    Ok((kind, n))
}

fn main() -> ExitCode {
    signals::install("maple-convert");
    // Argument errors exit 1 like every other fatal error (clap's default is 2).
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
    let dtype = a.dtype.map(|d| match d {
        DtypeArg::F32 => Dtype::F32,
        DtypeArg::F16 => Dtype::F16,
    });
    let done = if a.output.as_os_str() == "-" {
        convert_to_stdout(&a.input, dtype)
    } else {
        convert(&a.input, &a.output, dtype).map_err(|e| e.to_string())
    };
    match done {
        Ok((kind, n)) => {
            let what = match kind {
                Kind::Prompts(m) => format!("{m} prompt tensors"),
                Kind::Clip => "CLIP tensors".to_string(),
            };
            let to = if a.output.as_os_str() == "-" {
                "stdout".to_string()
            } else {
                path_display(&a.output)
            };
            eprintln!("wrote {to} ({n} {what})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("maple-convert: {e}");
            ExitCode::FAILURE
        }
    }
}
