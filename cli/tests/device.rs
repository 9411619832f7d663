//! Device selection: `--device gpu` on whatever adapter CI has (lavapipe) against the CPU path on
//! the full-size model; without any Vulkan driver, `auto` falls back to the CPU with a notice
//! and `gpu` fails with a clear message.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn classify(model: &Path, device: &str, images: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_maple-classify"));
    c.env_remove("MAPLE_MODEL")
        .env_remove("MAPLE_DEVICE")
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env(
            "MAPLE_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("text-cache-device"),
        );
    for (k, v) in env {
        c.env(k, v);
    }
    for i in images {
        c.arg(fixtures().join("images").join(i));
    }
    c.arg("--classes")
        .arg(fixtures().join("labels.txt"))
        .arg("--model")
        .arg(model);
    c.arg("--prompts")
        .arg(model.join("maple_prompts.safetensors"));
    c.args(["--format", "json", "--device", device])
        .output()
        .unwrap()
}

const NO_VULKAN: &[(&str, &str)] = &[
    ("VK_ICD_FILENAMES", "/nonexistent.json"),
    ("WGPU_BACKEND", "vulkan"),
];

#[test]
fn without_vulkan_auto_uses_the_cpu_and_gpu_fails() {
    let tiny = fixtures().join("tiny");
    let out = classify(&tiny, "auto", &["rgb_100x80.png"], NO_VULKAN);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("maple-classify: running on the CPU (no GPU adapter found"),
        "{err}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);

    let out = classify(&tiny, "gpu", &["rgb_100x80.png"], NO_VULKAN);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--device gpu: no GPU adapter found"), "{err}");
}

fn logits(out: &Output) -> Vec<(Vec<f64>, Vec<String>)> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let lg = v["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["logit"].as_f64().unwrap())
                .collect();
            let top = v["top"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect();
            (lg, top)
        })
        .collect()
}

#[test]
fn gpu_matches_cpu_on_the_full_size_model() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/synth-full");
    maple::synth::ensure_full_model(&dir).unwrap();
    let imgs = ["photo_320x240.jpg"];
    let vk = [("WGPU_BACKEND", "vulkan")];
    let t = std::time::Instant::now();
    let gpu = classify(&dir, "gpu", &imgs, &vk);
    let secs = t.elapsed().as_secs_f64();
    let notice = String::from_utf8_lossy(&gpu.stderr).to_string();
    eprintln!("{}", notice.trim_end());
    assert!(notice.contains("running on the GPU: "), "{notice}");
    let cpu = classify(&dir, "cpu", &imgs, &[]);
    let (g, c) = (logits(&gpu), logits(&cpu));
    let mut max = 0.0f64;
    for ((gl, gt), (cl, ct)) in g.iter().zip(&c) {
        assert_eq!(gt, ct, "top-5");
        for (a, b) in gl.iter().zip(cl) {
            max = max.max((a - b).abs());
        }
    }
    eprintln!("maple-classify --device gpu vs cpu, full-size model: max |Δlogit| = {max:.2e}; {secs:.1} s for the GPU run");
    assert!(max <= 1e-3);
}
