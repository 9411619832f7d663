//! Model directories (HF layout: `config.json`, `model.safetensors`, optional `tokenizer.json`)
//! and MaPLe prompt files, memory-mapped and handed to the core.

use crate::Error;
use maple_core::checkpoint::openai::OpenAiNames;
use maple_core::checkpoint::{is_zip, TorchCheckpoint};
use maple_core::{Clip, ClipConfig, MaplePrompts, Model, SafeTensors, TensorSource, TensorView};
use maple_text::ClipTokenizer;
use memmap2::Mmap;
#[cfg(unix)]
use memmap2::UncheckedAdvice;
#[cfg(unix)]
use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::Xxh3;

/// A file's bytes: memory-mapped (weights are never copied whole), or read if tiny.
pub enum Bytes {
    /// Mapped read-only.
    Mapped(Mmap),
    /// Read (files under 4 KiB).
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

/// Maps `path` read-only (reads it when tiny).
pub fn map_file(path: &Path) -> Result<Bytes, Error> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len < 4096 {
        return std::fs::read(path)
            .map(Bytes::Owned)
            .map_err(|e| Error::io(path, e));
    }
    // SAFETY: the map is read-only; a file truncated underneath us is the caller's problem
    // exactly as with any mmap-based loader (safetensors, candle, llama.cpp).
    unsafe { Mmap::map(&f) }
        .map(Bytes::Mapped)
        .map_err(|e| Error::io(path, e))
}

/// Parses `DIR/config.json` (Hugging Face CLIPModel config).
pub fn read_config(dir: &Path) -> Result<ClipConfig, Error> {
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    ClipConfig::from_hf_json(&text).map_err(|e| Error::core(&p, e))
}

/// Checks that `dir` exists and is a directory, with an error that says what `--model` takes.
pub fn check_model_dir(dir: &Path) -> Result<(), Error> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::Model(format!(
            "{}: not a directory (--model takes a directory with config.json and model.safetensors)",
            dir.display()
        ))),
        Err(e) => Err(Error::Model(format!(
            "cannot open model directory {}: {}",
            dir.display(),
            Error::io(dir, e)
                .to_string()
                .rsplit(": ")
                .next()
                .unwrap_or("error")
        ))),
    }
}

/// Runs `f` on the tensors of a safetensors file or a `torch.save` archive (detected by content).
/// With `hf_names`, OpenAI-named CLIP weights are presented under HF names. Every tensor goes
/// through a `Tap`, which drops a mapped file's pages once the core has copied them.
pub fn with_tensors<T>(
    path: &Path,
    hf_names: bool,
    f: impl FnOnce(&dyn TensorSource) -> maple_core::Result<T>,
) -> Result<T, Error> {
    let bytes = map_file(path)?;
    let err = |e| Error::core(path, e);
    let run = |src: &dyn TensorSource| {
        let tap = Tap {
            inner: src,
            map: match &bytes {
                Bytes::Mapped(m) => Some(m),
                Bytes::Owned(_) => None,
            },
        };
        match OpenAiNames::detect(&tap).filter(|_| hf_names) {
            Some(o) => f(&o),
            None => f(&tap),
        }
    };
    if is_zip(&bytes) {
        let ck = TorchCheckpoint::parse(&bytes).map_err(err)?;
        run(&ck).map_err(err)
    } else {
        let st = SafeTensors::parse(&bytes).map_err(err)?;
        run(&st).map_err(err)
    }
}

/// A 128-bit fingerprint (XXH3) of the name, dtype, shape and bytes of every tensor of `src`
/// whose name `select` picks, in file order; each is released after hashing.
pub fn fingerprint(src: &dyn TensorSource, select: impl Fn(&str) -> bool) -> u128 {
    let mut h = Xxh3::new();
    for name in src.names() {
        if !select(name) {
            continue;
        }
        let Some(view) = src.tensor(name) else {
            continue;
        };
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(view.dtype.name().as_bytes());
        h.update(&(view.shape.len() as u64).to_le_bytes());
        for &d in &view.shape {
            h.update(&(d as u64).to_le_bytes());
        }
        h.update(&(view.data.len() as u64).to_le_bytes());
        h.update(&view.data);
        src.release(name, &view);
    }
    h.digest128()
}

