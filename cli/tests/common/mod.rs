//! Helpers the maple-classify end-to-end tests share (each test file is its own crate, so not
//! every file uses every helper).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// The committed tiny synthetic model.
pub fn tiny() -> PathBuf {
    fixtures().join("tiny")
}

/// A child's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit 1, one line on stderr containing every `needle`, no panic.
pub fn fatal(o: &Output, needles: &[&str]) -> String {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {e}");
    assert!(!e.contains("panicked"), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "not one line: {e}");
    for n in needles {
        assert!(e.contains(n), "{e:?} does not mention {n:?}");
    }
    e
}

/// Runs `c` (stdin closed, output captured) for at most `secs` seconds: still running then
/// is a hang, and fails the test (the child is killed).
pub fn run_within(c: &mut Command, secs: u64) -> Output {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "still running after {secs} s (a hang); stderr ends {:?}",
                String::from_utf8_lossy(&o.stderr[o.stderr.len().saturating_sub(500)..])
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// maple-train on `data` into `out` with the tiny model (which needs `--depth 3`), 2 threads.
pub fn maple_train(data: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_maple-train"));
    c.env_remove("MAPLE_SIMD")
        .arg(data)
        .arg("--model")
        .arg(tiny())
        .arg("--out")
        .arg(out)
        .args(["--depth", "3", "--threads", "2"]);
    c
}
