//! The text-feature cache through maple-classify: a warm run reads the file (shown by editing
//! the cached features), damaged files are rebuilt with a warning, other labels get their own
//! file, --no-cache touches nothing, and an unwritable cache directory is only a warning.

mod common;

use common::{fixtures, golden, golden_logits, scratch};
use maple::cache;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn classify(cache_dir: &Path, extra: &[&str]) -> Output {
    let tiny = fixtures().join("tiny");
    let o = Command::new(env!("CARGO_BIN_EXE_maple-classify"))
        .env("MAPLE_DEVICE", "cpu")
        .env("MAPLE_CACHE_DIR", cache_dir)
        .arg(fixtures().join("images/rgb_451x300.png"))
        .arg(fixtures().join("images/gray_300x451.png"))
        .arg("--model")
        .arg(&tiny)
        .arg("--prompts")
        .arg(tiny.join("maple_prompts.safetensors"))
        .args(["--format", "json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}
fn with_classes(cache_dir: &Path) -> Output {
    let labels = fixtures().join("labels.txt");
    classify(cache_dir, &["--classes", labels.to_str().unwrap()])
}
/// The text-feature cache files in `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    files_named(dir, "text-")
}
fn files_named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix));
    v.sort();
    v
}
fn key_of(p: &Path) -> u128 {
    let s = p.file_name().unwrap().to_str().unwrap();
    u128::from_str_radix(&s["text-".len()..s.len() - ".bin".len()], 16).unwrap()
}
/// Logits per image, label order.
fn logits(o: &Output) -> Vec<Vec<f64>> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["logit"].as_f64().unwrap())
                .collect()
        })
        .collect()
}
#[test]
fn warm_runs_read_the_cache_and_damage_is_rebuilt() {
    let d = scratch("text-cache");
    let cdir = d.join("cache");
    // Cold: computes, matches PyTorch, writes one file.
    let cold = with_classes(&cdir);
    let got = logits(&cold);
    for (row, img) in got.iter().zip(["rgb_451x300.png", "gray_300x451.png"]) {
        for (a, b) in row.iter().zip(golden_logits(&golden(), img)) {
            assert!((a - b).abs() < 1e-4, "{img}: {a} vs {b}");
        }
    }
    let f = files(&cdir);
    assert_eq!(f.len(), 1, "{f:?}");
    let file = f[0].clone();
    let (key, labels) = (key_of(&file), got[0].len());
    let feats = cache::load(&file, key, labels, 32).expect("a valid cache file");

    // Warm: the same bytes out, nothing on stderr.
    let warm = with_classes(&cdir);
    assert_eq!(warm.stdout, cold.stdout);
    assert!(
        warm.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&warm.stderr)
    );

    // The warm run really reads the file: swap labels 0 and 1 in it (valid checksum) and
    // their logits swap.
    let mut swapped = feats.clone();
    let dim = feats.dim;
    swapped.data[..dim].copy_from_slice(&feats.data[dim..2 * dim]);
    swapped.data[dim..2 * dim].copy_from_slice(&feats.data[..dim]);
    cache::store(&file, key, &swapped).unwrap();
    let edited = logits(&with_classes(&cdir));
    for (e, g) in edited.iter().zip(&got) {
        assert_eq!((e[0], e[1]), (g[1], g[0]));
        assert_eq!(e[2..], g[2..]);
    }

    // Damaged files (a flipped byte, a cut-off file): a warning, the right answer, a good file.
    let good = {
        cache::store(&file, key, &feats).unwrap();
        std::fs::read(&file).unwrap()
    };
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 1;
    for (bad, why) in [
        (flipped, "checksum mismatch"),
        (good[..good.len() - 5].to_vec(), "wrong length"),
    ] {
        std::fs::write(&file, &bad).unwrap();
        let o = with_classes(&cdir);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("warning: ignoring text-feature cache") && err.contains(why),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(o.stdout, cold.stdout);
        assert_eq!(std::fs::read(&file).unwrap(), good, "rebuilt file");
    }

    // Other labels: their own file; zero-shot (no prompts) is a different model: another file.
    let o = classify(&cdir, &["--labels", "cat,dog"]);
    assert_eq!(logits(&o)[0].len(), 2);
    assert_eq!(files(&cdir).len(), 2);

    // --no-cache reads and writes nothing.
    let fresh = d.join("unused");
    let o = classify(
        &fresh,
        &[
            "--no-cache",
            "--classes",
            fixtures().join("labels.txt").to_str().unwrap(),
        ],
    );
    assert_eq!(o.stdout, cold.stdout);
    assert!(!fresh.exists());
}

