//! maple-train end to end: its output loads in maple-classify, the deterministic run equals
//! PyTorch's (tests/fixtures/train_golden_tiny.safetensors), --resume continues a run exactly,
//! and bad input gets one clear line and a non-zero exit.

mod common;

use common::{fixtures, maple_train, scratch, stderr, tiny};
use maple_core::safetensors::{serialize, SafeTensors, TensorSource};
use maple_core::synth::{clip_tensors, hf_config_json, tiny_config};
use maple_core::Dtype;
use std::path::Path;
use std::process::Command;

fn train(data: &Path, out: &Path) -> Command {
    maple_train(data, out)
}

fn tensors(p: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(p).unwrap();
    let st = SafeTensors::parse(&bytes).unwrap();
    let mut names: Vec<String> = st.names().iter().map(|s| s.to_string()).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let v = st.tensor(&n).unwrap().to_f32(&n).unwrap();
            (n, v)
        })
        .collect()
}

#[test]
fn trained_prompts_load_in_maple_classify_and_match_pytorch() {
    let dir = scratch("train-e2e");
    let out = dir.join("prompts.safetensors");
    let o = train(&fixtures().join("train"), &out)
        .args(["--no-augment", "--no-shuffle", "--lr-schedule", "constant"])
        .args(["--batch-size", "2", "--max-steps", "3", "--no-checkpoints"])
        .arg("--init")
        .arg(tiny().join("maple_prompts.safetensors"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("wrote"), "{}", stderr(&o));

    // The same tensors as PyTorch's 3 steps, relative to how far they moved.
    let gb = std::fs::read(fixtures().join("train_golden_tiny.safetensors")).unwrap();
    let g = SafeTensors::parse(&gb).unwrap();
    let got = tensors(&out);
    assert_eq!(got.len(), 9);
    for (name, v) in &got {
        let short = name.strip_prefix("prompt_learner.").unwrap();
        let init = g
            .tensor(&format!("init.{short}"))
            .unwrap()
            .to_f32("i")
            .unwrap();
        let want = g
            .tensor(&format!("trained.{short}"))
            .unwrap()
            .to_f32("t")
            .unwrap();
        let moved = want
            .iter()
            .zip(&init)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        let err = v
            .iter()
            .zip(&want)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            moved > 0.0 && err <= 1e-3 * moved,
            "{name}: {err} vs {moved}"
        );
    }

    let o = Command::new(env!("CARGO_BIN_EXE_maple-classify"))
        .env("MAPLE_DEVICE", "cpu")
        .env("HF_HUB_OFFLINE", "1")
        .arg(fixtures().join("train/cat/la_64x64.png"))
        .arg("--model")
        .arg(tiny())
        .arg("--prompts")
        .arg(&out)
        .args(["--labels", "cat,dog,red car", "--format", "json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("\"red car\""), "{s}");
}