/// Sits between a file's tensors and the core's loader: drops each tensor's pages of a mapped
/// file from this process once the core has copied it into its own layout, so loading never
/// holds the file and the packed model at once (peak RSS ≈ the model, not model + file).
struct Tap<'a> {
    inner: &'a dyn TensorSource,
    map: Option<&'a Mmap>,
}

impl TensorSource for Tap<'_> {
    fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        self.inner.tensor(name)
    }

    fn names(&self) -> Vec<&str> {
        self.inner.names()
    }

    #[cfg_attr(not(unix), allow(unused_variables))]
    fn release(&self, _name: &str, view: &TensorView<'_>) {
        #[cfg(unix)]
        if let (Some(map), Cow::Borrowed(data)) = (self.map, &view.data) {
            let base = map.as_ptr() as usize;
            let start = data.as_ptr() as usize;
            if start >= base && start + data.len() <= base + map.len() {
                // SAFETY: the map is private and read-only: MADV_DONTNEED only drops pages, which
                // the kernel reads back from the file if anything touches them again (same
                // bytes). Failure only means the pages stay resident.
                let _ = unsafe {
                    map.unchecked_advise_range(UncheckedAdvice::DontNeed, start - base, data.len())
                };
            }
        }
    }
}

/// `model.safetensors`, else `pytorch_model.bin`, in a model directory.
pub fn weights_file(dir: &Path) -> Result<PathBuf, Error> {
    for name in ["model.safetensors", "pytorch_model.bin"] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::Model(format!(
        "{}: no model.safetensors or pytorch_model.bin in the model directory",
        dir.display()
    )))
}

/// Loads CLIP from a model directory and, if given, MaPLe prompts (safetensors or a MaPLe
/// `.pth.tar` checkpoint).
pub fn load_model(dir: &Path, prompts: Option<&Path>) -> Result<Model, Error> {
    load_model_fingerprinted(dir, prompts, true).map(|(m, _)| m)
}

fn text_side(name: &str) -> bool {
    name.starts_with("text_model.") || name.starts_with("text_projection.")
}

/// [`load_model`] (with or without the text tower), plus a fingerprint of everything the text
/// features depend on in the files: config.json, the text tower and text projection tensors
/// (hashed whether loaded or not), and the whole prompts file.
pub fn load_model_fingerprinted(
    dir: &Path,
    prompts: Option<&Path>,
    text: bool,
) -> Result<(Model, u128), Error> {
    check_model_dir(dir)?;
    let config = read_config(dir)?;
    let wp = weights_file(dir)?;
    let (clip, weights_fp) = with_tensors(&wp, true, |src| {
        let fp = fingerprint(src, text_side);
        Clip::load_parts(&config, src, text).map(|c| (c, fp))
    })?;
    let mut h = Xxh3::new();
    let cj = dir.join("config.json");
    h.update(&std::fs::read(&cj).map_err(|e| Error::io(&cj, e))?);
    h.update(&weights_fp.to_le_bytes());
    let prompts = match prompts {
        Some(p) => {
            let (pr, fp) = with_tensors(p, false, |src| {
                let fp = fingerprint(src, |_| true);
                MaplePrompts::load(&config, src).map(|pr| (pr, fp))
            })?;
            h.update(&fp.to_le_bytes());
            Some(pr)
        }
        None => {
            h.update(b"zero-shot");
            None
        }
    };
    Ok((Model::new(clip, prompts), h.digest128()))
}

/// Adds the text tower to a model loaded without it.
pub fn load_text_tower(dir: &Path, model: &mut Model) -> Result<(), Error> {
    if model.clip.has_text() {
        return Ok(());
    }
    let wp = weights_file(dir)?;
    with_tensors(&wp, true, |src| model.clip.load_text(src))
}

/// `DIR/tokenizer.json` when the model directory has one, else the built-in CLIP tokenizer.
pub fn load_tokenizer(dir: &Path) -> Result<ClipTokenizer, Error> {
    let p: PathBuf = dir.join("tokenizer.json");
    let tok = if p.is_file() {
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        ClipTokenizer::from_bytes(&bytes, &p.display().to_string())
    } else {
        ClipTokenizer::builtin()
    };
    Ok(tok?)
}
