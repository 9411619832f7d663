//! Fork safety: a classifier whose worker pool started before `fork()` keeps working in the
//! child (its workers exist only in the parent) and gives the parent's logits, PyTorch's. This
//! is what Python's multiprocessing (fork start method), Gunicorn-style pre-forking servers and
//! Ray's worker processes do to a model built at import time.
#![cfg(unix)]

mod common;
use common::*;
use maple::{Classifier, Device};
use std::time::{Duration, Instant};

#[test]
fn a_classifier_built_before_fork_classifies_in_the_child() {
    let dir = tiny_dir();
    let photo = fixtures().join("images/photo_320x240.jpg");
    let mut c = Classifier::builder(&dir)
        .prompts(dir.join("maple_prompts.safetensors"))
        .label_set(maple::read_labels(fixtures().join("labels.txt")).unwrap())
        .device(Device::Cpu)
        .threads(3)
        .build()
        .unwrap();
    let parent = c.classify_path(&photo).unwrap().logits;
    // The golden logits (PyTorch) for this photo, first label: the parent is right.
    let g = golden("golden_tiny.json");
    let i = g["images"]
        .as_array()
        .unwrap()
        .iter()
        .position(|v| v == "photo_320x240.jpg")
        .unwrap();
    let want0 = g["maple"]["logits"][i][0].as_f64().unwrap() as f32;
    assert!((parent[0] - want0).abs() < 1e-3);

    // SAFETY: the child only classifies (allocating, which glibc supports after fork) and
    // leaves with _exit; the parent waits for it.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let ok = match c.classify_path(&photo) {
            Ok(r) => r
                .logits
                .iter()
                .zip(&parent)
                .all(|(a, b)| (a - b).abs() < 1e-5),
            Err(_) => false,
        };
        drop(c); // the pool's drop must not wait for the parent's workers
        unsafe { libc::_exit(if ok { 0 } else { 3 }) };
    }
    // The parent's pool still works while the child runs.
    assert_eq!(c.classify_path(&photo).unwrap().logits, parent);
    let start = Instant::now();
    let mut status = 0;
    loop {
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the forked child hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(libc::WIFEXITED(status), "child status {status}");
    assert_eq!(libc::WEXITSTATUS(status), 0, "the child's logits differ");
}
