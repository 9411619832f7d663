//! `maple-classify` as a person runs it: output formats, and every kind of bad input giving one
//! line on stderr that names the file or label, exit status 1, no panic and nothing on stdout.

use maple_core::safetensors::{serialize, OwnedTensor};
use maple_core::synth::{clip_tensors, maple_tensors, tiny_config};
use maple_core::{ClipConfig, Dtype};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}
fn tiny() -> PathBuf {
    fixtures().join("tiny")
}
fn image(n: &str) -> PathBuf {
    fixtures().join("images").join(n)
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_maple-classify"));
    c.env_remove("MAPLE_MODEL").env("MAPLE_DEVICE", "cpu").env(
        "MAPLE_CACHE_DIR",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("text-cache-cli"),
    );
    for a in args {
        c.arg(a);
    }
    c.output().unwrap()
}

/// Asserts the failure contract and returns the stderr line.
fn fails(out: &Output, must_contain: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        out.stdout.is_empty(),
        "partial output: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("maple-classify: "), "{err}");
    for m in must_contain {
        assert!(err.contains(m), "{err:?} does not mention {m:?}");
    }
    err
}

/// A bad image is not fatal: an error record in the output, one stderr line, exit 2.
fn image_fails(out: &Output, must_contain: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("error: "), "no error record: {stdout}");
    for m in must_contain {
        assert!(err.contains(m), "{err:?} does not mention {m:?}");
        assert!(stdout.contains(m), "{stdout:?} does not mention {m:?}");
    }
}

fn labels_file(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("labels.txt");
    std::fs::write(&p, text).unwrap();
    p
}

/// A model dir with the tiny config.json and the given tensors.
fn model_dir(dir: &Path, cfg_json: &str, tensors: &[OwnedTensor]) -> PathBuf {
    std::fs::write(dir.join("config.json"), cfg_json).unwrap();
    std::fs::write(dir.join("model.safetensors"), serialize(tensors, &[])).unwrap();
    dir.to_path_buf()
}

fn tiny_cfg_json() -> String {
    std::fs::read_to_string(tiny().join("config.json")).unwrap()
}

#[test]
fn json_output_has_every_label_in_file_order() {
    let out = run(&[
        &image("rgb_451x300.png"),
        &image("photo_320x240.jpg"),
        &"--classes",
        &fixtures().join("labels.txt"),
        &"--model",
        &tiny(),
        &"--prompts",
        &tiny().join("maple_prompts.safetensors"),
        &"--format",
        &"json",
        &"--top-k",
        &"3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    for (line, img) in lines.iter().zip(["rgb_451x300.png", "photo_320x240.jpg"]) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["image"].as_str().unwrap().ends_with(img));
        let scores = v["scores"].as_array().unwrap();
        assert_eq!(scores.len(), 10);
        assert_eq!(scores[0]["label"], "cat");
        assert_eq!(scores[2]["label"], "golden_retriever");
        let psum: f64 = scores.iter().map(|s| s["prob"].as_f64().unwrap()).sum();
        assert!((psum - 1.0).abs() < 1e-5);
        let top = v["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let best = scores
            .iter()
            .max_by(|a, b| {
                a["logit"]
                    .as_f64()
                    .unwrap()
                    .total_cmp(&b["logit"].as_f64().unwrap())
            })
            .unwrap();
        assert_eq!(top[0], best["label"]);
    }
}

#[test]
fn text_output_and_model_from_env() {
    let out = Command::new(env!("CARGO_BIN_EXE_maple-classify"))
        .env("MAPLE_DEVICE", "cpu")
        .env(
            "MAPLE_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("text-cache-cli"),
        )
        .arg(image("gray_300x451.png"))
        .args(["--classes"])
        .arg(fixtures().join("labels.txt"))
        .env("MAPLE_MODEL", tiny())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.lines().next().unwrap().ends_with("gray_300x451.png"));
    assert_eq!(text.lines().filter(|l| l.contains('%')).count(), 5);
}

#[test]
fn missing_image() {
    let d = scratch("missing_image");
    let out = run(&[
        &d.join("nope.jpg"),
        &"--classes",
        &fixtures().join("labels.txt"),
        &"--model",
        &tiny(),
    ]);
    image_fails(&out, &["nope.jpg", "no such file"]);
}

#[test]
fn undecodable_image() {
    let d = scratch("undecodable");
    let txt = d.join("notes.jpg");
    std::fs::write(&txt, "this is not an image at all").unwrap();
    image_fails(
        &run(&[
            &txt,
            &"--classes",
            &fixtures().join("labels.txt"),
            &"--model",
            &tiny(),
        ]),
        &["notes.jpg", "not an image"],
    );
    // A real JPEG cut in half.
    let bytes = std::fs::read(image("photo_320x240.jpg")).unwrap();
    let cut = d.join("cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let out = run(&[
        &cut,
        &"--classes",
        &fixtures().join("labels.txt"),
        &"--model",
        &tiny(),
    ]);
    // Pillow refuses a truncated JPEG; libjpeg alone would pad it with gray.
    image_fails(&out, &["cut.jpg", "truncated"]);
    let png = std::fs::read(image("rgb_100x80.png")).unwrap();
    let bad = d.join("bad.png");
    std::fs::write(&bad, &png[..png.len() / 2]).unwrap();
    image_fails(
        &run(&[
            &bad,
            &"--classes",
            &fixtures().join("labels.txt"),
            &"--model",
            &tiny(),
        ]),
        &["bad.png", "cannot decode"],
    );
    let empty = d.join("empty.png");
    std::fs::write(&empty, "").unwrap();
    image_fails(
        &run(&[
            &empty,
            &"--classes",
            &fixtures().join("labels.txt"),
            &"--model",
            &tiny(),
        ]),
        &["empty.png", "empty file"],
    );
}

