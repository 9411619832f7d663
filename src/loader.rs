//! Model directories (HF layout: `config.json`, `model.safetensors`, optional `tokenizer.json`)
//! and MaPLe prompt files, memory-mapped and handed to the core.

use crate::error::path_display;
use crate::Error;
use maple_core::checkpoint::openai::OpenAiNames;
use maple_core::checkpoint::{is_zip, TorchCheckpoint};
use maple_core::clip::PanelSource;
use maple_core::{Clip, ClipConfig, Model, Prompts, SafeTensors, TensorSource, TensorView};
use maple_text::ClipTokenizer;
use memmap2::Mmap;
#[cfg(unix)]
use memmap2::UncheckedAdvice;
#[cfg(unix)]
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
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

/// The largest MaPLe prompts file read: MaPLe's own checkpoints are 3–15 MB.
pub const MAX_PROMPTS_BYTES: u64 = 1 << 30;

/// The largest weights file read (ViT-B/16 in f32 is 0.6 GB).
pub const MAX_WEIGHTS_BYTES: u64 = 16 << 30;

/// The most read from a pipe or device given as a weights or prompts file (it is held in
/// memory, unlike a mapped file).
pub const MAX_STREAM_BYTES: u64 = 1 << 30;

/// Maps `path` read-only (reads it when tiny), refusing files over [`MAX_WEIGHTS_BYTES`].
pub fn map_file(path: &Path) -> Result<Bytes, Error> {
    map_file_at_most(path, MAX_WEIGHTS_BYTES)
}

/// Maps `path` read-only, refusing a file over `limit` bytes. A directory is an error that
/// names the checkpoint files inside it, if any; pipes and devices are read as streams, up to
/// `limit`.
pub fn map_file_at_most(path: &Path, limit: u64) -> Result<Bytes, Error> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    map_open_file_at_most(f, path, limit)
}

/// [`map_file_at_most`] for a file already open (`path` names it in errors).
pub(crate) fn map_open_file_at_most(f: File, path: &Path, limit: u64) -> Result<Bytes, Error> {
    let meta = f.metadata().map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: is a directory, not a safetensors or PyTorch file{}",
            path_display(path),
            checkpoint_hint(path)
        )));
    }
    let too_big = |what: String, limit: u64| {
        Error::Invalid(format!(
            "{}: {what}, larger than the {} this kind of file may be",
            path_display(path),
            size(limit)
        ))
    };
    if !meta.is_file() {
        // A pipe or a device: its length is unknown until read.
        let limit = limit.min(MAX_STREAM_BYTES);
        return match read_at_most(&f, limit).map_err(|e| Error::io(path, e))? {
            Some(bytes) => Ok(Bytes::Owned(bytes)),
            None => Err(too_big(format!("a stream of over {}", size(limit)), limit)),
        };
    }
    let len = meta.len();
    if len > limit {
        return Err(too_big(size(len), limit));
    }
    if len < 4096 {
        // Read from the open file, not the name again (which may since point elsewhere).
        return match read_at_most(&f, limit).map_err(|e| Error::io(path, e))? {
            Some(bytes) => Ok(Bytes::Owned(bytes)),
            None => Err(too_big(format!("over {}", size(limit)), limit)),
        };
    }
    // SAFETY: the map is read-only. A file truncated underneath us raises SIGBUS on the next
    // access past its new end, as with any mmap-based loader (safetensors, candle,
    // llama.cpp); the binaries turn that signal into a one-line error that removes their
    // temporary files (cli/src/signals.rs).
    unsafe { Mmap::map(&f) }
        .map(Bytes::Mapped)
        .map_err(|e| Error::io(path, e))
}