#[test]
fn unwritable_cache_dir_is_a_warning() {
    let d = scratch("text-cache-ro");
    std::fs::write(d.join("plain-file"), b"x").unwrap();
    let o = with_classes(&d.join("plain-file/cache"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("maple-classify: warning: cannot use the cache directory")
            && err.contains("plain-file/cache"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let got = logits(&o);
    for (a, b) in got[0]
        .iter()
        .zip(golden_logits(&golden(), "rgb_451x300.png"))
    {
        assert!((a - b).abs() < 1e-4);
    }
}

/// The packed-weight cache: written by the first run, then read silently; a damaged, cut-off,
/// foreign or stale file is one warning, the same output and a rebuilt file; a directory in
/// its place is a warning too.
#[test]
fn packed_weight_cache_is_read_and_rebuilt() {
    let d = scratch("packed-cache");
    // A copy of the tiny model, so that its weights file can be rewritten.
    let model = d.join("tiny");
    std::fs::create_dir_all(&model).unwrap();
    for e in std::fs::read_dir(fixtures().join("tiny")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, model.join(p.file_name().unwrap())).unwrap();
        }
    }
    let cdir = d.join("cache");
    let run = || {
        let o = Command::new(env!("CARGO_BIN_EXE_maple-classify"))
            .env("MAPLE_DEVICE", "cpu")
            .env("MAPLE_CACHE_DIR", &cdir)
            .arg(fixtures().join("images/rgb_451x300.png"))
            .arg("--model")
            .arg(&model)
            .arg("--prompts")
            .arg(model.join("maple_prompts.safetensors"))
            .arg("--classes")
            .arg(fixtures().join("labels.txt"))
            .args(["--format", "json"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (o.stdout, String::from_utf8(o.stderr).unwrap())
    };
    let (cold, err) = run();
    assert!(err.is_empty(), "{err}");
    let got = &logits(&Output {
        status: std::process::ExitStatus::default(),
        stdout: cold.clone(),
        stderr: Vec::new(),
    })[0];
    for (a, b) in got.iter().zip(golden_logits(&golden(), "rgb_451x300.png")) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    let packed = files_named(&cdir, "packed-");
    assert_eq!(packed.len(), 1, "{packed:?}");
    let file = packed[0].clone();
    let good = std::fs::read(&file).unwrap();

    // Warm: silent, the same output, the file untouched.
    let (warm, err) = run();
    assert!(err.is_empty(), "{err}");
    assert_eq!(warm, cold);
    assert_eq!(std::fs::read(&file).unwrap(), good);

    // The first panel block (the patch embedding, which every run reads) starts at the first
    // 4096-byte boundary after the 48-byte header and the table.
    let table = u64::from_ne_bytes(good[32..40].try_into().unwrap()) as usize;
    let first = (48 + table).next_multiple_of(4096);
    let mut flipped = good.clone();
    flipped[first + 5] ^= 0x40;
    let mut foreign = good.clone();
    foreign[..8].copy_from_slice(b"NOTMAPLE");
    for (bad, why) in [
        (
            flipped,
            "checksum mismatch in vision_model.embeddings.patch_embedding.weight",
        ),
        (good[..good.len() / 2].to_vec(), "out of bounds"),
        (foreign, "not a maple packed-weight cache"),
    ] {
        std::fs::write(&file, &bad).unwrap();
        let (out, err) = run();
        assert_eq!(out, cold, "{why}");
        assert!(
            err.contains("warning: ignoring packed-weight cache") && err.contains(why),
            "{why}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        let (out, err) = run();
        assert_eq!(out, cold);
        assert!(err.is_empty(), "not rebuilt after {why}: {err}");
    }

    // Stale: the weights file rewritten (same bytes, new times): rebuilt, once.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let w = model.join("model.safetensors");
    std::fs::write(&w, std::fs::read(&w).unwrap()).unwrap();
    let (out, err) = run();
    assert_eq!(out, cold);
    assert!(err.contains("stale") && err.lines().count() == 1, "{err}");
    let (_, err) = run();
    assert!(err.is_empty(), "{err}");

    // A directory where the file goes: read and written around, with warnings, same output.
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let (out, err) = run();
    assert_eq!(out, cold);
    assert!(
        err.contains("not a regular file") && err.contains("cannot write the packed-weight cache"),
        "{err}"
    );
}

#[test]
fn int8_and_bf16_caches_are_read_and_rebuilt() {
    let d = scratch("low-cache");
    let tiny = fixtures().join("tiny");
    let cdir = d.join("cache");
    let run = |precision: &str, cache: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_maple-classify"));
        c.env("MAPLE_DEVICE", "cpu")
            .env("MAPLE_CACHE_DIR", &cdir)
            .arg(fixtures().join("images/rgb_451x300.png"))
            .arg(fixtures().join("images/gray_300x451.png"))
            .arg("--model")
            .arg(&tiny)
            .arg("--prompts")
            .arg(tiny.join("maple_prompts.safetensors"))
            .arg("--classes")
            .arg(fixtures().join("labels.txt"))
            .args(["--format", "json", "--precision", precision]);
        if !cache {
            c.arg("--no-cache");
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (o.stdout, String::from_utf8(o.stderr).unwrap())
    };
    for precision in ["int8", "bf16"] {
        // Without a cache: the conversion done at start-up, the reference for every run below.
        let (reference, err) = run(precision, false);
        if err.contains("no bf16 instructions") {
            continue; // bf16 runs in f32 on this CPU: no bf16 file to test
        }
        assert!(err.is_empty(), "{err}");
        // Cold: converts, writes packed-….<precision>.bin beside the f32 file, same output.
        let (cold, err) = run(precision, true);
        assert!(err.is_empty(), "{err}");
        assert_eq!(cold, reference, "{precision} cold");
        let f = files_named(&cdir, "packed-");
        let low: Vec<_> = f
            .iter()
            .filter(|p| p.to_str().unwrap().ends_with(&format!(".{precision}.bin")))
            .collect();
        assert_eq!(low.len(), 1, "{f:?}");
        let file = low[0].clone();
        let good = std::fs::read(&file).unwrap();
        // Warm: read from the file, silent, same output, file untouched.
        let (warm, err) = run(precision, true);
        assert!(err.is_empty(), "{err}");
        assert_eq!(warm, reference, "{precision} warm");
        assert_eq!(std::fs::read(&file).unwrap(), good);
        // Damaged (first block: layer 0's fused q/k/v) or cut off: one warning, same output,
        // rebuilt (the next run is silent).
        let table = u64::from_ne_bytes(good[32..40].try_into().unwrap()) as usize;
        let first = (48 + table).next_multiple_of(4096);
        let mut flipped = good.clone();
        flipped[first + 3] ^= 0x10;
        for (bad, why) in [
            (
                flipped,
                "checksum mismatch in vision_model.encoder.layers.0.self_attn.q_proj.weight",
            ),
            (good[..good.len() / 2].to_vec(), "out of bounds"),
        ] {
            std::fs::write(&file, &bad).unwrap();
            let (out, err) = run(precision, true);
            assert_eq!(out, reference, "{precision}: {why}");
            assert!(
                err.contains("warning: ignoring packed-weight cache")
                    && err.contains(&format!(".{precision}.bin"))
                    && err.contains(why),
                "{precision}: {why}: {err}"
            );
            assert_eq!(err.lines().count(), 1, "{err}");
            let (out, err) = run(precision, true);
            assert_eq!(out, reference);
            assert!(
                err.is_empty(),
                "{precision}: not rebuilt after {why}: {err}"
            );
            assert_eq!(
                std::fs::read(&file).unwrap(),
                good,
                "{precision}: rebuilt differently"
            );
        }
    }
    // The f32 file next to them still serves f32 runs, silently.
    let (_, err) = run("f32", true);
    assert!(err.is_empty(), "{err}");
}
