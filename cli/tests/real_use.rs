//! maple-classify on folders of photos: directory walking, stdin, CSV/JSON parsed back, atomic
//! --output, hub-cache model lookup (never the network), a 200-image run checked against the
//! PyTorch golden logits, and the HTML report rendered in headless Chromium.

mod common;

use common::{fixtures, golden, golden_logits, scratch};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn tiny() -> PathBuf {
    fixtures().join("tiny")
}
fn cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_maple-classify"));
    c.env_remove("MAPLE_MODEL")
        .env("HF_HUB_OFFLINE", "1")
        .env("MAPLE_DEVICE", "cpu")
        .env("MAPLE_CACHE_DIR", scratch_cache());
    c
}
fn scratch_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("text-cache-real-use")
}
fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A tree: nested folders with images, a text file (skipped), a "photo" that is not an image, a
/// corrupt JPEG, a zero-byte file, and a symlink back up the tree.
fn make_tree(d: &Path) -> Vec<&'static str> {
    let img = |n: &str| fixtures().join("images").join(n);
    std::fs::create_dir_all(d.join("a/b/c")).unwrap();
    std::fs::create_dir_all(d.join("z")).unwrap();
    std::fs::copy(img("rgb_451x300.png"), d.join("a/one.png")).unwrap();
    std::fs::copy(img("photo_320x240.jpg"), d.join("a/b/two.JPG")).unwrap();
    std::fs::copy(img("gray_300x451.png"), d.join("a/b/c/three.png")).unwrap();
    std::fs::copy(img("rgb_180x120.webp"), d.join("z/four.webp")).unwrap();
    std::fs::write(d.join("a/notes.txt"), "skipped: not an image extension").unwrap();
    std::fs::write(d.join("a/b/not-really.png"), "hello, I am text").unwrap();
    let jpg = std::fs::read(img("photo_320x240.jpg")).unwrap();
    std::fs::write(d.join("a/corrupt.jpg"), &jpg[..jpg.len() / 2]).unwrap();
    std::fs::write(d.join("z/empty.jpg"), "").unwrap();
    std::os::unix::fs::symlink("../..", d.join("a/b/loop")).unwrap();
    // Expected order: sorted walk.
    vec![
        "a/b/c/three.png",
        "a/b/loop",
        "a/b/not-really.png",
        "a/b/two.JPG",
        "a/corrupt.jpg",
        "a/one.png",
        "z/empty.jpg",
        "z/four.webp",
    ]
}

