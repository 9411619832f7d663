//! maple-train against PyTorch autograd + torch.optim.SGD (tools/reference/train_golden.py):
//! the first step's gradient of every trainable tensor, and the tensors after 3 deterministic
//! steps (--no-augment --no-shuffle --lr-schedule constant, batch 2) on tests/fixtures/train,
//! for MaPLe and for CoOp, IVLP and VPT (starting from tests/fixtures/family/*.safetensors).
//! The tiny model's golden file is committed; the full-size one is made on demand
//! (MAPLE_TRAIN_GOLDEN_FULL=path, see the README) because it needs PyTorch.

mod common;

use maple::loader::{load_model, load_tokenizer, with_tensors};
use maple::train::{Dataset, Schedule, TrainOptions, Trainer};
use maple_core::safetensors::{SafeTensors, TensorSource};
use maple_core::train::{PromptParams, TrainWorkspace};
use maple_core::Parallel;
use std::path::Path;

fn golden_tensor(st: &SafeTensors<'_>, name: &str) -> Vec<f32> {
    st.tensor(name)
        .unwrap_or_else(|| panic!("golden file lacks {name}"))
        .to_f32(name)
        .unwrap()
}

/// max |a − b| over max |b| (b the reference).
fn rel_err(a: &[f32], b: &[f32]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let d = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()));
    let s = b.iter().fold(0.0f64, |m, y| m.max((*y as f64).abs()));
    (d, s)
}

fn check(model_dir: &Path, prompts: &Path, golden: &Path, grad_tol: f64, update_tol: f64) {
    let bytes = std::fs::read(golden).unwrap();
    let st = SafeTensors::parse(&bytes).unwrap();
    let batch: usize = st.metadata("batch_size").unwrap().parse().unwrap();
    let steps: usize = st.metadata("steps").unwrap().parse().unwrap();
    let lr: f32 = st.metadata("lr").unwrap().parse().unwrap();
    let data = Dataset::read(&common::fixtures().join("train")).unwrap();
    let want_images: Vec<String> = serde_json::from_str(st.metadata("images").unwrap()).unwrap();
    let got_images: Vec<String> = data
        .items
        .iter()
        .map(|(p, _)| {
            p.strip_prefix(&data.dir)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(got_images, want_images, "item order");

    // Token ids: the same class prompts as OpenAI's tokenizer gives.
    let template = st
        .metadata("template")
        .unwrap_or("a photo of a")
        .to_string();
    let tok = load_tokenizer(model_dir).unwrap();
    let rows = maple_text::tokenize_labels(&tok, &template, &data.classes, 77).unwrap();
    let want_ids: Vec<Vec<u32>> = serde_json::from_str(st.metadata("token_ids").unwrap()).unwrap();
    assert_eq!(rows, want_ids);

    // Step 1's gradient, straight from the core.
    let mut model = load_model(model_dir, None).unwrap();
    let config = model.clip.config;
    let params = with_tensors(prompts, false, |src| PromptParams::load(&config, src)).unwrap();
    for t in &params.tensors {
        assert_eq!(
            t.data,
            golden_tensor(&st, &format!("init.{}", t.name)),
            "{}",
            t.name
        );
    }
    model.prompts = Some(params.prompts());
    let par = Parallel::with_threads(2);
    let mut ws = TrainWorkspace::new(&model, &rows, batch, &par).unwrap();
    let s = config.vision.image_size;
    let mut px = Vec::new();
    let mut labels = Vec::new();
    for (p, c) in &data.items[..batch] {
        let img = maple::imageio::load_rgb8(p).unwrap();
        px.extend(maple_core::preprocess::preprocess(&img.data, img.width, img.height, s).unwrap());
        labels.push(*c);
    }
    let mut grads = params.zeros_like();
    let stats = model
        .loss_and_grad(&par, &mut ws, &params, &px, &labels, &mut grads)
        .unwrap();
    let losses: Vec<f64> = serde_json::from_str(st.metadata("losses").unwrap()).unwrap();
    println!("step 1 loss: maple {} vs PyTorch {}", stats.loss, losses[0]);
    assert!((stats.loss as f64 - losses[0]).abs() < 1e-4 * losses[0].abs().max(1.0));
    let mut worst = 0.0f64;
    for g in &grads.tensors {
        let want = golden_tensor(&st, &format!("grad0.{}", g.name));
        let (d, scale) = rel_err(&g.data, &want);
        println!("grad {:40} max |Δ| {d:.3e} of max |g| {scale:.3e}", g.name);
        assert!(
            d <= grad_tol * scale,
            "{}: gradient off by {d} (max {scale})",
            g.name
        );
        worst = worst.max(d / scale);
    }
    println!("worst gradient error (relative to each tensor's max): {worst:.3e}");

    // `steps` steps through the library's trainer, as maple-train runs them.
    let opts = TrainOptions {
        epochs: 1000,
        max_steps: Some(steps),
        batch_size: batch,
        lr,
        schedule: Schedule::Constant,
        augment: false,
        shuffle: false,
        threads: 2,
        init: Some(prompts.to_path_buf()),
        template,
        ..TrainOptions::default()
    };
    let mut t = Trainer::new(model_dir, data, opts).unwrap();
    t.run(None, &mut |_| {}).unwrap();
    let mut worst = 0.0f64;
    for p in &t.params().tensors {
        let init = golden_tensor(&st, &format!("init.{}", p.name));
        let want: Vec<f32> = golden_tensor(&st, &format!("trained.{}", p.name))
            .iter()
            .zip(&init)
            .map(|(a, b)| a - b)
            .collect();
        let got: Vec<f32> = p.data.iter().zip(&init).map(|(a, b)| a - b).collect();
        let (d, scale) = rel_err(&got, &want);
        println!(
            "update {:40} max |Δ| {d:.3e} of max |trained − init| {scale:.3e}",
            p.name
        );
        assert!(
            d <= update_tol * scale,
            "{}: update off by {d} (max {scale})",
            p.name
        );
        worst = worst.max(d / scale);
    }
    println!("worst update error (relative to each tensor's max change): {worst:.3e}");
}

#[test]
fn tiny_model_gradients_and_updates_match_pytorch() {
    let dir = common::tiny_dir();
    check(
        &dir,
        &dir.join("maple_prompts.safetensors"),
        &common::fixtures().join("train_golden_tiny.safetensors"),
        1e-4,
        1e-3,
    );
}

#[test]
fn tiny_family_gradients_and_updates_match_pytorch() {
    for m in ["coop", "cocoop", "ivlp", "vpt"] {
        println!("-- {m}");
        check(
            &common::tiny_dir(),
            &common::fixtures().join(format!("family/{m}.safetensors")),
            &common::fixtures().join(format!("train_golden_{m}_tiny.safetensors")),
            1e-4,
            1e-3,
        );
    }
}

/// The same check on the full-size synthetic model, against a golden file made locally
/// (it needs PyTorch): `MAPLE_TRAIN_GOLDEN_FULL=/path/golden.safetensors`.
#[test]
#[ignore = "needs a golden file from tools/reference/train_golden.py on the full-size model"]
fn full_model_gradients_and_updates_match_pytorch() {
    let golden = std::env::var_os("MAPLE_TRAIN_GOLDEN_FULL").expect("MAPLE_TRAIN_GOLDEN_FULL");
    let dir = common::full_dir();
    check(
        &dir,
        &dir.join("maple_prompts.safetensors"),
        Path::new(&golden),
        1e-4,
        1e-3,
    );
}
