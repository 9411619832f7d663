//! Helpers the maple-classify end-to-end tests share (each test file is its own crate, so not
//! every file uses every helper).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// An empty directory of this name under the test target's temp dir.
pub fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The PyTorch golden file of the tiny model.
pub fn golden() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("golden_tiny.json")).unwrap())
        .unwrap()
}

/// Golden MaPLe logits of one fixture image.
pub fn golden_logits(g: &serde_json::Value, image: &str) -> Vec<f64> {
    let i = g["images"]
        .as_array()
        .unwrap()
        .iter()
        .position(|n| n == image)
        .unwrap();
    g["maple"]["logits"][i]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// Starts `cmd` with `input` on its stdin (closed after it) and `stdout` as given; stderr is
/// captured. The child is left running.
pub fn spawn_with_stdin(
    cmd: &mut std::process::Command,
    input: &[u8],
    stdout: std::process::Stdio,
) -> std::process::Child {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child
}