#[test]
fn resume_from_a_checkpoint_gives_the_uninterrupted_run() {
    let dir = scratch("train-resume");
    let full = dir.join("full.safetensors");
    let o = train(&fixtures().join("train"), &full)
        .args(["--epochs", "2", "--batch-size", "2", "--seed", "3"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpt = dir.join("full.safetensors.checkpoints/epoch-1.safetensors");
    assert!(ckpt.is_file());
    assert!(dir
        .join("full.safetensors.checkpoints/epoch-2.safetensors")
        .is_file());
    let resumed = dir.join("resumed.safetensors");
    let o = train(&fixtures().join("train"), &resumed)
        .args([
            "--epochs",
            "2",
            "--batch-size",
            "2",
            "--seed",
            "3",
            "--no-checkpoints",
        ])
        .arg("--resume")
        .arg(&ckpt)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("resuming after epoch 1"),
        "{}",
        stderr(&o)
    );
    assert_eq!(tensors(&full), tensors(&resumed));
    // The run changed the prompts: a resumed run that did nothing would fail above only if
    // the first run did nothing too.
    let init = tensors(&ckpt);
    assert_ne!(
        init.iter()
            .filter(|(n, _)| n.starts_with("prompt_learner."))
            .cloned()
            .collect::<Vec<_>>(),
        tensors(&full)
    );
}

#[test]
fn bad_data_gets_one_clear_line() {
    let dir = scratch("train-bad");
    let out = dir.join("p.safetensors");
    let run = |data: &Path, extra: &[&str]| {
        let o = train(data, &out).args(extra).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(!out.exists(), "no output on failure");
        let e = stderr(&o);
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
        e
    };
    // An empty class folder.
    let d = dir.join("empty-class");
    std::fs::create_dir_all(d.join("cat")).unwrap();
    std::fs::create_dir_all(d.join("dog")).unwrap();
    std::fs::copy(
        fixtures().join("train/cat/la_64x64.png"),
        d.join("cat/a.png"),
    )
    .unwrap();
    let e = run(&d, &[]);
    assert!(e.contains("dog") && e.contains("no images"), "{e}");
    // One class.
    let d = dir.join("one-class");
    std::fs::create_dir_all(d.join("cat")).unwrap();
    std::fs::copy(
        fixtures().join("train/cat/la_64x64.png"),
        d.join("cat/a.png"),
    )
    .unwrap();
    let e = run(&d, &[]);
    assert!(
        e.contains("1 class folder") && e.contains("at least 2"),
        "{e}"
    );
    // Not a folder.
    let e = run(&fixtures().join("train/cat/la_64x64.png"), &[]);
    assert!(e.contains("not a folder"), "{e}");
    // A depth the model does not have.
    let e = Command::new(env!("CARGO_BIN_EXE_maple-train"))
        .arg(fixtures().join("train"))
        .arg("--model")
        .arg(tiny())
        .arg("--out")
        .arg(&out)
        .args(["--depth", "7"])
        .output()
        .unwrap();
    assert_eq!(e.status.code(), Some(1));
    assert!(stderr(&e).contains("prompt depth 7"), "{}", stderr(&e));
    // An output folder that does not exist: refused before training.
    let o = train(
        &fixtures().join("train"),
        &dir.join("missing/p.safetensors"),
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(!stderr(&o).contains("epoch"), "{}", stderr(&o));
}

#[test]
fn unreadable_images_are_skipped_with_a_warning() {
    let dir = scratch("train-unreadable");
    let d = dir.join("data");
    for c in ["cat", "dog"] {
        std::fs::create_dir_all(d.join(c)).unwrap();
        std::fs::copy(
            fixtures().join("train/cat/la_64x64.png"),
            d.join(c).join("a.png"),
        )
        .unwrap();
    }
    std::fs::write(d.join("dog/broken.jpg"), b"not a jpeg").unwrap();
    let out = dir.join("p.safetensors");
    let o = train(&d, &out)
        .args(["--epochs", "1", "--batch-size", "1", "--no-checkpoints"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("warning: skipped") && e.contains("broken.jpg"),
        "{e}"
    );
    assert!(out.is_file());
}

#[test]
fn a_model_without_a_text_tower_is_refused() {
    let dir = scratch("train-no-text");
    let m = dir.join("model");
    std::fs::create_dir_all(&m).unwrap();
    let cfg = tiny_config();
    std::fs::write(m.join("config.json"), hf_config_json(&cfg)).unwrap();
    let vision: Vec<_> = clip_tensors(&cfg, 1, Dtype::F32)
        .into_iter()
        .filter(|t| !t.name.starts_with("text_") && t.name != "text_projection.weight")
        .collect();
    std::fs::write(m.join("model.safetensors"), serialize(&vision, &[])).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_maple-train"))
        .arg(fixtures().join("train"))
        .arg("--model")
        .arg(&m)
        .arg("--out")
        .arg(dir.join("p.safetensors"))
        .args(["--depth", "3"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("needs the model's text tower") && e.contains("text_model."),
        "{e}"
    );
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
}

/// `maple-train --method M` from a fresh start (each method's initialisation) writes a file of
/// that method's tensors, under its trainer's names, that maple-classify loads and runs.
#[test]
fn each_method_trains_from_scratch_and_classifies() {
    let dir = scratch("train-methods");
    for (m, depth, names) in [
        ("coop", "1", vec!["ctx"]),
        (
            "cocoop",
            "1",
            vec![
                "ctx",
                "meta_net.linear1.bias",
                "meta_net.linear1.weight",
                "meta_net.linear2.bias",
                "meta_net.linear2.weight",
            ],
        ),
        (
            "ivlp",
            "3",
            vec![
                "image_encoder.VPT",
                "image_encoder.transformer.resblocks.1.VPT_shallow",
                "image_encoder.transformer.resblocks.2.VPT_shallow",
                "prompt_learner.ctx",
                "text_encoder.transformer.resblocks.1.VPT_shallow",
                "text_encoder.transformer.resblocks.2.VPT_shallow",
            ],
        ),
        (
            "vpt",
            "2",
            vec![
                "image_encoder.VPT",
                "image_encoder.transformer.resblocks.1.VPT_shallow",
            ],
        ),
    ] {
        let out = dir.join(format!("{m}.safetensors"));
        let o = Command::new(env!("CARGO_BIN_EXE_maple-train"))
            .arg(fixtures().join("train"))
            .arg("--model")
            .arg(tiny())
            .arg("--out")
            .arg(&out)
            .args(["--method", m, "--depth", depth, "--threads", "2"])
            .args(["--batch-size", "2", "--max-steps", "2", "--no-checkpoints"])
            .arg("--eval")
            .arg(fixtures().join("train"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{m}: {}", stderr(&o));
        assert!(stderr(&o).contains("accuracy"), "{m}: {}", stderr(&o));
        let got: Vec<String> = tensors(&out).into_iter().map(|(n, _)| n).collect();
        assert_eq!(got, names, "{m}");
        let o = Command::new(env!("CARGO_BIN_EXE_maple-classify"))
            .env("MAPLE_DEVICE", "cpu")
            .arg(fixtures().join("train/cat/la_64x64.png"))
            .arg("--model")
            .arg(tiny())
            .arg("--prompts")
            .arg(&out)
            .args([
                "--labels",
                "cat,dog,red car",
                "--format",
                "json",
                "--no-cache",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{m}: {}", stderr(&o));
        let s = String::from_utf8_lossy(&o.stdout);
        assert!(s.contains("\"red car\""), "{m}: {s}");
    }
}

#[test]
fn impossible_method_shapes_are_refused_in_one_line() {
    let dir = scratch("train-methods-refused");
    for (args, needle) in [
        (
            vec!["--method", "coop", "--depth", "3"],
            "CoOp has no deep prompts",
        ),
        (
            vec!["--method", "cocoop", "--depth", "2"],
            "CoCoOp has no deep prompts",
        ),
    ] {
        let out = dir.join("never.safetensors");
        let o = Command::new(env!("CARGO_BIN_EXE_maple-train"))
            .arg(fixtures().join("train"))
            .arg("--model")
            .arg(tiny())
            .arg("--out")
            .arg(&out)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(needle), "{args:?}: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
        assert!(!out.exists());
    }
}