#[test]
fn directory_tree_with_every_kind_of_failure() {
    let d = scratch("tree");
    let expected = make_tree(&d);
    let out = cmd()
        .arg(&d)
        .args(["--classes"])
        .arg(fixtures().join("labels.txt"))
        .arg("--model")
        .arg(tiny())
        .arg("--prompts")
        .arg(tiny().join("maple_prompts.safetensors"))
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = json_lines(&out);
    let got: Vec<String> = recs
        .iter()
        .map(|r| {
            r["image"]
                .as_str()
                .unwrap()
                .strip_prefix(&format!("{}/", d.display()))
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(got, expected);
    let errors: Vec<&str> = recs.iter().filter_map(|r| r["error"].as_str()).collect();
    assert_eq!(errors.len(), 4, "{errors:#?}");
    for (r, want) in [
        ("a/b/loop", "symbolic link loop"),
        ("a/b/not-really.png", "not an image"),
        ("a/corrupt.jpg", "truncated"),
        ("z/empty.jpg", "empty file"),
    ] {
        let rec = recs
            .iter()
            .find(|x| x["image"].as_str().unwrap().ends_with(r))
            .unwrap();
        assert!(rec["error"].as_str().unwrap().contains(want), "{r}: {rec}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 4, "{stderr}");
    assert!(!stderr.contains("panicked"));
    // The good ones are right: against the PyTorch golden logits of their source images.
    let g = golden();
    for (name, src) in [
        ("a/one.png", "rgb_451x300.png"),
        ("a/b/two.JPG", "photo_320x240.jpg"),
        ("a/b/c/three.png", "gray_300x451.png"),
    ] {
        let rec = recs
            .iter()
            .find(|x| x["image"].as_str().unwrap().ends_with(name))
            .unwrap();
        let got: Vec<f64> = rec["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["logit"].as_f64().unwrap())
            .collect();
        for (a, b) in got.iter().zip(golden_logits(&g, src)) {
            assert!((a - b).abs() < 1e-3, "{name}: {a} vs {b}");
        }
    }
}

#[test]
fn stdin_paths_and_inline_labels_to_csv() {
    let mut child = cmd()
        .arg("-")
        .args([
            "--labels",
            "cat,dog,a red car",
            "--format",
            "csv",
            "-k",
            "2",
            "--model",
        ])
        .arg(tiny())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let paths = format!(
        "{}\n\n{}\n/nonexistent/x.png\n",
        fixtures().join("images/rgb_100x80.png").display(),
        fixtures().join("images/photo_gray_97x131.jpg").display()
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(paths.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows[0],
        ["image", "rank", "label", "logit", "prob", "error"]
    );
    assert_eq!(rows.len(), 1 + 2 + 2 + 1);
    for r in &rows[1..5] {
        assert_eq!(r.len(), 6);
        assert!(["cat", "dog", "a red car"].contains(&r[2]));
        let p: f64 = r[4].parse().unwrap();
        assert!((0.0..=1.0).contains(&p));
        assert!(r[3].parse::<f64>().is_ok() && r[5].is_empty());
    }
    assert_eq!(rows[1][1], "1");
    assert!(rows[1][3].parse::<f64>().unwrap() >= rows[2][3].parse::<f64>().unwrap());
    assert!(rows[5][0] == "/nonexistent/x.png" && rows[5][5].contains("no such file"));
}

#[test]
fn output_file_is_atomic() {
    let d = scratch("output");
    let o = d.join("results.json");
    let ok = cmd()
        .arg(fixtures().join("images/rgb_100x80.png"))
        .args(["--labels", "cat,dog", "-f", "json", "--model"])
        .arg(tiny())
        .arg("--output")
        .arg(&o)
        .output()
        .unwrap();
    assert!(ok.status.success() && ok.stdout.is_empty());
    let v: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&o).unwrap().trim()).unwrap();
    assert_eq!(v["scores"].as_array().unwrap().len(), 2);
    // A fatal error leaves no file (and the earlier one untouched), and no temporary file.
    let o2 = d.join("never.json");
    let bad = cmd()
        .arg(fixtures().join("images/rgb_100x80.png"))
        .args(["--labels", "cat,cat", "--model"])
        .arg(tiny())
        .arg("--output")
        .arg(&o2)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(!o2.exists());
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
}

#[test]
fn hub_ids_resolve_in_a_fake_cache_and_fail_clearly_offline() {
    let d = scratch("hub");
    let snap = d.join("hub/models--openai--clip-vit-base-patch16/snapshots/0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny().join(f), snap.join(f)).unwrap();
    }
    std::fs::create_dir_all(d.join("hub/models--openai--clip-vit-base-patch16/refs")).unwrap();
    std::fs::write(
        d.join("hub/models--openai--clip-vit-base-patch16/refs/main"),
        "0123abcd",
    )
    .unwrap();
    let img = fixtures().join("images/rgb_100x80.png");
    // Default model id, found through HF_HOME/hub.
    let out = cmd()
        .arg(&img)
        .args(["--labels", "cat,dog"])
        .env_remove("HF_HUB_CACHE")
        .env("HF_HOME", &d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // HF_HUB_CACHE wins over HF_HOME.
    let out = cmd()
        .arg(&img)
        .args(["--labels", "cat,dog"])
        .env("HF_HOME", "/nonexistent")
        .env("HF_HUB_CACHE", d.join("hub"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not cached, offline: one line naming the id, where it looked, and what to do.
    let out = cmd()
        .arg(&img)
        .args(["--labels", "cat,dog", "--model", "someone/missing-model"])
        .env("HF_HUB_CACHE", d.join("hub"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    for m in [
        "someone/missing-model",
        "models--someone--missing-model/snapshots",
        "HF_HUB_OFFLINE",
        "huggingface-cli download",
        "--model DIR",
    ] {
        assert!(err.contains(m), "{err} lacks {m}");
    }
}

#[test]
fn two_hundred_images() {
    let d = scratch("two_hundred");
    let g = golden();
    let names: Vec<String> = g["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut src = Vec::new();
    for i in 0..200 {
        let n = &names[i % names.len()];
        let ext = Path::new(n).extension().unwrap().to_str().unwrap();
        std::fs::copy(
            fixtures().join("images").join(n),
            d.join(format!("img{i:03}.{ext}")),
        )
        .unwrap();
        src.push(n.clone());
    }
    let t = std::time::Instant::now();
    let out = cmd()
        .arg(&d)
        .arg("--classes")
        .arg(fixtures().join("labels.txt"))
        .arg("--model")
        .arg(tiny())
        .arg("--prompts")
        .arg(tiny().join("maple_prompts.safetensors"))
        .args(["-f", "json"])
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = json_lines(&out);
    assert_eq!(recs.len(), 200);
    for (i, r) in recs.iter().enumerate() {
        assert!(r["image"]
            .as_str()
            .unwrap()
            .contains(&format!("img{i:03}.")));
        let got: Vec<f64> = r["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["logit"].as_f64().unwrap())
            .collect();
        for (a, b) in got.iter().zip(golden_logits(&g, &src[i])) {
            assert!((a - b).abs() < 1e-3, "img{i:03}: {a} vs {b}");
        }
    }
    eprintln!(
        "200 images on the tiny model: {secs:.2} s, {:.0} images/s (debug-profile test binary)",
        200.0 / secs
    );
}

#[test]
fn html_report_renders_in_headless_chromium() {
    let d = scratch("report");
    let tree = d.join("tree");
    let expected = make_tree(&tree);
    let report = d.join("report.html");
    let out = cmd()
        .arg(&tree)
        .arg("--classes")
        .arg(fixtures().join("labels.txt"))
        .arg("--model")
        .arg(tiny())
        .arg("--prompts")
        .arg(tiny().join("maple_prompts.safetensors"))
        .arg("--report")
        .arg(&report)
        .args(["-q", "-f", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "external asset in the report"
    );
    let check = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/report-check");
    assert!(
        check.join("node_modules/playwright-core").is_dir() && Path::new("/usr/bin/chromium").exists(),
        "this test needs Debian's chromium and playwright-core: run `bash tools/test.sh`, which installs them"
    );
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report.png");
    let r = Command::new("node")
        .arg(check.join("check.mjs"))
        .arg(&report)
        .arg(&shot)
        .arg(expected.len().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["cards"], expected.len());
    assert_eq!(v["images"], 4, "a thumbnail for each decodable image");
    assert_eq!(v["decoded"], 4);
    assert_eq!(v["bars"], 4 * 5);
    assert!(shot.is_file());
    eprintln!("report screenshot: {}", shot.display());
}