/// Reads `f` to its end if that is at most `limit` bytes; `None` if it holds more (only
/// `limit + 1` bytes are ever read, so an endless device costs `limit`).
pub(crate) fn read_at_most(f: &File, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    // A regular file says its length: one allocation of the right size.
    let hint = f.metadata().map_or(0, |m| m.len().min(limit));
    let mut bytes = Vec::with_capacity(hint as usize);
    f.take(limit + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

fn size(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n => format!("{n} bytes"),
    }
}

/// For a directory given where a file was wanted: the checkpoint a person most likely meant
/// (MaPLe's runs keep `MultiModalPromptLearner/model.pth.tar-N`), as "; pass …".
fn checkpoint_hint(dir: &Path) -> String {
    let mut found: Vec<PathBuf> = Vec::new();
    for d in [dir.to_path_buf(), dir.join("MultiModalPromptLearner")] {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let wanted = n.starts_with("model.pth.tar")
                || n.starts_with("model-best.pth.tar")
                || n.ends_with(".safetensors")
                || n.ends_with(".bin");
            if wanted && e.path().is_file() {
                found.push(e.path());
            }
        }
    }
    // The last epoch's checkpoint first (model.pth.tar-5 before model.pth.tar-2).
    let epoch = |p: &PathBuf| {
        p.to_string_lossy()
            .rsplit('-')
            .next()
            .and_then(|e| e.parse::<u64>().ok())
    };
    found.sort_by(|a, b| epoch(b).cmp(&epoch(a)).then(a.cmp(b)));
    match found.first() {
        Some(p) => format!("; pass the file inside it, e.g. {}", path_display(p)),
        None => String::new(),
    }
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
    with_tensors_at_most(path, MAX_WEIGHTS_BYTES, hf_names, f)
}

/// [`with_tensors`] on a file of at most `limit` bytes.
pub fn with_tensors_at_most<T>(
    path: &Path,
    limit: u64,
    hf_names: bool,
    f: impl FnOnce(&dyn TensorSource) -> maple_core::Result<T>,
) -> Result<T, Error> {
    with_tensors_used(path, limit, hf_names, f).map(|(t, _)| t)
}

/// What a file holds and what a loader took from it: every tensor name (HF names when
/// adapted), and the names asked for.
struct Usage {
    names: Vec<String>,
    asked: HashSet<String>,
}

/// [`with_tensors_at_most`], also saying which of the file's tensors `f` asked for.
fn with_tensors_used<T>(
    path: &Path,
    limit: u64,
    hf_names: bool,
    f: impl FnOnce(&dyn TensorSource) -> maple_core::Result<T>,
) -> Result<(T, Usage), Error> {
    let bytes = map_file_at_most(path, limit)?;
    let err = |e| Error::core(path, e);
    let run = |src: &dyn TensorSource| {
        let tap = Tap {
            inner: src,
            map: match &bytes {
                Bytes::Mapped(m) => Some(m),
                Bytes::Owned(_) => None,
            },
        };
        let adapted = OpenAiNames::detect(&tap).filter(|_| hf_names);
        let asked = Asked {
            inner: match &adapted {
                Some(o) => o,
                None => &tap,
            },
            names: RefCell::new(HashSet::new()),
        };
        let t = f(&asked)?;
        let names = asked
            .inner
            .names()
            .into_iter()
            .map(str::to_string)
            .collect();
        Ok((
            t,
            Usage {
                names,
                asked: asked.names.into_inner(),
            },
        ))
    };
    if is_zip(&bytes) {
        let ck = TorchCheckpoint::parse(&bytes).map_err(err)?;
        run(&ck).map_err(err)
    } else {
        let st = SafeTensors::parse(&bytes).map_err(err)?;
        run(&st).map_err(err)
    }
}

