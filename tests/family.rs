//! CoOp, CoCoOp, IVLP and VPT checkpoints against the PyTorch reference
//! (tools/reference/family.py: HF CLIPModel + each method's splice, fp32): the trainers' own
//! Dassl files (`model.pth.tar-N`, frozen CLIP copy and token buffers included) and their
//! safetensors forms, recognised from the keys alone, on the tiny model; and the safetensors
//! forms on the full-size synthetic ViT-B/16.

mod common;
use common::*;
use maple::{top_k, Classifier, Device, ImageSource};
use serde_json::Value;
use std::path::{Path, PathBuf};

const TOL: f32 = 1e-3;
const METHODS: [&str; 4] = ["coop", "cocoop", "ivlp", "vpt"];

/// Classifies the golden images with `prompts` and returns the largest |Δlogit| against
/// `golden[method]`. No template is given: the method's default must be the reference's.
fn check(dir: &Path, prompts: &Path, golden: &Value, method: &str, batch: usize) -> f32 {
    let mut c = Classifier::builder(dir)
        .label_set(maple::read_labels(fixtures().join("labels.txt")).unwrap())
        .prompts(prompts)
        .device(Device::Cpu)
        .batch_size(batch)
        .cache_dir(None)
        .build()
        .unwrap_or_else(|e| panic!("{}: {e}", prompts.display()));
    let images: Vec<String> = golden["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let paths: Vec<PathBuf> = images
        .iter()
        .map(|n| fixtures().join("images").join(n))
        .collect();
    let sources: Vec<ImageSource> = paths.iter().map(|p| ImageSource::Path(p)).collect();
    let results = c.classify_batch(&sources).unwrap();
    let want = &golden[method]["logits"];
    let mut max_diff = 0.0f32;
    for (i, r) in results.into_iter().enumerate() {
        let r = r.unwrap();
        let w: Vec<f32> = want[i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(r.logits.len(), w.len());
        let d = r
            .logits
            .iter()
            .zip(&w)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        max_diff = max_diff.max(d);
        assert!(d <= TOL, "{method} {}: max |Δlogit| = {d}", images[i]);
        // Top-5 as the reference orders it, wherever its logits are further apart than the
        // tolerance allows to swap.
        for (a, b) in top_k(&r.logits, 5).into_iter().zip(top_k(&w, 5)) {
            assert!(
                a == b || (w[a] - w[b]).abs() <= 2.0 * TOL,
                "{method} {}: top-5 {a} vs {b}",
                images[i]
            );
        }
    }
    eprintln!(
        "{method} ({}): max |Δlogit| {max_diff:.2e} over {} images",
        prompts.file_name().unwrap().to_string_lossy(),
        images.len()
    );
    max_diff
}

#[test]
fn tiny_family_dassl_checkpoints_match_pytorch() {
    let g = golden("golden_family_tiny.json");
    assert_eq!(
        sha256(&tiny_dir().join("model.safetensors")),
        g["model_sha256"]
    );
    for m in METHODS {
        let ckpt = root().join(g[m]["checkpoint"].as_str().unwrap());
        // Batches of 5: CoCoOp's per-image contexts cross batch boundaries unevenly.
        check(&tiny_dir(), &ckpt, &g, m, 5);
    }
}

#[test]
fn tiny_family_safetensors_match_pytorch() {
    let g = golden("golden_family_tiny.json");
    for m in METHODS {
        let st = fixtures().join(format!("family/{m}.safetensors"));
        assert_eq!(sha256(&st), g[m]["prompts_sha256"], "{m}");
        check(&tiny_dir(), &st, &g, m, 8);
    }
}

#[test]
fn tiny_family_methods_are_recognised_from_keys() {
    let g = golden("golden_family_tiny.json");
    let want = [
        ("coop", "CoOp"),
        ("cocoop", "CoCoOp"),
        ("ivlp", "IVLP"),
        ("vpt", "VPT"),
    ];
    for (m, name) in want {
        let ckpt = root().join(g[m]["checkpoint"].as_str().unwrap());
        let model = maple::loader::load_model(&tiny_dir(), Some(&ckpt)).unwrap();
        let p = model.prompts.as_ref().unwrap();
        assert_eq!(p.method.to_string(), name, "{}", ckpt.display());
    }
    let model = maple::loader::load_model(
        &tiny_dir(),
        Some(&tiny_dir().join("maple_prompts.safetensors")),
    )
    .unwrap();
    assert_eq!(model.prompts.unwrap().method.to_string(), "MaPLe");
}

#[test]
fn full_size_family_matches_pytorch() {
    let dir = full_dir();
    let g = golden("golden_family_full.json");
    assert_eq!(sha256(&dir.join("model.safetensors")), g["model_sha256"]);
    for m in METHODS {
        let st = fixtures().join(format!("family_full/{m}.safetensors"));
        assert_eq!(sha256(&st), g[m]["prompts_sha256"], "{m}");
        check(&dir, &st, &g, m, 8);
    }
}
