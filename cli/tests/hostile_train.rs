//! Hostile and odd input to maple-train, second round (issue 31: N1–N4, N9, N10, N12–N14):
//! data none of which can be read, an epoch with an unreadable image, hyper-parameters that
//! break the run, absurd sizes, what `--resume` takes, where checkpoints go, and the template
//! a trained file carries into maple-classify. Each test failed before its fix.

mod common;

use common::{fixtures, maple_train, run_within, scratch, stderr, tiny};
use maple_core::safetensors::{serialize, OwnedTensor, SafeTensors, TensorSource};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn train(data: &Path, out: &Path) -> Command {
    maple_train(data, out)
}

/// maple-train without the threads and depth `train` sets (to set them otherwise).
fn bare_train(data: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_maple-train"));
    c.arg(data).arg("--model").arg(tiny()).arg("--out").arg(out);
    c
}

/// Exit 1, no panic, the last line of stderr mentions every needle (warnings may precede it).
fn fails(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {e}");
    assert!(!e.contains("panicked"), "{e}");
    let last = e.trim_end().lines().last().unwrap_or_default();
    for n in needles {
        assert!(last.contains(n), "{last:?} does not mention {n:?}");
    }
}

/// A two-class ImageFolder of fixture images.
fn data(dir: &Path) -> PathBuf {
    let d = dir.join("ok");
    for (c, files) in [
        ("cat", ["la_64x64.png", "rgb_100x80.png"]),
        ("dog", ["palette_200x150.png", "photo_gray_97x131.jpg"]),
    ] {
        std::fs::create_dir_all(d.join(c)).unwrap();
        for f in files {
            std::fs::copy(fixtures().join("train").join(c).join(f), d.join(c).join(f)).unwrap();
        }
    }
    d
}

fn meta(p: &Path, key: &str) -> Option<String> {
    let b = std::fs::read(p).unwrap();
    let st = SafeTensors::parse(&b).unwrap();
    st.metadata(key).map(str::to_string)
}

// N1: every image unreadable ran forever (steps never counted); now one clear error, at once.
#[test]
fn data_none_of_which_can_be_read_is_an_error_not_a_hang() {
    let dir = scratch("train2-corrupt-all");
    let d = dir.join("corrupt_all");
    let jpeg = std::fs::read(fixtures().join("images/photo_320x240.jpg")).unwrap();
    for c in ["cat", "dog"] {
        std::fs::create_dir_all(d.join(c)).unwrap();
        std::fs::write(d.join(c).join("1.jpg"), b"garbage").unwrap();
        std::fs::write(d.join(c).join("2.jpg"), &jpeg[..100]).unwrap();
        std::fs::write(d.join(c).join("3.jpg"), b"garbage").unwrap();
    }
    let out = dir.join("o.st");
    for quiet in [false, true] {
        let mut c = train(&d, &out);
        c.args(["--epochs", "1", "--no-checkpoints"]);
        if quiet {
            c.arg("-q");
        }
        let o = run_within(&mut c, 120);
        fails(&o, &["corrupt_all", "could be read", "nothing to train on"]);
        // Each image is reported once at most, not once per try.
        let e = stderr(&o);
        if !quiet {
            assert!(e.contains("warning: skipped"), "{e}");
            for f in ["1.jpg", "2.jpg", "3.jpg"] {
                for c in ["cat", "dog"] {
                    let name = format!("{c}/{f}");
                    assert!(e.matches(&name).count() <= 1, "{name}: {e}");
                }
            }
        } else {
            assert_eq!(e.trim_end().lines().count(), 1, "{e}");
        }
        assert!(!out.exists());
        // With more epochs and steps than the data has images, the run still ends at once.
        let o = run_within(
            train(&d, &out).args(["--epochs", "50", "--batch-size", "1", "-q"]),
            120,
        );
        fails(&o, &["none of its 6 images could be read"]);
        assert!(!dir.join("o.st.checkpoints/epoch-1.safetensors").exists());
    }
}

// N2: one step whose only image fails kept its epoch from ever ending (the warm-up rate for
// the whole run, no checkpoint, epochs_done 0). Now it counts: 3 epochs, 3 checkpoints, and
// the bad image is reported once.
#[test]
fn an_unreadable_image_does_not_stop_the_epoch_from_ending() {
    let dir = scratch("train2-one-bad");
    let d = data(&dir);
    std::fs::write(d.join("dog/zz.jpg"), b"garbage").unwrap();
    let out = dir.join("p.st");
    let o = run_within(
        train(&d, &out).args(["--epochs", "3", "--batch-size", "1", "--no-shuffle"]),
        300,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o).matches("zz.jpg").count(), 1, "{}", stderr(&o));
    for e in 1..=3 {
        assert!(
            dir.join(format!("p.st.checkpoints/epoch-{e}.safetensors"))
                .is_file(),
            "epoch {e}: {}",
            stderr(&o)
        );
    }
    assert_eq!(meta(&out, "epochs_done").as_deref(), Some("3"));
    assert_eq!(meta(&out, "steps_done").as_deref(), Some("15"));
}

