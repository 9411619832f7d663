//! maple-eval against accuracies computed here from the PyTorch golden logits
//! (tests/fixtures/golden_tiny.json): a label's logit depends on that label alone, so an image's
//! prediction among a subset of the golden labels is the argmax over those columns.

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

fn eval() -> Command {
    eval_as("json")
}

fn eval_as(format: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_maple-eval"));
    c.env("HF_HUB_OFFLINE", "1")
        // (Shared by the tests running at once: not emptied, the cache keys tell entries apart.)
        .env(
            "MAPLE_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("eval-cache"),
        )
        .args(["--device", "cpu", "--format", format, "--model"])
        .arg(tiny())
        .arg("--prompts")
        .arg(tiny().join("maple_prompts.safetensors"));
    c
}

/// Index of the largest of `v[cols]`, as a position in `cols` (first on ties).
fn argmax(v: &[f64], cols: &[usize]) -> usize {
    let mut best = 0;
    for (k, &c) in cols.iter().enumerate() {
        if v[c] > v[cols[best]] {
            best = k;
        }
    }
    best
}

#[test]
fn base_novel_and_hm_on_a_split_file_match_the_golden_logits() {
    let g = golden();
    let labels: Vec<String> = g["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let images: Vec<String> = g["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    // Training list: each label once, in reverse (the class order comes from the sorted labels).
    let train: Vec<Value> = (0..labels.len())
        .rev()
        .map(|l| json!([format!("train/{l}.jpg"), l, labels[l]]))
        .collect();
    // Test list: fixture image i in the base half (labels 0..5, ⌈10/2⌉) when i is even, else
    // the novel half (5..10), labelled with the golden prediction among its half's classes,
    // except every third image, labelled with the next class (wrong); plus a file that does not
    // exist (base class 1).
    let halves: [Vec<usize>; 2] = [(0..5).collect(), (5..10).collect()];
    let mut want = [(0usize, 0usize); 2];
    let mut test: Vec<Value> = Vec::new();
    for (i, name) in images.iter().enumerate() {
        let half = i % 2;
        let k = argmax(&golden_logits(&g, name), &halves[half]);
        let label = 5 * half + if i % 3 == 0 { (k + 1) % 5 } else { k };
        test.push(json!([name, label, labels[label]]));
        want[half].1 += 1;
        want[half].0 += usize::from(label == 5 * half + k);
    }
    test.push(json!(["missing.jpg", 1, labels[1]]));
    let dir = scratch("eval-split");
    let split = dir.join("split_zhou_Fixtures.json");
    std::fs::write(
        &split,
        json!({"train": train, "val": [], "test": test}).to_string(),
    )
    .unwrap();

    let o = eval()
        .arg("--split")
        .arg(&split)
        .arg("--images")
        .arg(fixtures().join("images"))
        .output()
        .unwrap();
    // 2: an image could not be read (said on stderr, left out of the accuracy).
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("missing.jpg"), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let frac = |(c, t): (usize, usize)| c as f64 / t as f64;
    for (part, w) in ["base", "novel"].iter().zip(want) {
        assert_eq!(v[part]["correct"], w.0, "{part}: {v}");
        assert_eq!(v[part]["images"], w.1, "{part}: {v}");
        assert_eq!(v[part]["classes"], 5, "{part}: {v}");
        assert!((v[part]["accuracy"].as_f64().unwrap() - frac(w)).abs() < 1e-12);
    }
    assert_eq!(v["base"]["unreadable"].as_array().unwrap().len(), 1);
    let (b, n) = (frac(want[0]), frac(want[1]));
    assert!(
        b > 0.0 && b < 1.0 && n > 0.0 && n < 1.0,
        "a test that cannot tell: {b} {n}"
    );
    assert!((v["hm"].as_f64().unwrap() - 2.0 * b * n / (b + n)).abs() < 1e-12);

    // Text output: the same three numbers.
    let o = eval_as("text")
        .arg("--split")
        .arg(&split)
        .arg("--images")
        .arg(fixtures().join("images"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("base:  {:>6.2}%", 100.0 * b)),
        "{out}"
    );
    assert!(
        out.contains(&format!("HM:    {:>6.2}%", 200.0 * b * n / (b + n))),
        "{out}"
    );
}

#[test]
fn an_image_folder_gives_the_golden_accuracy() {
    let g = golden();
    // Three classes named as golden labels 0, 1 and 6; each fixture image filed under one.
    let classes = [("cat", 0usize), ("dog", 1), ("airplane", 6)];
    let dir = scratch("eval-folder");
    let images: Vec<String> = g["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let cols: Vec<usize> = classes.iter().map(|c| c.1).collect();
    let mut correct = 0;
    for (i, name) in images.iter().enumerate() {
        let k = i % 3;
        let d = dir.join(classes[k].0);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(fixtures().join("images").join(name), d.join(name)).unwrap();
        correct += usize::from(argmax(&golden_logits(&g, name), &cols) == k);
    }
    let o = eval().arg(&dir).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["all"]["correct"], correct, "{v}");
    assert_eq!(v["all"]["images"], images.len(), "{v}");
    assert!(v.get("hm").is_none());
}

#[test]
fn bad_split_files_get_one_clear_line() {
    let dir = scratch("eval-bad");
    let cases: [(&str, &str, &str); 4] = [
        ("notjson.json", "{", "not JSON"),
        (
            "nolist.json",
            r#"{"train": [], "val": [], "test": []}"#,
            "\"train\" list is empty",
        ),
        (
            "badentry.json",
            r#"{"train": [["a.jpg", "x", "cat"]], "val": [], "test": []}"#,
            "\"train\"[0] is not [path, label, classname]",
        ),
        (
            "notest.json",
            r#"{"train": [["a.jpg", 0, "cat"]], "val": []}"#,
            "no \"test\" list",
        ),
    ];
    for (file, text, needle) in cases {
        let p = dir.join(file);
        std::fs::write(&p, text).unwrap();
        let o = eval().arg("--split").arg(&p).output().unwrap();
        fatal(&o, &[file, needle]);
    }
    let o = eval()
        .arg("--split")
        .arg(Path::new("/nonexistent/split.json"))
        .output()
        .unwrap();
    fatal(&o, &["/nonexistent/split.json", "no such file"]);
    // A split whose novel half has no test image.
    let p = dir.join("nonovel.json");
    std::fs::write(
        &p,
        r#"{"train": [["a.jpg", 0, "cat"], ["b.jpg", 1, "dog"]], "val": [], "test": [["a.jpg", 0, "cat"]]}"#,
    )
    .unwrap();
    let o = eval().arg("--split").arg(&p).output().unwrap();
    fatal(&o, &["novel classes have no images in the test list"]);
}