/// Tensors of a CLIP weights file that the model `config` describes does not use: names the
/// core never asked for, and layers past the config's layer count (asked for by the text
/// fingerprint even when the text tower is not loaded); HF's `position_ids` buffers are
/// expected and ignored.
fn unused_weights(config: &ClipConfig, usage: &Usage) -> Vec<String> {
    let past_last_layer = |n: &str| {
        let (rest, layers) = if let Some(r) = n.strip_prefix("vision_model.encoder.layers.") {
            (r, config.vision.tower.num_hidden_layers)
        } else if let Some(r) = n.strip_prefix("text_model.encoder.layers.") {
            (r, config.text.tower.num_hidden_layers)
        } else {
            return false;
        };
        rest.split('.')
            .next()
            .and_then(|i| i.parse::<usize>().ok())
            .is_some_and(|i| i >= layers)
    };
    let mut out: Vec<String> = usage
        .names
        .iter()
        .filter(|n| !usage.asked.contains(*n) || past_last_layer(n))
        .filter(|n| !n.ends_with("position_ids"))
        .cloned()
        .collect();
    out.sort();
    out
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
    #[cfg_attr(not(unix), allow(dead_code))] // pages are dropped with madvise, a unix call
    map: Option<&'a Mmap>,
}

/// Notes the names of the tensors asked for (to find the ones a model leaves unused).
struct Asked<'a> {
    inner: &'a dyn TensorSource,
    names: RefCell<HashSet<String>>,
}

impl TensorSource for Asked<'_> {
    fn metadata(&self, key: &str) -> Option<&str> {
        self.inner.metadata(key)
    }

    fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        if !self.names.borrow().contains(name) {
            self.names.borrow_mut().insert(name.to_string());
        }
        self.inner.tensor(name)
    }

    fn names(&self) -> Vec<&str> {
        self.inner.names()
    }

    fn release(&self, name: &str, view: &TensorView<'_>) {
        self.inner.release(name, view)
    }
}

impl TensorSource for Tap<'_> {
    fn metadata(&self, key: &str) -> Option<&str> {
        self.inner.metadata(key)
    }

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
    load_model_packed(dir, prompts, text, None, None).map(|l| (l.model, l.fingerprint))
}

/// [`load_model_fingerprinted`], taking the Linear weights `packed` has (a packed-weight cache,
/// [`crate::packcache`]) instead of packing them from the checkpoint. With `weights_id` (the
/// packed-weight cache's key: the weights file's path, size, times and inode), the fingerprint
/// uses it in place of hashing the text tower's bytes, which a warm run then never reads.
pub fn load_model_packed(
    dir: &Path,
    prompts: Option<&Path>,
    text: bool,
    packed: Option<&dyn PanelSource>,
    weights_id: Option<u128>,
) -> Result<Loaded, Error> {
    check_model_dir(dir)?;
    let config = read_config(dir)?;
    let wp = weights_file(dir)?;
    let ((clip, weights_fp), usage) = with_tensors_used(&wp, MAX_WEIGHTS_BYTES, true, |src| {
        let fp = match weights_id {
            Some(id) => {
                // Not hashed, but looked up (the unused-tensor check counts what was asked for).
                for name in src.names().into_iter().filter(|n| text_side(n)) {
                    if let Some(v) = src.tensor(name) {
                        src.release(name, &v);
                    }
                }
                id
            }
            None => fingerprint(src, text_side),
        };
        Clip::load_packed(&config, src, text, packed).map(|c| (c, fp))
    })?;
    let unused = unused_weights(&config, &usage);
    if let Some(first) = unused.first() {
        return Err(Error::Model(format!(
            "{}: {} tensor{} not used by the model {} describes ({first}{}): the config and \
             the weights do not match",
            path_display(&wp),
            unused.len(),
            if unused.len() == 1 { " is" } else { "s are" },
            path_display(&dir.join("config.json")),
            if unused.len() > 1 { ", …" } else { "" }
        )));
    }
    let mut h = Xxh3::new();
    let cj = dir.join("config.json");
    h.update(&std::fs::read(&cj).map_err(|e| Error::io(&cj, e))?);
    h.update(&weights_fp.to_le_bytes());
    let (prompts, template) = match prompts {
        Some(p) => {
            let (pr, fp, template) = with_tensors_at_most(p, MAX_PROMPTS_BYTES, false, |src| {
                let fp = fingerprint(src, |_| true);
                let template = src.metadata("template").map(str::to_string);
                Prompts::load(&config, src).map(|pr| (pr, fp, template))
            })?;
            h.update(&fp.to_le_bytes());
            (Some(pr), template)
        }
        None => {
            h.update(b"zero-shot");
            (None, None)
        }
    };
    Ok(Loaded {
        model: Model::new(clip, prompts),
        fingerprint: h.digest128(),
        template,
    })
}

