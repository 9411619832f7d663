//! The whole model on the GPU against the CPU path (the CPU path is itself checked against
//! PyTorch): tiny and full-size synthetic models, MaPLe and zero-shot, f32 and f16 weights.

use maple::loader::load_model;
use maple::{top_k, Classifier, Device, ImageSource};
use maple_core::{Model, Parallel};
use maple_gpu::{AdapterChoice, Gpu, GpuModel, KernelSet, Precision};
use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn open() -> Gpu {
    let g = Gpu::open(AdapterChoice::Any)
        .expect("a GPU adapter (CI uses lavapipe: WGPU_BACKEND=vulkan)");
    eprintln!("adapter: {}", g.describe());
    g
}

/// Max |Δ| between GPU and CPU logits over `images` × the fixture labels.
fn compare(
    dir: &Path,
    prompts: bool,
    images: &[&str],
    precision: Precision,
    set: KernelSet,
) -> Option<(f32, bool)> {
    let gpu = open();
    if set == KernelSet::CoopMatrix && gpu.coop_subgroup.is_none() {
        // Opened with cooperative matrices only under MAPLE_GPU_KERNELS=coopmat on an adapter
        // that has them (not lavapipe); its shader is validated by tests/backends.rs.
        eprintln!("coopmat: not run (the device was not opened with cooperative matrices)");
        return None;
    }
    let p = dir.join("maple_prompts.safetensors");
    let pr = prompts.then_some(p.as_path());
    let mut b = Classifier::builder(dir)
        .label_set(maple::read_labels(fixtures().join("labels.txt")).unwrap())
        .device(Device::Cpu);
    if let Some(p) = pr {
        b = b.prompts(p);
    }
    let mut c = b.build().unwrap();
    let paths: Vec<PathBuf> = images
        .iter()
        .map(|n| fixtures().join("images").join(n))
        .collect();
    let sources: Vec<ImageSource> = paths.iter().map(|p| ImageSource::Path(p)).collect();
    let cpu: Vec<_> = c
        .classify_batch(&sources)
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let model: Model = load_model(dir, pr).unwrap();
    if precision == Precision::F16 && !gpu.shader_f16 {
        eprintln!("adapter has no SHADER_F16");
        return None;
    }
    let mut g = GpuModel::upload(gpu, &model, precision).unwrap();
    g.set_kernels(set);
    let tok = maple::loader::load_tokenizer(dir).unwrap();
    let labels = maple::read_labels(fixtures().join("labels.txt")).unwrap();
    let rows = maple_text::tokenize_labels(&tok, "a photo of a", &labels, 77).unwrap();
    let text = g.encode_texts(&rows).unwrap();
    let s = model.clip.config.vision.image_size;
    let mut px = Vec::new();
    for p in &paths {
        px.extend(c.preprocess(&ImageSource::Path(p)).unwrap());
    }
    let t = std::time::Instant::now();
    let feats = g.encode_images(&px, paths.len()).unwrap();
    eprintln!(
        "GPU image tower ({} kernels): {:.2} s for {} images of {s}px",
        set.name(),
        t.elapsed().as_secs_f64(),
        paths.len()
    );
    let e = text.dim;
    let mut max = 0.0f32;
    let mut same_top5 = true;
    for (i, r) in cpu.iter().enumerate() {
        let mut lg = vec![0.0; c.labels().len()];
        model
            .logits(&feats[i * e..(i + 1) * e], &text, &mut lg)
            .unwrap();
        for (a, b) in lg.iter().zip(&r.logits) {
            max = max.max((a - b).abs());
        }
        same_top5 &= top_k(&lg, 5) == top_k(&r.logits, 5);
    }
    let _ = Parallel::sequential();
    Some((max, same_top5))
}

#[test]
fn tiny_model_f32_matches_cpu() {
    let imgs = [
        "rgb_451x300.png",
        "photo_320x240.jpg",
        "gray_300x451.png",
        "odd_641x97.png",
        "rgba_256x256.png",
    ];
    for set in KernelSet::ALL {
        for prompts in [true, false] {
            let Some((d, top)) = compare(
                &fixtures().join("tiny"),
                prompts,
                &imgs,
                Precision::F32,
                set,
            ) else {
                continue;
            };
            eprintln!(
                "tiny f32 {} prompts={prompts}: max |Δlogit| GPU vs CPU = {d:.2e}",
                set.name()
            );
            assert!(d <= 1e-4 && top, "{d}");
        }
    }
}

#[test]
fn full_size_model_f32_and_f16_match_cpu() {
    // Lavapipe runs ~20× slower than the CPU GEMM (the tiled kernels slower still): few images.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/synth-full");
    maple::synth::ensure_full_model(&dir).unwrap();
    let imgs = ["photo_320x240.jpg", "rgb_451x300.png"];
    for set in KernelSet::ALL {
        let n = if set == KernelSet::Simple { 2 } else { 1 };
        let Some((d, top)) = compare(&dir, true, &imgs[..n], Precision::F32, set) else {
            continue;
        };
        eprintln!(
            "full-size f32 MaPLe, {} kernels: max |Δlogit| GPU vs CPU = {d:.2e}",
            set.name()
        );
        assert!(d <= 1e-4 && top, "{d}");
        let Some((d, top)) = compare(&dir, true, &imgs[..1], Precision::F16, set) else {
            continue;
        };
        eprintln!(
            "full-size f16 weights MaPLe, {} kernels: max |Δlogit| GPU vs CPU = {d:.2e}",
            set.name()
        );
        assert!(d <= 5e-2 && top, "{d}");
    }
}

/// Each prompt method's Dassl checkpoint (tests/fixtures/family/) through the library on the
/// GPU, against the PyTorch reference's logits (tools/reference/family.py). CoCoOp's image
/// tower runs on the GPU and its image-conditioned text on the CPU.
#[test]
fn tiny_family_on_the_gpu_matches_pytorch() {
    let g: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("golden_family_tiny.json")).unwrap(),
    )
    .unwrap();
    let images: Vec<&str> = g["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let paths: Vec<PathBuf> = images[..5]
        .iter()
        .map(|n| fixtures().join("images").join(n))
        .collect();
    let sources: Vec<ImageSource> = paths.iter().map(|p| ImageSource::Path(p)).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for m in ["coop", "cocoop", "ivlp", "vpt"] {
        let ckpt = root.join(g[m]["checkpoint"].as_str().unwrap());
        let mut c = Classifier::builder(fixtures().join("tiny"))
            .label_set(maple::read_labels(fixtures().join("labels.txt")).unwrap())
            .prompts(&ckpt)
            .device(Device::Gpu)
            .cache_dir(None)
            .build()
            .unwrap();
        assert!(matches!(c.device(), maple::ActiveDevice::Gpu { .. }));
        let mut max = 0.0f32;
        for (i, r) in c.classify_batch(&sources).unwrap().into_iter().enumerate() {
            let r = r.unwrap();
            for (a, b) in r.logits.iter().zip(g[m]["logits"][i].as_array().unwrap()) {
                max = max.max((a - b.as_f64().unwrap() as f32).abs());
            }
        }
        eprintln!("tiny {m} on the GPU: max |Δlogit| vs PyTorch = {max:.2e}");
        assert!(max <= 1e-3, "{m}: {max}");
    }
}