#[test]
fn missing_model_dir() {
    let d = scratch("missing_model");
    let out = run(&[
        &image("rgb_100x80.png"),
        &"--classes",
        &fixtures().join("labels.txt"),
        &"--model",
        &d.join("absent"),
    ]);
    fails(&out, &["absent", "cannot open model directory"]);
    let out = run(&[
        &image("rgb_100x80.png"),
        &"--classes",
        &fixtures().join("labels.txt"),
        &"--model",
        &d,
    ]);
    fails(&out, &["config.json", "no such file"]);
}

#[test]
fn config_with_wrong_dims() {
    let d = scratch("wrong_dims");
    let t = clip_tensors(&tiny_config(), 0, Dtype::F32);
    // Dims that are valid on their own but are not the weights'.
    let m = model_dir(
        &d,
        &tiny_cfg_json().replace("\"hidden_size\": 64", "\"hidden_size\": 128"),
        &t,
    );
    let out = run(&[
        &image("rgb_100x80.png"),
        &"--classes",
        &fixtures().join("labels.txt"),
        &"--model",
        &m,
    ]);
    fails(
        &out,
        &[
            "model.safetensors",
            "vision_model",
            "has shape",
            "[64",
            "[128",
        ],
    );
    // Dims that cannot be a model.
    let m = model_dir(
        &d,
        &tiny_cfg_json().replace("\"num_attention_heads\": 4", "\"num_attention_heads\": 5"),
        &t,
    );
    let out = run(&[
        &image("rgb_100x80.png"),
        &"--classes",
        &fixtures().join("labels.txt"),
        &"--model",
        &m,
    ]);
    fails(
        &out,
        &[
            "config.json",
            "vision_config.hidden_size = 64 is not divisible by num_attention_heads = 5",
        ],
    );
    let m = model_dir(&d, "{ not json", &t);
    let out = run(&[
        &image("rgb_100x80.png"),
        &"--classes",
        &fixtures().join("labels.txt"),
        &"--model",
        &m,
    ]);
    fails(&out, &["config.json", "not valid JSON"]);
}