// N3: NaN, negative and overflowing hyper-parameters wrote an unusable file and exited 0.
#[test]
fn hyper_parameters_that_break_the_run_are_refused() {
    let dir = scratch("train2-lr");
    let d = data(&dir);
    let out = dir.join("n.st");
    for (flag, v) in [
        ("--lr", "nan"),
        ("--lr", "-0.1"),
        ("--lr", "inf"),
        ("--momentum", "-0.5"),
        ("--weight-decay", "nan"),
    ] {
        let o = train(&d, &out)
            .args([flag, v, "--max-steps", "1", "--no-checkpoints"])
            .output()
            .unwrap();
        fails(&o, &[flag, "finite number, 0 or more"]);
        assert!(!stderr(&o).contains("training"), "{}", stderr(&o));
    }
    // Finite but too large: the first (and last) update overflows the prompts.
    let o = train(&d, &out)
        .args(["--lr", "1e30", "--max-steps", "1", "--no-checkpoints"])
        .args(["--lr-schedule", "constant"])
        .output()
        .unwrap();
    fails(&o, &["step 1", "nothing was written", "smaller --lr"]);
    assert!(!out.exists());
    // With checkpoints: the good checkpoint of epoch 1 stays, nothing after it is written.
    let o = train(&d, &out)
        .args(["--lr", "1e30", "--epochs", "2", "--batch-size", "4"])
        .args(["--lr-schedule", "cosine"])
        .output()
        .unwrap();
    fails(&o, &["step 2", "nothing was written"]);
    let ck = dir.join("n.st.checkpoints");
    assert!(ck.join("epoch-1.safetensors").is_file());
    assert!(!ck.join("epoch-2.safetensors").exists());
    assert!(!out.exists());
}

// N9: absurd thread counts, batch sizes and context lengths panicked or aborted.
#[test]
fn absurd_sizes_are_clamped_or_refused() {
    let dir = scratch("train2-absurd");
    let d = data(&dir);
    let out = dir.join("a.st");
    for threads in ["18446744073709551615", "10000"] {
        let o = bare_train(&d, &out)
            .args(["--depth", "3", "--threads", threads, "--max-steps", "1"])
            .arg("--no-checkpoints")
            .output()
            .unwrap();
        assert!(o.status.success(), "--threads {threads}: {}", stderr(&o));
    }
    // A batch larger than the data is the data (one step per epoch), whatever its size.
    for b in ["18446744073709551615", "1000000000"] {
        let o = train(&d, &out)
            .args(["--batch-size", b, "--max-steps", "1", "--no-checkpoints"])
            .output()
            .unwrap();
        assert!(o.status.success(), "--batch-size {b}: {}", stderr(&o));
    }
    let o = train(&d, &out)
        .args(["--n-ctx", "18446744073709551615", "--no-checkpoints"])
        .output()
        .unwrap();
    fails(&o, &["n_ctx 18446744073709551615", "it must be 1..="]);
    let o = bare_train(&d, &out)
        .args(["--depth", "18446744073709551615", "--no-checkpoints"])
        .output()
        .unwrap();
    fails(
        &o,
        &["prompt depth 18446744073709551615", "it must be 1..="],
    );
}

// N9: a workspace that cannot fit is said up front, not an allocation abort. Under a 512 MiB
// address-space limit, 3000 long class names of the tiny model need about 1 GB.
#[cfg(target_os = "linux")]
#[test]
fn a_workspace_that_cannot_fit_is_refused_with_its_size() {
    let dir = scratch("train2-workspace");
    let d = dir.join("many");
    let png = fixtures().join("train/cat/la_64x64.png");
    // Names of about 55 tokens: the text tower runs 3000 sequences of about 62 tokens.
    let words = "x y ".repeat(26);
    for i in 0..3000 {
        let c = d.join(format!("c{i} {words}"));
        std::fs::create_dir_all(&c).unwrap();
        std::os::unix::fs::symlink(&png, c.join("a.png")).unwrap();
    }
    let bin = env!("CARGO_BIN_EXE_maple-train");
    let o = Command::new("bash")
        .arg("-c")
        .arg(
            "ulimit -v 524288 && exec \"$0\" \"$1\" --model \"$2\" --out \"$3\" --depth 3 \
             --threads 1 --no-checkpoints --max-steps 1",
        )
        .arg(bin)
        .arg(&d)
        .arg(tiny())
        .arg(dir.join("w.st"))
        .output()
        .unwrap();
    fails(&o, &["3000 classes", "workspace", "available"]);
}

