//! PyTorch checkpoints (written by real torch.save, tools/reference/make_checkpoints.py):
//! MaPLe's Dassl-shaped `.pth.tar`, HF `pytorch_model.bin`, OpenAI names; and hostile files,
//! each refused with one line, exit 1, no side effect, nothing written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}
fn ck(n: &str) -> PathBuf {
    fixtures().join("checkpoints").join(n)
}
fn maple_ckpt() -> PathBuf {
    ck("maple_tiny/MultiModalPromptLearner/model.pth.tar-5")
}
fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const IMAGES: [&str; 3] = ["rgb_451x300.png", "photo_320x240.jpg", "rgba_256x256.png"];

fn classify(model: &Path, prompts: &Path) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_maple-classify"));
    c.env("MAPLE_DEVICE", "cpu").env(
        "MAPLE_CACHE_DIR",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("text-cache-checkpoints"),
    );
    for i in IMAGES {
        c.arg(fixtures().join("images").join(i));
    }
    c.arg("--classes").arg(fixtures().join("labels.txt"));
    c.arg("--model")
        .arg(model)
        .arg("--prompts")
        .arg(prompts)
        .args(["--format", "json"]);
    c.output().unwrap()
}

fn logits(out: &Output) -> Vec<f64> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let j: serde_json::Value = serde_json::from_str(line).unwrap();
        v.extend(
            j["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["logit"].as_f64().unwrap()),
        );
    }
    v
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn dassl_checkpoint_gives_the_logits_of_the_safetensors_prompts() {
    let tiny = fixtures().join("tiny");
    let want = logits(&classify(&tiny, &tiny.join("maple_prompts.safetensors")));
    let got = logits(&classify(&tiny, &maple_ckpt()));
    let d = max_diff(&got, &want);
    eprintln!(".pth.tar prompts vs safetensors prompts: max |Δlogit| = {d:e}");
    assert!(d <= 1e-5);
    // The same CLIP from pytorch_model.bin (HF names) and from OpenAI names (packed in_proj,
    // transposed projections, a non-contiguous tensor).
    for m in ["hf_tiny", "openai_tiny"] {
        let got = logits(&classify(&ck(m), &maple_ckpt()));
        let d = max_diff(&got, &want);
        eprintln!("{m}: max |Δlogit| = {d:e}");
        assert!(d <= 1e-5, "{m}: {d}");
    }
}

#[test]
fn convert_round_trips() {
    let d = scratch("convert");
    let tiny = fixtures().join("tiny");
    let want = logits(&classify(&tiny, &tiny.join("maple_prompts.safetensors")));
    let run = |args: &[&Path]| {
        let o = Command::new(env!("CARGO_BIN_EXE_maple-convert"))
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let p = d.join("prompts.safetensors");
    run(&[&maple_ckpt(), &p]);
    let m = d.join("model");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::copy(tiny.join("config.json"), m.join("config.json")).unwrap();
    run(&[
        &ck("openai_tiny/pytorch_model.bin"),
        &m.join("model.safetensors"),
    ]);
    assert!(max_diff(&logits(&classify(&m, &p)), &want) <= 1e-5);
    // f32 storage holds the same (f16-exact) values.
    let o = Command::new(env!("CARGO_BIN_EXE_maple-convert"))
        .arg(ck("hf_tiny/pytorch_model.bin"))
        .arg(m.join("model.safetensors"))
        .args(["--dtype", "f32"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(max_diff(&logits(&classify(&m, &p)), &want) <= 1e-5);
}

/// (fixture, what the one-line error must say)
const HOSTILE: &[(&str, &str)] = &[
    (
        "evil_os_system.pth",
        "refusing to load {}: pickle references posix.system",
    ),
    (
        "evil_eval.pth",
        "refusing to load {}: pickle references builtins.eval",
    ),
    (
        "evil_subprocess.pth",
        "refusing to load {}: pickle references subprocess.Popen",
    ),
    (
        "evil_getattr.pth",
        "refusing to load {}: pickle references builtins.getattr",
    ),
    (
        "missing_storage.pth",
        "storage `0` is missing from the archive",
    ),
    (
        "offset_past_end.pth",
        "reaches past the end of its 4-element storage",
    ),
    (
        "short_storage.pth",
        "storage holds 8 bytes but declares 4 elements",
    ),
    (
        "path_traversal.pth",
        "zip entry `_base/../x` has an unsafe path",
    ),
    ("deep_nesting.pth", "nested too deeply"),
    ("huge_length.pth", "pickle wants 1152921504606846976 bytes"),
    ("truncated.pth.tar", "no end-of-central-directory record"),
];

const MARKERS: [&str; 3] = [
    "/tmp/maple-pwned-os-system",
    "/tmp/maple-pwned-eval",
    "/tmp/maple-pwned-subprocess",
];

fn check_refusal(out: &Output, path: &Path, msg: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty());
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let msg = msg.replace("{}", &path.display().to_string());
    assert!(err.contains(&msg), "{err:?} lacks {msg:?}");
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[test]
fn hostile_files_are_refused_without_side_effects() {
    for m in MARKERS {
        let _ = std::fs::remove_file(m);
    }
    let d = scratch("hostile");
    for (name, msg) in HOSTILE {
        let p = ck(name);
        check_refusal(&classify(&fixtures().join("tiny"), &p), &p, msg);
        let out_file = d.join(format!("{name}.safetensors"));
        let o = Command::new(env!("CARGO_BIN_EXE_maple-convert"))
            .arg(&p)
            .arg(&out_file)
            .output()
            .unwrap();
        check_refusal(&o, &p, msg);
        assert!(!out_file.exists(), "{name}: maple-convert wrote output");
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            0,
            "{name}: stray files"
        );
    }
    for m in MARKERS {
        assert!(
            !Path::new(m).exists(),
            "{m} was created: something executed"
        );
    }
}
