//! Memory of --output and --report (issue 15, defects 10 and 11). Alone in its binary: peak RSS
//! is read for all children of the test process at once (getrusage), so nothing else may run
//! beside it, and each comparison runs its baseline first.

mod common;

use common::{fixtures, scratch, spawn_with_stdin};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn tiny() -> PathBuf {
    fixtures().join("tiny")
}
fn image(n: &str) -> PathBuf {
    fixtures().join("images").join(n)
}

/// Peak RSS of every child waited for so far (Linux: kilobytes).
#[cfg(target_os = "linux")]
fn children_peak_kb() -> i64 {
    // SAFETY: getrusage fills the struct it is given.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u.ru_maxrss
    }
}

// 10, 11. --output streams (memory does not grow with the results) and --report keeps
// thumbnails only.
#[cfg(target_os = "linux")]
#[test]
fn output_and_report_memory_do_not_grow() {
    let d = scratch("hostile-memory");
    // 300 images × 1000 labels as JSON: about 20 MB of records.
    let labels: String = (0..1000).map(|i| format!("class number {i}\n")).collect();
    std::fs::write(d.join("labels.txt"), labels).unwrap();
    let list: String = (0..300)
        .map(|_| format!("{}\n", image("rgb_100x80.png").display()))
        .collect();
    let run = |extra: &[&str]| {
        let mut child = spawn_with_stdin(
            Command::new(env!("CARGO_BIN_EXE_maple-classify"))
                .env("MAPLE_DEVICE", "cpu")
                .env("MAPLE_CACHE_DIR", d.join("cache"))
                .args(["-", "-f", "json", "--classes"])
                .arg(d.join("labels.txt"))
                .arg("--model")
                .arg(tiny())
                .args(extra),
            list.as_bytes(),
            Stdio::piped(),
        );
        let mut out = Vec::new();
        child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        let st = child.wait().unwrap();
        assert!(st.success());
        out.len()
    };
    run(&[]); // fills the text cache
    let streamed = run(&[]);
    assert!(streamed > 15_000_000, "{streamed} bytes");
    let base = children_peak_kb();
    let out = d.join("out.json");
    run(&["-o", out.to_str().unwrap()]);
    let with_file = children_peak_kb();
    assert_eq!(std::fs::metadata(&out).unwrap().len() as usize, streamed);
    assert!(
        with_file < base + 8_000,
        "--output peak {with_file} kB vs {base} kB to stdout"
    );

    // An 8000×6000 photo (144 MB of pixels) with and without --report.
    let big = d.join("big.png");
    let img = image::RgbImage::from_fn(8000, 6000, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 239) as u8])
    });
    img.save(&big).unwrap();
    drop(img);
    let one = |extra: &[&str]| {
        let st = Command::new(env!("CARGO_BIN_EXE_maple-classify"))
            .env("MAPLE_DEVICE", "cpu")
            .env("MAPLE_CACHE_DIR", d.join("cache"))
            .arg(&big)
            .args(["--labels", "cat,dog", "--model"])
            .arg(tiny())
            .args(extra)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    };
    one(&[]);
    let base = children_peak_kb();
    one(&["--report", d.join("r.html").to_str().unwrap()]);
    let with_report = children_peak_kb();
    assert!(
        with_report < base + 40_000,
        "--report peak {with_report} kB vs {base} kB without"
    );
    assert!(std::fs::read_to_string(d.join("r.html"))
        .unwrap()
        .contains("data:image/jpeg;base64,"));
}