/// A checkpoint of a short run on `d` (2 epochs, batch 2), and the run's final file.
fn checkpoint(dir: &Path, d: &Path, extra: &[&str]) -> (PathBuf, PathBuf) {
    let out = dir.join("run.st");
    let o = train(d, &out)
        .args(["--epochs", "2", "--batch-size", "2"])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    (dir.join("run.st.checkpoints/epoch-1.safetensors"), out)
}

// N10, N14: --resume read /dev/zero without end, and took what does not continue the run.
#[test]
fn resume_takes_only_a_checkpoint_of_the_same_run() {
    let dir = scratch("train2-resume");
    let d = data(&dir);
    let (ck, fin) = checkpoint(&dir, &d, &[]);
    let resume = |from: &Path, extra: &[&str]| {
        let mut c = train(&d, &dir.join("r.st"));
        if !extra.contains(&"--batch-size") {
            c.args(["--batch-size", "2"]);
        }
        c.args(["--epochs", "2", "--no-checkpoints"])
            .args(extra)
            .arg("--resume")
            .arg(from);
        run_within(&mut c, 120)
    };
    // The checkpoint itself continues the run.
    let o = resume(&ck, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    #[cfg(unix)]
    {
        let o = resume(Path::new("/dev/zero"), &[]);
        fails(&o, &["/dev/zero", "larger than"]);
    }
    fails(
        &resume(&fin, &[]),
        &["final prompts file", "not a checkpoint"],
    );
    fails(
        &resume(&ck, &["--batch-size", "1"]),
        &["--batch-size \"2\"", "this one has \"1\""],
    );
    fails(&resume(&ck, &["--lr", "0.01"]), &["--lr \"0.0035\""]);
    fails(
        &resume(&ck, &["--template", "a picture of a"]),
        &["--template \"a photo of a\""],
    );
    fails(&resume(&ck, &["--seed", "9"]), &["--seed \"1\""]);

    // A momentum tensor of another shape (it would have changed the result).
    let b = std::fs::read(&ck).unwrap();
    let st = SafeTensors::parse(&b).unwrap();
    let mut tensors: Vec<OwnedTensor> = Vec::new();
    let mut meta: Vec<(String, String)> = Vec::new();
    for k in [
        "format",
        "n_ctx",
        "prompt_depth",
        "template",
        "classes",
        "epochs_done",
        "steps_done",
        "seed",
        "class_list",
        "batch_size",
        "epochs",
        "lr",
        "lr_schedule",
        "momentum",
        "weight_decay",
        "shots",
        "augment",
        "shuffle",
    ] {
        meta.push((k.into(), st.metadata(k).unwrap().into()));
    }
    let mut bent = false;
    for n in st.names() {
        let t = st.tensor(n).unwrap();
        let mut shape = t.shape.clone();
        if !bent && n.starts_with("optimizer.momentum.") && shape.len() == 2 {
            shape.swap(0, 1);
            bent = shape[0] != shape[1];
        }
        tensors.push(OwnedTensor {
            name: n.to_string(),
            dtype: t.dtype,
            shape,
            data: t.data.to_vec(),
        });
    }
    assert!(bent);
    let m: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let bad = dir.join("bent.safetensors");
    std::fs::write(&bad, serialize(&tensors, &m)).unwrap();
    fails(&resume(&bad, &[]), &["optimizer.momentum.", "has shape"]);
}

// N14: class names were joined with ", ", so {a, b | c} and {a | b, c} passed as the same.
#[test]
fn resume_tells_classes_apart_whatever_their_names_hold() {
    let dir = scratch("train2-classes");
    let png = fixtures().join("train/cat/la_64x64.png");
    let make = |name: &str, classes: &[&str]| {
        let d = dir.join(name);
        for c in classes {
            std::fs::create_dir_all(d.join(c)).unwrap();
            std::fs::copy(&png, d.join(c).join("a.png")).unwrap();
        }
        d
    };
    let one = make("one", &["a, b", "c"]);
    let two = make("two", &["a", "b, c"]);
    let (ck, _) = checkpoint(&dir, &one, &[]);
    let o = train(&two, &dir.join("r.st"))
        .args(["--epochs", "2", "--batch-size", "2", "--no-checkpoints"])
        .arg("--resume")
        .arg(&ck)
        .output()
        .unwrap();
    fails(&o, &["other classes", "[\"a, b\",\"c\"]"]);
}

// N12: a checkpoint folder that cannot be written ended the run after an epoch, --out unwritten.
#[test]
fn the_checkpoint_folder_is_checked_before_training() {
    let dir = scratch("train2-ckpt");
    let d = data(&dir);
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let o = train(&d, &dir.join("p.st"))
        .arg("--checkpoints")
        .arg(&file)
        .output()
        .unwrap();
    fails(&o, &["a-file", "is not a folder"]);
    assert!(!stderr(&o).contains("training"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    // Under a file: cannot be made.
    let o = train(&d, &dir.join("p.st"))
        .arg("--checkpoints")
        .arg(file.join("sub"))
        .output()
        .unwrap();
    fails(&o, &["a-file/sub"]);
    assert!(!stderr(&o).contains("training"), "{}", stderr(&o));
    // Missing parents are made, before the first step.
    let deep = dir.join("x/y/z");
    let o = train(&d, &dir.join("p.st"))
        .args(["--epochs", "1", "--batch-size", "4"])
        .arg("--checkpoints")
        .arg(&deep)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(deep.join("epoch-1.safetensors").is_file());
    // A checkpoint that cannot be written mid-run (here a folder in its place; a full disk
    // alike) is a warning: the run goes on and writes its prompts file.
    let ck = dir.join("ck");
    std::fs::create_dir_all(ck.join("epoch-2.safetensors")).unwrap();
    let out = dir.join("q.st");
    let o = train(&d, &out)
        .args(["--epochs", "3", "--batch-size", "4"])
        .arg("--checkpoints")
        .arg(&ck)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warning: no checkpoint for this epoch")
            && stderr(&o).contains("epoch-2.safetensors"),
        "{}",
        stderr(&o)
    );
    assert!(out.is_file());
    assert!(ck.join("epoch-1.safetensors").is_file() && ck.join("epoch-3.safetensors").is_file());
}

// N13: --out on a device made DEVICE.checkpoints/ beside the device node; `--out -` wrote a
// file named `-`.
#[cfg(unix)]
#[test]
fn out_on_a_device_or_stdout() {
    let dir = scratch("train2-out");
    let d = data(&dir);
    // A private device node (root only; the system's /dev/null is never the test's target).
    let node = dir.join("null");
    let made = Command::new("mknod")
        .arg(&node)
        .args(["c", "1", "3"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mut targets = vec![fifo];
    if made {
        targets.push(node);
    }
    for t in &targets {
        // (Before the fix the run trained, then blocked opening the FIFO to write: a hang.)
        let o = run_within(train(&d, t).arg("--max-steps").arg("1"), 120);
        fails(
            &o,
            &[
                "not a file that a checkpoint folder can go beside",
                "--no-checkpoints",
            ],
        );
        let mut beside = t.clone().into_os_string();
        beside.push(".checkpoints");
        assert!(!Path::new(&beside).exists());
    }
    // `-`: the safetensors bytes on stdout, no file named `-`.
    let o = train(&d, Path::new("-"))
        .current_dir(&dir)
        .args(["--max-steps", "1", "--no-checkpoints"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let st = SafeTensors::parse(&o.stdout).unwrap();
    assert!(st.tensor("prompt_learner.ctx").is_some());
    assert!(!dir.join("-").exists());
}

// N4: the template a file was trained with was ignored by maple-classify.
#[test]
fn the_trained_template_is_used_unless_another_is_given() {
    let dir = scratch("train2-template");
    let d = data(&dir);
    let t = dir.join("t.st");
    let template = "a blurry picture showing one";
    let o = train(&d, &t)
        .args([
            "--template",
            template,
            "--max-steps",
            "2",
            "--no-checkpoints",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let classify = |extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_maple-classify"))
            .env("MAPLE_DEVICE", "cpu")
            .env("HF_HUB_OFFLINE", "1")
            .env("MAPLE_CACHE_DIR", dir.join("cache"))
            .arg(fixtures().join("images/photo_320x240.jpg"))
            .arg("--model")
            .arg(tiny())
            .arg("--prompts")
            .arg(&t)
            .args(["--labels", "cat,dog,red car", "--format", "json"])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        (String::from_utf8_lossy(&o.stdout).into_owned(), stderr(&o))
    };
    let (by_file, e) = classify(&[]);
    assert!(!e.contains("warning"), "{e}");
    let (given_same, e) = classify(&["--template", template]);
    assert!(!e.contains("warning"), "{e}");
    assert_eq!(by_file, given_same);
    let (other, e) = classify(&["--template", "a photo of a"]);
    assert!(
        e.contains(
            "warning: the prompts were trained with the template \"a blurry picture showing one\""
        ),
        "{e}"
    );
    assert_ne!(by_file, other);
}
