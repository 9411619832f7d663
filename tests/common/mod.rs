//! Shared helpers: fixture paths, the full-size synthetic model (regenerated deterministically
//! and checked against the hash the golden file was computed from), golden files.
#![allow(dead_code)]

use maple::synth::ensure_full_model;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

pub fn tiny_dir() -> PathBuf {
    fixtures().join("tiny")
}

pub fn golden(name: &str) -> Value {
    let p = fixtures().join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

pub fn sha256(p: &Path) -> String {
    let bytes = std::fs::read(p).unwrap();
    format!("{:x}", Sha256::digest(&bytes))
}

static FULL: Mutex<()> = Mutex::new(());

/// The full-size ViT-B/16 synthetic model (seed 0, f32, n_ctx 2, depth 9), generated once into
/// `target/synth-full` by the same generator as `maple-synth --size full`, and verified against
/// the SHA-256 recorded in the golden file (so a changed generator cannot pass silently).
pub fn full_dir() -> PathBuf {
    let _g = FULL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = root().join("target/synth-full");
    let g = golden("golden_full.json");
    let want = g["model_sha256"].as_str().unwrap();
    let mp = dir.join("model.safetensors");
    let fresh =
        mp.is_file() && dir.join("maple_prompts.safetensors").is_file() && sha256(&mp) == want;
    if !fresh {
        let _ = std::fs::remove_file(&mp); // stale: regenerate
        ensure_full_model(&dir).unwrap();
        assert_eq!(
            sha256(&mp),
            want,
            "regenerated full-size model differs from the golden's"
        );
    }
    assert_eq!(
        sha256(&dir.join("maple_prompts.safetensors")),
        g["prompts_sha256"].as_str().unwrap()
    );
    dir
}

/// A unique scratch directory under target/.
pub fn scratch(name: &str) -> PathBuf {
    let d = root()
        .join("target/test-scratch")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