#[test]
fn truncated_safetensors() {
    let d = scratch("truncated");
    std::fs::copy(tiny().join("config.json"), d.join("config.json")).unwrap();
    let bytes = std::fs::read(tiny().join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() - 1000]).unwrap();
    let out = run(&[
        &image("rgb_100x80.png"),
        &"--classes",
        &fixtures().join("labels.txt"),
        &"--model",
        &d,
    ]);
    fails(&out, &["model.safetensors", "truncated"]);
    std::fs::write(d.join("model.safetensors"), &bytes[..5]).unwrap();
    let out = run(&[
        &image("rgb_100x80.png"),
        &"--classes",
        &fixtures().join("labels.txt"),
        &"--model",
        &d,
    ]);
    fails(&out, &["model.safetensors", "not a valid safetensors file"]);
}

#[test]
fn wrong_shape_and_missing_tensor() {
    let d = scratch("bad_tensors");
    let mut t = clip_tensors(&tiny_config(), 0, Dtype::F32);
    let i = t
        .iter()
        .position(|x| x.name == "text_projection.weight")
        .unwrap();
    t[i].shape = vec![16, 64];
    let m = model_dir(&d, &tiny_cfg_json(), &t);
    let out = run(&[
        &image("rgb_100x80.png"),
        &"--classes",
        &fixtures().join("labels.txt"),
        &"--model",
        &m,
    ]);
    fails(
        &out,
        &[
            "model.safetensors",
            "`text_projection.weight` has shape [16, 64] but the model needs [32, 32]",
        ],
    );
    let mut t = clip_tensors(&tiny_config(), 0, Dtype::F32);
    t.retain(|x| x.name != "vision_model.encoder.layers.1.mlp.fc2.bias");
    let m = model_dir(&d, &tiny_cfg_json(), &t);
    let out = run(&[
        &image("rgb_100x80.png"),
        &"--classes",
        &fixtures().join("labels.txt"),
        &"--model",
        &m,
    ]);
    fails(
        &out,
        &[
            "model.safetensors",
            "missing tensor `vision_model.encoder.layers.1.mlp.fc2.bias`",
        ],
    );
}

