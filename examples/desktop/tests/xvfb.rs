//! The desktop app as a person sees it: started under Xvfb (a virtual X display) on the tiny
//! model with a fixture photo, it must show the label PyTorch ranks first
//! (tests/fixtures/golden_tiny.json) and draw a window that is not blank. Fails, never skips,
//! when Xvfb is missing (tools/test.sh installs it). The screenshot is left in
//! target/desktop-test/screenshot.png.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts Xvfb on a free display number; returns it with the process.
fn xvfb() -> (String, Killed) {
    for n in (90 + std::process::id() % 60)..200 {
        if Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
            || Path::new(&format!("/tmp/.X{n}-lock")).exists()
        {
            continue;
        }
        let child = Command::new("Xvfb")
            .args([
                &format!(":{n}"),
                "-screen",
                "0",
                "1024x640x24",
                "-nolisten",
                "tcp",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb is not installed (Debian package xvfb; tools/test.sh installs it)");
        let mut x = Killed(child);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() {
                return (format!(":{n}"), x);
            }
            if let Ok(Some(_)) = x.0.try_wait() {
                break; // lost a race for this number: try the next
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("could not start Xvfb");
}

/// Of `labels`, the one with the highest golden MaPLe logit for `image`, and that logit.
fn golden_best(image: &str, labels: &[&str]) -> (String, f64) {
    let g: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/golden_tiny.json")).unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = g["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let i = g["images"]
        .as_array()
        .unwrap()
        .iter()
        .position(|v| v.as_str() == Some(image))
        .unwrap();
    labels
        .iter()
        .map(|l| {
            let j = names.iter().position(|n| n == l).unwrap();
            (l.to_string(), g["maple"]["logits"][i][j].as_f64().unwrap())
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap()
}

#[test]
fn shows_the_golden_top1_in_a_window_that_is_not_blank() {
    let (display, _x) = xvfb();
    let out = root().join("target/desktop-test");
    std::fs::create_dir_all(&out).unwrap();
    let shot = out.join("screenshot.png");
    let _ = std::fs::remove_file(&shot);
    let tiny = root().join("tests/fixtures/tiny");
    let labels = ["cat", "dog", "a red car", "Eiffel Tower"];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_maple-desktop"));
    cmd.env("DISPLAY", &display)
        .env_remove("WAYLAND_DISPLAY")
        .args(["--model".as_ref(), tiny.as_os_str()])
        .args([
            "--prompts".as_ref(),
            tiny.join("maple_prompts.safetensors").as_os_str(),
        ])
        .args([
            "--image".as_ref(),
            root()
                .join("tests/fixtures/images/photo_320x240.jpg")
                .as_os_str(),
        ])
        .args(["--labels", &labels.join(",")])
        .args(["--screenshot".as_ref(), shot.as_os_str()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if std::env::var_os("WGPU_BACKEND").is_none() {
        cmd.env("WGPU_BACKEND", "vulkan");
    }
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        // The app quits by itself after the screenshot; a hang must not hang the test run.
        std::thread::sleep(Duration::from_secs(300));
        let _ = Command::new("kill").arg(pid.to_string()).status();
    });
    let run = child.wait_with_output().unwrap();
    drop(watchdog);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "maple-desktop failed: {}\n{stdout}\n{stderr}",
        run.status
    );
    eprintln!("{}", stdout.trim());

    let (best, logit) = golden_best("photo_320x240.jpg", &labels);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("top-1: "))
        .expect("no top-1 line");
    assert!(
        line.starts_with(&format!("top-1: {best} ")),
        "{line}, golden says {best}"
    );
    let shown: f64 = line
        .split("(logit ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no logit in {line}"));
    assert!(
        (shown - logit).abs() < 2e-3,
        "logit {shown} vs golden {logit}"
    );

    // Not blank: many colours, no colour covering nearly everything, and the score bars' blue.
    let img = image::open(&shot).unwrap().to_rgba8();
    assert!(
        img.width() >= 400 && img.height() >= 300,
        "{}×{}",
        img.width(),
        img.height()
    );
    let mut counts = std::collections::HashMap::new();
    for p in img.pixels() {
        *counts.entry(p.0).or_insert(0usize) += 1;
    }
    let total = (img.width() * img.height()) as usize;
    let commonest = counts.values().max().copied().unwrap_or(0);
    assert!(counts.len() >= 50, "only {} colours", counts.len());
    assert!(
        commonest * 100 < total * 95,
        "one colour covers {commonest} of {total} pixels"
    );
    // (within a few levels: the renderer dithers)
    let near = |c: &[u8; 4]| {
        (c[0] as i32 - 59).abs() <= 4
            && (c[1] as i32 - 111).abs() <= 4
            && (c[2] as i32 - 216).abs() <= 4
    };
    let bar: usize = counts.iter().filter(|(c, _)| near(c)).map(|(_, n)| n).sum();
    assert!(bar > 200, "no score bar drawn ({bar} bar-blue pixels)");
    eprintln!("screenshot: {} ({} colours)", shot.display(), counts.len());
}
