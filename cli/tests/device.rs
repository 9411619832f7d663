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

#[test]
fn kernel_sets_are_chosen_by_environment_and_a_bad_name_is_one_line() {
    let tiny = fixtures().join("tiny");
    let imgs = ["rgb_100x80.png", "photo_320x240.jpg"];
    let cpu = logits(&classify(&tiny, "cpu", &imgs, &[]));
    for set in ["simple", "tiled"] {
        let env = [("WGPU_BACKEND", "vulkan"), ("MAPLE_GPU_KERNELS", set)];
        let gpu = logits(&classify(&tiny, "gpu", &imgs, &env));
        let mut max = 0.0f64;
        for ((gl, gt), (cl, ct)) in gpu.iter().zip(&cpu) {
            assert_eq!(gt, ct, "{set}: top-5");
            for (a, b) in gl.iter().zip(cl) {
                max = max.max((a - b).abs());
            }
        }
        eprintln!("MAPLE_GPU_KERNELS={set}: max |Δlogit| GPU vs CPU = {max:.2e}");
        assert!(max <= 1e-4, "{set}: {max}");
    }
    let bad = [("WGPU_BACKEND", "vulkan"), ("MAPLE_GPU_KERNELS", "fast")];
    let out = classify(&tiny, "gpu", &imgs[..1], &bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains(
            "MAPLE_GPU_KERNELS=\"fast\" is not a kernel set; use one of: simple, tiled, coopmat"
        ),
        "{err}"
    );
    // Tensor cores asked for on an adapter without them: one line that says so (lavapipe).
    let coop = [("WGPU_BACKEND", "vulkan"), ("MAPLE_GPU_KERNELS", "coopmat")];
    let out = classify(&tiny, "gpu", &imgs[..1], &coop);
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        eprintln!("this adapter has cooperative matrices: {err}");
    } else {
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains("MAPLE_GPU_KERNELS=coopmat: "), "{err}");
        assert!(err.contains("cooperative matri"), "{err}");
    }
}

/// `maple-bench --device gpu --profile`: the per-kernel table of each kernel set on whatever
/// adapter CI has (on lavapipe the times are a smoke test, not a measurement).
#[test]
fn maple_bench_profiles_every_gpu_kernel() {
    let tiny = fixtures().join("tiny");
    // The tiny model: 3 layers, MaPLe depth 3. Dispatches per image-tower forward: im2col,
    // the patch GEMM, assemble, the shared-prompt splice + 2 deep splices, ln_pre, per layer
    // 2 LayerNorms + 4 GEMMs + attention, ln_post, the projection GEMM, l2norm.
    let (layers, depth) = (3, 3);
    let want_dispatches = 1 + 1 + 1 + depth + 1 + 7 * layers + 1 + 1 + 1;
    for set in ["simple", "tiled"] {
        let out = Command::new(env!("CARGO_BIN_EXE_maple-bench"))
            .env("WGPU_BACKEND", "vulkan")
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .arg("--model")
            .arg(&tiny)
            .arg("--prompts")
            .arg(tiny.join("maple_prompts.safetensors"))
            .args(["--device", "gpu", "--kernels", set, "--profile"])
            .args(["--batches", "2", "--labels", "3", "--reps", "1"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with(&format!("image tower, batch 2: {set} kernels on ")),
            "{}",
            lines[0]
        );
        assert!(lines[1].starts_with("kernel") && lines[1].ends_with("GB/s"));
        // One row per kernel; their dispatch counts add up to the forward's.
        let rows: Vec<(String, usize, f64)> = lines[2..lines.len() - 1]
            .iter()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let n = f.len();
                let share = f[n - 3].trim_end_matches('%').parse().unwrap();
                (f[..n - 5].join(" "), f[n - 5].parse().unwrap(), share)
            })
            .collect();
        let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        let family = |f: &str| {
            rows.iter()
                .filter(|r| r.0.starts_with(f))
                .map(|r| r.1)
                .sum::<usize>()
        };
        assert_eq!(family("matmul"), 2 + 4 * layers, "{names:?}");
        assert_eq!(family("attention"), layers, "{names:?}");
        assert_eq!(family("layernorm"), 2 + 2 * layers, "{names:?}");
        assert_eq!(family("splice"), depth, "{names:?}");
        let total: usize = rows.iter().map(|r| r.1).sum();
        assert_eq!(total, want_dispatches, "{names:?}");
        let shares: f64 = rows.iter().map(|r| r.2).sum();
        assert!((shares - 100.0).abs() < 1.0, "shares add to {shares}");
        if set == "tiled" {
            assert!(names.contains(&"matmul tiled 32×32"), "{names:?}");
            assert!(names.contains(&"attention tiled"), "{names:?}");
            assert!(names.contains(&"layernorm rows"), "{names:?}");
        }
        let json: serde_json::Value = serde_json::from_str(lines[lines.len() - 1]).unwrap();
        assert_eq!(json["kernels"], set);
        assert_eq!(json["image_b2_dispatches"], want_dispatches);
        assert!(json["image_b2_images_per_s"].as_f64().unwrap() > 0.0);
    }
}
