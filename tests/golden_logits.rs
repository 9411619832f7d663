//! maple's logits against the PyTorch reference (HF CLIPModel + MaPLe hooks,
//! tools/reference/golden.py), on the tiny model (committed) and the full-size ViT-B/16
//! synthetic model (regenerated), in MaPLe and zero-shot mode.

mod common;
use common::*;
use maple::{top_k, Classifier, Device, ImageSource};
use serde_json::Value;
use std::path::{Path, PathBuf};

const TOL: f32 = 1e-3;

/// Returns the largest |Δlogit| over every image and label.
fn check(dir: &Path, golden: &Value, mode: &str) -> f32 {
    let prompts = dir.join("maple_prompts.safetensors");
    let mut b = Classifier::builder(dir)
        .label_set(maple::read_labels(fixtures().join("labels.txt")).unwrap())
        .template(golden["template"].as_str().unwrap())
        .device(Device::Cpu);
    if mode == "maple" {
        b = b.prompts(&prompts);
    }
    let mut c = b.build().unwrap();
    let labels: Vec<&str> = golden["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        c.labels()
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>(),
        labels
    );
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
    let results: Vec<_> = c
        .classify_batch(&sources)
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let want = &golden[mode]["logits"];
    let mut max_diff = 0.0f32;
    for (i, r) in results.iter().enumerate() {
        let w: Vec<f32> = want[i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let d = r
            .logits
            .iter()
            .zip(&w)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        max_diff = max_diff.max(d);
        assert!(d <= TOL, "{mode} {}: max |Δlogit| = {d}", images[i]);
        let k = 5.min(w.len());
        let gold_top: Vec<usize> = golden[mode]["top5"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(top_k(&r.logits, k), gold_top, "{mode} {}: top-5", images[i]);
    }
    eprintln!(
        "{} {mode}: max |Δlogit| {max_diff:.2e} over {} images × {} labels",
        dir.file_name().unwrap().to_string_lossy(),
        images.len(),
        labels.len()
    );
    max_diff
}

#[test]
fn tiny_maple_matches_pytorch() {
    check(&tiny_dir(), &golden("golden_tiny.json"), "maple");
}

#[test]
fn tiny_zeroshot_matches_pytorch() {
    check(&tiny_dir(), &golden("golden_tiny.json"), "zeroshot");
}

#[test]
fn full_size_maple_and_zeroshot_match_pytorch() {
    let dir = full_dir();
    let g = golden("golden_full.json");
    check(&dir, &g, "maple");
    check(&dir, &g, "zeroshot");
}

#[test]
fn token_ids_match_the_reference() {
    // The ids the reference fed PyTorch are the ids OpenAI's tokenizer gives for each prompt.
    let g = golden("golden_tiny.json");
    let tok = maple::text::ClipTokenizer::builtin().unwrap();
    for (l, want) in g["labels"]
        .as_array()
        .unwrap()
        .iter()
        .zip(g["token_ids"].as_array().unwrap())
    {
        let name = l.as_str().unwrap().replace('_', " ");
        let ids = tok.encode(&format!("a photo of a {name}.")).unwrap();
        let want: Vec<u32> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, want, "{l}");
    }
}
