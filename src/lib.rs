//! maple: MaPLe (multi-modal prompt learning) on CLIP ViT-B/16.
//!
//! The engine is [`maple_core`] (`no_std` + `alloc`), re-exported here; everything that reads
//! files (model directories, prompts, images, labels, the tokenizer) is [`cli`].

pub use maple_cli as cli;
pub use maple_core::*;
