//! # maple
//!
//! MaPLe (multi-modal prompt learning, CVPR 2023) on CLIP ViT-B/16: give it images and your own
//! class names, get the logits MaPLe's PyTorch `CustomCLIP` gives in eval mode (zero-shot CLIP
//! without prompts). It runs on a GPU through wgpu (Vulkan, Metal, DX12) when there is one and
//! on the CPU otherwise.
//!
//! ```
//! # let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
//! # let photo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/photo_320x240.jpg");
//! let mut classifier = maple::Classifier::builder(&dir) // or "openai/clip-vit-base-patch16"
//!     .prompts(dir.join("maple_prompts.safetensors"))
//!     .labels(["cat", "dog", "a red car"])
//!     .build()?;
//! let result = classifier.classify_path(&photo)?;
//! for s in result.top(3) {
//!     println!("{:>6.2}%  {}", 100.0 * s.prob, s.label);
//! }
//! # Ok::<(), maple::Error>(())
//! ```
//!
//! Images go in as files ([`Classifier::classify_path`]), encoded bytes
//! ([`Classifier::classify_bytes`]), RGB or RGBA pixels ([`Classifier::classify_rgb8`],
//! [`Classifier::classify_rgba8`]) or any mix of them in one call
//! ([`Classifier::classify_batch`]). [`Classifier::set_labels`] changes the labels without
//! reloading anything. [`Classifier::device`] says what is running the model, and why.
//!
//! The pieces are public for programs that need them: [`loader`] (model directories, MaPLe
//! checkpoints, safetensors), [`imageio`] (Pillow-exact decoding), [`hub`] (the Hugging Face
//! cache), [`cache`] (the text-feature cache), [`packcache`] (the packed-weight cache), [`convert`] and [`synth`] (writing model files),
//! [`text`] (tokenizer and labels), and the `no_std` engine itself, [`engine`].
#![warn(missing_docs)]

pub mod cache;
mod classify;
pub mod convert;
mod error;
pub mod eval;
pub mod hub;
pub mod imageio;
pub mod loader;
pub mod outfile;
pub mod packcache;
pub mod synth;
pub mod train;

pub use classify::{
    top_k, ActiveDevice, Classification, Classifier, ClassifierBuilder, Device, ImageSource,
    Precision, Preprocessor, Score,
};
pub use error::{path_display, Error, Result};
/// The `no_std` engine: configs, weights, kernels, the forward passes.
pub use maple_core as engine;
/// CLIP's text side: cleaning, tokenizer, label lists, prompt rules.
pub use maple_text as text;
pub use maple_text::{Label, LabelSet};

/// `threads`, but never more than the cores this process may use
/// (`std::thread::available_parallelism`, else 64): more only slow a run down.
pub(crate) fn cap_threads(threads: usize) -> usize {
    match std::thread::available_parallelism() {
        Ok(cores) => threads.min(cores.get()),
        Err(_) => threads.min(64),
    }
}

/// The text-feature cache's usual directory: `MAPLE_CACHE_DIR`, else the platform's cache
/// directory + `maple` (`~/.cache/maple` on Linux). `None` when no home directory is known.
pub fn default_cache_dir() -> Option<std::path::PathBuf> {
    cache::default_dir()
}

/// The largest labels file [`read_labels`] reads (16 MiB: over 100 000 labels).
pub const MAX_LABELS_FILE_BYTES: u64 = 16 << 20;

/// Reads a labels file: UTF-8, one label per line; blank lines and `#` lines are skipped and
/// `_` reads as a space. Errors name the file (and the line). Pipes and devices are read as
/// streams, up to [`MAX_LABELS_FILE_BYTES`].
pub fn read_labels(path: impl AsRef<std::path::Path>) -> Result<LabelSet> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(Error::Text(text::TextError(format!(
            "{}: is a directory, not a labels file",
            path.display()
        ))));
    }
    let bytes = loader::read_at_most(&file, MAX_LABELS_FILE_BYTES)
        .map_err(|e| Error::io(path, e))?
        .ok_or_else(|| {
            Error::Text(text::TextError(format!(
                "{}: larger than {} MiB, not a labels file",
                path.display(),
                MAX_LABELS_FILE_BYTES >> 20
            )))
        })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::Text(text::TextError(format!(
            "{}: not UTF-8 text (byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )))
    })?;
    Ok(LabelSet::parse(&text, &path.display().to_string())?)
}