#[test]
fn prompts_that_do_not_fit() {
    let d = scratch("bad_prompts");
    // ViT-B/16 prompts (text width 512) against the tiny model (width 32).
    let p = d.join("b16_prompts.safetensors");
    std::fs::write(
        &p,
        serialize(&maple_tensors(&ClipConfig::vit_b16(), 2, 9, 0), &[]),
    )
    .unwrap();
    let out = run(&[
        &image("rgb_100x80.png"),
        &"--classes",
        &fixtures().join("labels.txt"),
        &"--model",
        &tiny(),
        &"--prompts",
        &p,
    ]);
    fails(
        &out,
        &["b16_prompts.safetensors", "[2, 512]", "[n_ctx, 32]"],
    );
    // Deeper than the model's 3 layers.
    let p = d.join("deep.safetensors");
    std::fs::write(&p, serialize(&maple_tensors(&tiny_config(), 2, 9, 0), &[])).unwrap();
    let out = run(&[
        &image("rgb_100x80.png"),
        &"--classes",
        &fixtures().join("labels.txt"),
        &"--model",
        &tiny(),
        &"--prompts",
        &p,
    ]);
    fails(
        &out,
        &[
            "deep.safetensors",
            "prompt depth 9 is deeper than the model's 3 layers",
        ],
    );
    // More learned tokens than the template given has words. (Without --template, MaPLe's
    // trainer's own for n_ctx > 4 is used, "X X X X X": docs/prompts.md §1.)
    let p = d.join("n5.safetensors");
    std::fs::write(&p, serialize(&maple_tensors(&tiny_config(), 5, 3, 0), &[])).unwrap();
    let out = run(&[
        &image("rgb_100x80.png"),
        &"--classes",
        &fixtures().join("labels.txt"),
        &"--model",
        &tiny(),
        &"--prompts",
        &p,
        &"--template",
        &"a photo of a",
    ]);
    fails(&out, &["n5.safetensors", "5 context tokens", "only 4"]);
    let out = run(&[
        &image("rgb_100x80.png"),
        &"--classes",
        &fixtures().join("labels.txt"),
        &"--model",
        &tiny(),
        &"--prompts",
        &p,
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not a prompt file at all.
    let out = run(&[
        &image("rgb_100x80.png"),
        &"--classes",
        &fixtures().join("labels.txt"),
        &"--model",
        &tiny(),
        &"--prompts",
        &tiny().join("model.safetensors"),
    ]);
    fails(
        &out,
        &["model.safetensors", "no prompt method's tensors found"],
    );
}

#[test]
fn empty_duplicate_and_too_long_labels() {
    let d = scratch("labels");
    let run_with = |text: &str| {
        let l = labels_file(&d, text);
        run(&[
            &image("rgb_100x80.png"),
            &"--classes",
            &l,
            &"--model",
            &tiny(),
        ])
    };
    fails(
        &run_with("# nothing here\n\n   \n"),
        &["labels.txt", "no labels"],
    );
    fails(&run_with(""), &["labels.txt", "no labels"]);
    fails(
        &run_with("cat\ndog\ngolden retriever\ngolden_retriever\n"),
        &[
            "labels.txt",
            "line 4",
            "duplicate label \"golden_retriever\"",
        ],
    );
    let long = vec!["word"; 80].join(" ");
    fails(
        &run_with(&format!("cat\n{long}\n")),
        &["labels.txt", "is too long", "word word"],
    );
    let out = run(&[
        &image("rgb_100x80.png"),
        &"--classes",
        &d.join("none.txt"),
        &"--model",
        &tiny(),
    ]);
    fails(&out, &["none.txt", "no such file"]);
    std::fs::write(d.join("latin1.txt"), b"caf\xe9\n").unwrap();
    let out = run(&[
        &image("rgb_100x80.png"),
        &"--classes",
        &d.join("latin1.txt"),
        &"--model",
        &tiny(),
    ]);
    fails(&out, &["latin1.txt", "not UTF-8"]);
}

#[test]
fn a_label_at_the_limit_fits() {
    // "a photo of a" (4) + label + "." + SOT + EOT: 70 one-token words fill 77 exactly.
    let d = scratch("limit");
    let l = labels_file(&d, &format!("{}\ncat\n", vec!["dog"; 70].join(" ")));
    let out = run(&[
        &image("rgb_100x80.png"),
        &"--classes",
        &l,
        &"--model",
        &tiny(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let l = labels_file(&d, &format!("{}\ncat\n", vec!["dog"; 71].join(" ")));
    fails(
        &run(&[
            &image("rgb_100x80.png"),
            &"--classes",
            &l,
            &"--model",
            &tiny(),
        ]),
        &["too long"],
    );
}

/// Issue 15 (7): every fatal error exits 1, argument errors included (clap's default is 2,
/// which maple-classify uses for "some images failed").
#[test]
fn argument_errors_exit_1() {
    let arg_error = |out: &Output, must_contain: &str| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "stderr: {err}");
        assert!(out.stdout.is_empty());
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            err.contains(must_contain),
            "{err:?} does not mention {must_contain:?}"
        );
    };
    arg_error(&run(&[&"--no-such-flag"]), "--no-such-flag");
    arg_error(
        &run(&[
            &image("rgb_100x80.png"),
            &"--labels",
            &"cat",
            &"--format",
            &"xml",
        ]),
        "xml",
    );
    // Issue 15 (6): --top-k 0 printed nothing for every image and exited 0.
    arg_error(
        &run(&[
            &image("rgb_100x80.png"),
            &"--labels",
            &"cat",
            &"--top-k",
            &"0",
        ]),
        "at least 1",
    );
    for device in ["bogus", ""] {
        let out = Command::new(env!("CARGO_BIN_EXE_maple-classify"))
            .env("MAPLE_DEVICE", device)
            .arg(image("rgb_100x80.png"))
            .args(["--labels", "cat", "--model"])
            .arg(tiny())
            .output()
            .unwrap();
        arg_error(&out, "device");
    }
    let help = run(&[&"--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--classes"));
}

/// Issue 15 (5, 8, 9, 14, 17): labels files with a byte-order mark, runaway lines, device files,
/// labels only case or cleaning tells apart, and a template too long for any label.
#[test]
fn odd_labels_and_templates() {
    let d = scratch("odd-labels");
    let classify = |labels: &Path, extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_maple-classify"));
        c.env("MAPLE_DEVICE", "cpu")
            .env(
                "MAPLE_CACHE_DIR",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("text-cache-cli"),
            )
            .arg(image("rgb_100x80.png"))
            .arg("--classes")
            .arg(labels)
            .arg("--model")
            .arg(tiny())
            .args(["--format", "json"])
            .args(extra);
        c.output().unwrap()
    };
    // (5) The BOM is not part of the first line: the comment stays a comment.
    let bom = d.join("bom.txt");
    std::fs::write(&bom, "\u{feff}# animals\ncat\ndog\n").unwrap();
    let out = classify(&bom, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    let labels: Vec<&str> = v["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["cat", "dog"]);

    // (8) A 10 MB line: refused before tokenizing, quoted short.
    let big = d.join("big.txt");
    std::fs::write(&big, format!("cat\n{}\n", "y".repeat(10 << 20))).unwrap();
    let err = fails(&classify(&big, &[]), &["big.txt", "line 2", "is too long"]);
    assert!(err.len() < 300, "{} bytes of error", err.len());

    // (9) A device that never ends.
    if Path::new("/dev/zero").exists() {
        fails(
            &classify(Path::new("/dev/zero"), &[]),
            &["/dev/zero", "larger than 16 MiB"],
        );
    }

    // (14) The tokenizer lower-cases: `Cat` is `cat`.
    let case = d.join("case.txt");
    std::fs::write(&case, "cat\nCat\n").unwrap();
    fails(
        &classify(&case, &[]),
        &["case.txt", "line 2", "duplicate label \"Cat\""],
    );

    // (17) The template is blamed, not the label.
    let ok = d.join("ok.txt");
    std::fs::write(&ok, "cat\n").unwrap();
    let long_template = "a photo of a ".repeat(20);
    let err = fails(
        &classify(&ok, &["--template", &long_template]),
        &["the template"],
    );
    assert!(!err.contains("label \"cat\""), "{err}");
}

/// Issue 15 (12): `--threads u64::MAX` panicked ("capacity overflow"); thousands of threads ran
/// many times slower. More threads than cores are not started.
#[test]
fn absurd_thread_counts_run_on_the_cores() {
    for threads in ["10000", "18446744073709551615"] {
        let out = run(&[
            &image("rgb_100x80.png"),
            &"--labels",
            &"cat,dog",
            &"--model",
            &tiny(),
            &"--threads",
            &threads,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "--threads {threads}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn int8_precision_runs_on_the_cpu_only() {
    let args = |extra: &[&str]| {
        let mut v: Vec<Box<dyn AsRef<std::ffi::OsStr>>> = vec![
            Box::new(image("photo_320x240.jpg")),
            Box::new("--labels"),
            Box::new("cat,dog,a red car"),
            Box::new("--model"),
            Box::new(tiny()),
            Box::new("--prompts"),
            Box::new(tiny().join("maple_prompts.safetensors")),
            Box::new("--precision"),
            Box::new("int8"),
            Box::new("-f"),
            Box::new("json"),
        ];
        v.extend(
            extra
                .iter()
                .map(|s| Box::new(s.to_string()) as Box<dyn AsRef<_>>),
        );
        v
    };
    let a = args(&[]);
    let refs: Vec<&dyn AsRef<std::ffi::OsStr>> = a.iter().map(|b| b.as_ref()).collect();
    let out = run(&refs);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(v["scores"].as_array().unwrap().len(), 3);
    let a = args(&["--device", "gpu"]);
    let refs: Vec<&dyn AsRef<std::ffi::OsStr>> = a.iter().map(|b| b.as_ref()).collect();
    fails(&run(&refs), &["--precision int8 runs on the CPU"]);
}