/// What [`load_model_packed`] gives.
pub struct Loaded {
    /// CLIP and, if given, the prompts.
    pub model: Model,
    /// Everything the text features depend on (see [`load_model_fingerprinted`]).
    pub fingerprint: u128,
    /// The template the prompts file was trained with (its `template` metadata, which
    /// `maple-train` writes), if it says.
    pub template: Option<String>,
}

/// Adds the text tower to a model loaded without it.
pub fn load_text_tower(dir: &Path, model: &mut Model) -> Result<(), Error> {
    load_text_tower_packed(dir, model, None)
}

/// [`load_text_tower`], taking the Linear weights `packed` has.
pub fn load_text_tower_packed(
    dir: &Path,
    model: &mut Model,
    packed: Option<&dyn PanelSource>,
) -> Result<(), Error> {
    if model.clip.has_text() {
        return Ok(());
    }
    let wp = weights_file(dir)?;
    with_tensors(&wp, true, |src| model.clip.load_text_packed(src, packed))
}

/// `DIR/tokenizer.json` when the model directory has one, else the built-in CLIP tokenizer.
pub fn load_tokenizer(dir: &Path) -> Result<ClipTokenizer, Error> {
    tokenizer_source(dir)?.load()
}

/// A tokenizer not built yet (building CLIP's BPE tables takes about 0.1 s): its
/// `tokenizer.json` bytes and where they came from.
pub struct TokenizerSource {
    bytes: std::borrow::Cow<'static, [u8]>,
    path: Option<PathBuf>,
    /// XXH3-128 of `bytes`, computed once.
    id: u128,
}

impl TokenizerSource {
    /// An XXH3-128 of the `tokenizer.json` bytes: what the text-feature cache key names.
    pub fn id(&self) -> u128 {
        self.id
    }

    /// Builds the tokenizer.
    pub fn load(&self) -> Result<ClipTokenizer, Error> {
        Ok(match &self.path {
            Some(p) => ClipTokenizer::from_bytes(&self.bytes, &p.display().to_string()),
            None => ClipTokenizer::builtin(),
        }?)
    }
}

/// `DIR/tokenizer.json`'s bytes when the model directory has one, else the built-in ones.
pub fn tokenizer_source(dir: &Path) -> Result<TokenizerSource, Error> {
    let p: PathBuf = dir.join("tokenizer.json");
    if p.is_file() {
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        return Ok(TokenizerSource {
            id: xxhash_rust::xxh3::xxh3_128(&bytes),
            bytes: bytes.into(),
            path: Some(p),
        });
    }
    let bytes = maple_text::tokenizer::BUILTIN_TOKENIZER_JSON;
    Ok(TokenizerSource {
        id: xxhash_rust::xxh3::xxh3_128(bytes),
        bytes: bytes.into(),
        path: None,
    })
}

/// The first tensor of a weights or prompts file holding a NaN or an infinity, as
/// `"FILE: tensor NAME holds NaN or infinite values"`; `None` if every float tensor is finite
/// (or the file cannot be read). Only called to explain non-finite outputs.
pub fn find_non_finite(path: &Path) -> Option<String> {
    let name = with_tensors(path, false, |src| {
        for name in src.names() {
            let Some(v) = src.tensor(name) else {
                continue;
            };
            // Float tensors only (to_f32 refuses the rest).
            let bad = v
                .to_f32(name)
                .is_ok_and(|x| x.iter().any(|x| !x.is_finite()));
            src.release(name, &v);
            if bad {
                return Ok(Some(name.to_string()));
            }
        }
        Ok(None)
    })
    .ok()??;
    Some(format!(
        "{}: tensor {name} holds NaN or infinite values",
        path_display(path)
    ))
}
