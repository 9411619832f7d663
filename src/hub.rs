//! `--model`: a directory, or a Hugging Face hub id found in the standard cache
//! (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`, snapshots layout) and,
//! with the `hub` feature, downloaded into it when not there.

use crate::Error;
use std::path::{Path, PathBuf};

/// The model used when none is named: CLIP ViT-B/16 from OpenAI.
pub const DEFAULT_MODEL: &str = "openai/clip-vit-base-patch16";

/// The hub cache directory, as huggingface_hub computes it.
pub fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("HF_HUB_CACHE")
        .or_else(|| env("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| env("XDG_CACHE_HOME").map(|x| x.join("huggingface/hub")))
        .or_else(|| env("HOME").map(|h| h.join(".cache/huggingface/hub")))
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// `owner/name` with hub-safe characters.
pub fn looks_like_repo_id(s: &str) -> bool {
    let ok = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    matches!(s.split('/').collect::<Vec<_>>().as_slice(), [o, n] if ok(o) && ok(n))
}

fn complete(dir: &Path) -> bool {
    dir.join("config.json").is_file()
        && (dir.join("model.safetensors").is_file() || dir.join("pytorch_model.bin").is_file())
}

/// The snapshot of `repo` in `cache` that `refs/main` names, else the newest complete one.
pub fn find_in_cache(cache: &Path, repo: &str) -> Option<PathBuf> {
    let base = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snaps = base.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(base.join("refs/main")) {
        let d = snaps.join(rev.trim());
        if complete(&d) {
            return Some(d);
        }
    }
    let mut all: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&snaps)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| complete(p))
        .map(|p| {
            (
                std::fs::metadata(&p)
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH),
                p,
            )
        })
        .collect();
    all.sort();
    all.pop().map(|(_, p)| p)
}

/// Resolves `--model` to a directory holding config.json and the weights.
pub fn resolve_model(spec: &str) -> Result<PathBuf, Error> {
    let p = Path::new(spec);
    if p.exists() || !looks_like_repo_id(spec) {
        crate::loader::check_model_dir(p)?;
        return Ok(p.to_path_buf());
    }
    let cache = cache_dir();
    if let Some(c) = &cache {
        if let Some(d) = find_in_cache(c, spec) {
            return Ok(d);
        }
    }
    let looked = match &cache {
        Some(c) => format!(
            "{}",
            c.join(format!("models--{}", spec.replace('/', "--")))
                .join("snapshots")
                .display()
        ),
        None => "no cache directory (HOME, HF_HOME and HF_HUB_CACHE are unset)".to_string(),
    };
    let why = if offline() {
        "HF_HUB_OFFLINE is set".to_string()
    } else {
        match download(spec, cache.as_deref()) {
            Ok(d) => return Ok(d),
            Err(e) => e,
        }
    };
    Err(Error::Model(format!(
        "model `{spec}` is not a directory and is not in the Hugging Face cache (looked in {looked}; {why}); download it with `huggingface-cli download {spec}`, or pass --model DIR with config.json and model.safetensors"
    )))
}

#[cfg(feature = "hub")]
fn download(repo: &str, cache: Option<&Path>) -> Result<PathBuf, String> {
    use hf_hub::api::sync::ApiBuilder;
    let mut b = ApiBuilder::new().with_progress(false);
    if let Some(c) = cache {
        b = b.with_cache_dir(c.to_path_buf());
    }
    let api = b.build().map_err(|e| format!("download failed: {e}"))?;
    let r = api.model(repo.to_string());
    let cfg = r
        .get("config.json")
        .map_err(|e| format!("download failed: {e}"))?;
    r.get("model.safetensors")
        .map_err(|e| format!("download failed: {e}"))?;
    let _ = r.get("tokenizer.json");
    cfg.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "download failed".to_string())
}

#[cfg(not(feature = "hub"))]
fn download(_: &str, _: Option<&Path>) -> Result<PathBuf, String> {
    Err("this build has no hub client (feature `hub` off)".into())
}
