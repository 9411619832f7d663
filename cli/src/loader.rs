//! Model directories (HF layout: `config.json`, `model.safetensors`, optional `tokenizer.json`)
//! and MaPLe prompt files, memory-mapped and handed to the core.

use crate::tokenizer::ClipTokenizer;
use crate::CliError;
use maple_core::checkpoint::openai::OpenAiNames;
use maple_core::checkpoint::{is_zip, TorchCheckpoint};
use maple_core::{Clip, ClipConfig, MaplePrompts, Model, SafeTensors, TensorSource};
use memmap2::Mmap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// A file's bytes: memory-mapped (weights are never copied whole), or read if tiny.
pub enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

pub fn map_file(path: &Path) -> Result<Bytes, CliError> {
    let f = File::open(path).map_err(|e| CliError::io(path, e))?;
    let len = f.metadata().map_err(|e| CliError::io(path, e))?.len();
    if len < 4096 {
        return std::fs::read(path)
            .map(Bytes::Owned)
            .map_err(|e| CliError::io(path, e));
    }
    // SAFETY: the map is read-only; a file truncated underneath us is the caller's problem
    // exactly as with any mmap-based loader (safetensors, candle, llama.cpp).
    unsafe { Mmap::map(&f) }
        .map(Bytes::Mapped)
        .map_err(|e| CliError::io(path, e))
}

pub fn read_config(dir: &Path) -> Result<ClipConfig, CliError> {
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| CliError::io(&p, e))?;
    ClipConfig::from_hf_json(&text).map_err(|e| CliError::core(&p, e))
}

pub fn check_model_dir(dir: &Path) -> Result<(), CliError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(CliError(format!(
            "{}: not a directory (--model takes a directory with config.json and model.safetensors)",
            dir.display()
        ))),
        Err(e) => Err(CliError(format!(
            "cannot open model directory {}: {}",
            dir.display(),
            CliError::io(dir, e).0.rsplit(": ").next().unwrap_or("error")
        ))),
    }
}

/// Runs `f` on the tensors of a safetensors file or a `torch.save` archive (detected by content).
/// With `hf_names`, OpenAI-named CLIP weights are presented under HF names.
pub fn with_tensors<T>(
    path: &Path,
    hf_names: bool,
    f: impl FnOnce(&dyn TensorSource) -> maple_core::Result<T>,
) -> Result<T, CliError> {
    let bytes = map_file(path)?;
    let err = |e| CliError::core(path, e);
    let run = |src: &dyn TensorSource| match OpenAiNames::detect(src).filter(|_| hf_names) {
        Some(o) => f(&o),
        None => f(src),
    };
    if is_zip(&bytes) {
        let ck = TorchCheckpoint::parse(&bytes).map_err(err)?;
        run(&ck).map_err(err)
    } else {
        let st = SafeTensors::parse(&bytes).map_err(err)?;
        run(&st).map_err(err)
    }
}

/// `model.safetensors`, else `pytorch_model.bin`, in a model directory.
pub fn weights_file(dir: &Path) -> Result<PathBuf, CliError> {
    for name in ["model.safetensors", "pytorch_model.bin"] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(CliError(format!(
        "{}: no model.safetensors or pytorch_model.bin in the model directory",
        dir.display()
    )))
}

/// Loads CLIP from a model directory and, if given, MaPLe prompts (safetensors or a MaPLe
/// `.pth.tar` checkpoint).
pub fn load_model(dir: &Path, prompts: Option<&Path>) -> Result<Model, CliError> {
    check_model_dir(dir)?;
    let config = read_config(dir)?;
    let wp = weights_file(dir)?;
    let clip = with_tensors(&wp, true, |src| Clip::load(&config, src))?;
    let prompts = match prompts {
        Some(p) => Some(load_prompts(&config, p)?),
        None => None,
    };
    Ok(Model::new(clip, prompts))
}

pub fn load_prompts(config: &ClipConfig, path: &Path) -> Result<MaplePrompts, CliError> {
    with_tensors(path, false, |src| MaplePrompts::load(config, src))
}

/// `DIR/tokenizer.json` when the model directory has one, else the built-in CLIP tokenizer.
pub fn load_tokenizer(dir: &Path) -> Result<ClipTokenizer, CliError> {
    let p: PathBuf = dir.join("tokenizer.json");
    if p.is_file() {
        ClipTokenizer::from_file(&p)
    } else {
        ClipTokenizer::builtin()
    }
}
