//! The prompt family at the command line: each trainer's own checkpoint (CoOp, CoCoOp, IVLP,
//! VPT, tests/fixtures/family/, written by tools/reference/family.py) classifies with
//! `maple-classify` to the PyTorch reference's logits, and `maple-convert` turns it into a
//! safetensors file that classifies the same.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

const IMAGES: [&str; 2] = ["photo_320x240.jpg", "rgba_256x256.png"];

/// The logits `maple-classify --format json` prints, image by image, in label order.
fn classify(prompts: &Path) -> Vec<Vec<f64>> {
    let mut c = Command::new(env!("CARGO_BIN_EXE_maple-classify"));
    c.env("MAPLE_DEVICE", "cpu");
    for i in IMAGES {
        c.arg(fixtures().join("images").join(i));
    }
    c.arg("--classes").arg(fixtures().join("labels.txt"));
    c.arg("--model").arg(tiny()).arg("--prompts").arg(prompts);
    c.args(["--format", "json", "--no-cache"]);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let j: serde_json::Value = serde_json::from_str(l).unwrap();
            j["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["logit"].as_f64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn each_trainers_checkpoint_classifies_and_converts() {
    let path = fixtures().join("golden_family_tiny.json");
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let images: Vec<&str> = g["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let dir = scratch("family-convert");
    for (m, name) in [
        ("coop", "CoOp"),
        ("cocoop", "CoCoOp"),
        ("ivlp", "IVLP"),
        ("vpt", "VPT"),
    ] {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let ckpt = root.join(g[m]["checkpoint"].as_str().unwrap());
        let got = classify(&ckpt);
        for (img, l) in IMAGES.iter().zip(&got) {
            let i = images.iter().position(|n| n == img).unwrap();
            let want: Vec<f64> = g[m]["logits"][i]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let d = l
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(d <= 1e-3, "{m} {img}: max |Δlogit| {d}");
        }
        let out = dir.join(format!("{m}.safetensors"));
        let o = Command::new(env!("CARGO_BIN_EXE_maple-convert"))
            .arg(&ckpt)
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("{name} prompt tensors")),
            "{m}: {}",
            stderr(&o)
        );
        // Only what the method learned: the converted file is a few KB, not the CLIP copy.
        let size = std::fs::metadata(&out).unwrap().len();
        assert!(size < 16 << 10, "{m}: converted file is {size} bytes");
        assert_eq!(classify(&out), got, "{m}: converted file");
    }
}

#[test]
fn a_file_of_no_method_is_refused_naming_what_it_holds() {
    let o = Command::new(env!("CARGO_BIN_EXE_maple-classify"))
        .env("MAPLE_DEVICE", "cpu")
        .arg(fixtures().join("images/photo_320x240.jpg"))
        .args(["--labels", "cat,dog", "--model"])
        .arg(tiny())
        .arg("--prompts")
        .arg(tiny().join("model.safetensors"))
        .output()
        .unwrap();
    let e = fatal(
        &o,
        &["no prompt method's tensors found", "model.safetensors"],
    );
    assert!(e.contains("the file holds"), "{e}");
    assert!(o.stdout.is_empty());
}
