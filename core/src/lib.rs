//! maple-core: CLIP ViT-B/16 with MaPLe's multi-modal prompts, as plain `no_std` + `alloc` Rust.
//!
//! No I/O, no required threads, no panics on bad data: every loader returns [`Error`].
//! Reading order, top to bottom: [`config`] → [`safetensors`] → [`clip`] (weights) →
//! [`prompts`] (one file per method) → [`model`] (forward passes over allocate-once workspaces), with the
//! kernels in [`gemm`] and [`ops`], and [`preprocess`] for pixels.
#![no_std]
// The browser package's threaded build (nightly, atomics) parks idle Web Workers with
// `memory.atomic.wait32`, whose intrinsic is not stable yet.
#![cfg_attr(
    all(target_arch = "wasm32", target_feature = "atomics"),
    feature(stdarch_wasm_atomic_wait)
)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod bf16;
mod buf;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod error;
pub mod gemm;
mod lowp;
pub mod model;
pub mod ops;
pub mod par;
pub mod preprocess;
pub mod prompts;
pub mod q8;
pub mod safetensors;
pub mod simd;
pub mod synth;
pub mod train;

pub use clip::Clip;
pub use config::ClipConfig;
pub use error::{Error, Result};
pub use model::{Model, TextFeatures, TextWorkspace, TokenRow, VisionWorkspace};
pub use par::Parallel;
pub use prompts::{maple, MaplePrompts, MetaNet, Method, Prompts, TowerPrompts};
pub use safetensors::{
    Dtype, FetchedTensors, SafeTensors, SafeTensorsIndex, TensorSource, TensorView,
};
