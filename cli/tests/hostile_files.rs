//! Hostile and odd input around the files the programs read and write, second round (issue 31:
//! N5–N8, N11, N15, N16): links and FIFOs planted at cache names, temporary files a signal or
//! a dead process leaves, a mapped cache cut short under a run, an endless stdin line,
//! converting a file onto itself, and the smaller cases. Each test failed before its fix.

mod common;

use common::{fatal, fixtures, run_within, scratch, spawn_with_stdin, stderr, tiny};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn image(n: &str) -> PathBuf {
    fixtures().join("images").join(n)
}

fn classify(cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_maple-classify"));
    c.env_remove("MAPLE_MODEL")
        .env_remove("MAPLE_SIMD")
        .env_remove("MAPLE_GPU_KERNELS")
        .env_remove("WGPU_BACKEND")
        .env("HF_HUB_OFFLINE", "1")
        .env("MAPLE_DEVICE", "cpu")
        .env("MAPLE_CACHE_DIR", cache)
        .args(["--labels", "cat,dog,a red car"])
        .arg("--model")
        .arg(tiny());
    c
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The cache files a warm run of the tiny model keeps (f32 panels, int8 Linears, text).
/// One int8 run of a fixture image (int8 keeps all three cache files).
fn int8(cache: &Path) -> Command {
    let mut c = classify(cache);
    c.args(["--precision", "int8"]).arg(image("rgb_100x80.png"));
    c
}

fn int8_run(cache: &Path) -> std::process::Output {
    int8(cache).output().unwrap()
}

fn warm_cache(cache: &Path) -> Vec<PathBuf> {
    let o = int8_run(cache);
    assert!(o.status.success(), "{}", stderr(&o));
    let files: Vec<PathBuf> = names(cache).iter().map(|n| cache.join(n)).collect();
    assert_eq!(files.len(), 3, "{:?}", names(cache));
    files
}

// N5 (security): a symbolic link planted at a cache name made the run overwrite the file it
// points to. Now the link itself is replaced by the cache file; its target is untouched.
#[cfg(unix)]
#[test]
fn links_planted_at_cache_names_are_replaced_not_followed() {
    let d = scratch("files-links");
    let cache = d.join("cache");
    let files = warm_cache(&cache);
    let mut victims = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let victim = d.join(format!("victim-{i}.txt"));
        std::fs::write(&victim, format!("precious {i}")).unwrap();
        std::fs::remove_file(f).unwrap();
        std::os::unix::fs::symlink(&victim, f).unwrap();
        victims.push(victim);
    }
    let o = int8_run(&cache);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not a regular file the cache wrote"),
        "{}",
        stderr(&o)
    );
    for (i, v) in victims.iter().enumerate() {
        assert_eq!(std::fs::read_to_string(v).unwrap(), format!("precious {i}"));
    }
    for f in &files {
        let m = std::fs::symlink_metadata(f).unwrap();
        assert!(
            m.file_type().is_file(),
            "{} is not a regular file",
            f.display()
        );
    }
    // And the rebuilt cache is used: a third run warns of nothing.
    let o = int8_run(&cache);
    assert!(o.status.success());
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
}

// N5: a cache directory other users can write to is not used.
#[cfg(unix)]
#[test]
fn a_cache_directory_everyone_can_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let d = scratch("files-shared-cache");
    let cache = d.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = classify(&cache)
        .arg(image("rgb_100x80.png"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("writable by every user"),
        "{}",
        stderr(&o)
    );
    assert!(names(&cache).is_empty(), "{:?}", names(&cache));
}

// N6: a FIFO at a cache name hung the run forever (opened before its type was checked).
#[cfg(unix)]
#[test]
fn fifos_at_cache_names_do_not_hang() {
    let d = scratch("files-fifos");
    let cache = d.join("cache");
    let files = warm_cache(&cache);
    for f in &files {
        std::fs::remove_file(f).unwrap();
        let c = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }
    let o = run_within(&mut int8(&cache), 120);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in &files {
        assert!(std::fs::symlink_metadata(f).unwrap().file_type().is_file());
    }
}

/// A process id that no process has now (a child that has exited).
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

// N7: temporary files of killed runs stayed forever. The next run removes those of dead
// processes (never a live one's).
#[cfg(unix)]
#[test]
fn temporaries_of_dead_processes_are_removed_by_the_next_run() {
    let d = scratch("files-stale");
    let cache = d.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let dead = dead_pid();
    let live = std::process::id();
    let stale = cache.join(format!(".packed-0123.bin.{dead}-0.tmp"));
    let stale_text = cache.join(format!(".text-4567.bin.{dead}-3.tmp"));
    let running = cache.join(format!(".packed-0123.bin.{live}-0.tmp"));
    for f in [&stale, &stale_text, &running] {
        std::fs::write(f, vec![0u8; 1000]).unwrap();
    }
    let out = d.join("out.csv");
    let stale_out = d.join(format!(".out.csv.{dead}-0.tmp"));
    std::fs::write(&stale_out, "half").unwrap();
    let o = classify(&cache)
        .arg(image("rgb_100x80.png"))
        .args(["-f", "csv", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stale.exists() && !stale_text.exists() && !stale_out.exists());
    assert!(
        running.exists(),
        "a live process's temporary file was removed"
    );
}

// N7: a signal removed only maple-classify's --output/--report temporaries. Every binary now
// removes every temporary file it has open: maple-synth killed while writing a 600 MB model.
#[cfg(target_os = "linux")]
#[test]
fn a_signal_leaves_no_temporary_file_in_any_binary() {
    use std::os::unix::process::ExitStatusExt;
    let d = scratch("files-synth-signal");
    let out = d.join("model");
    let mut child = Command::new(env!("CARGO_BIN_EXE_maple-synth"))
        .arg("--out")
        .arg(&out)
        .args(["--size", "full"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let tmp = || {
        std::fs::read_dir(&out)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            })
            .unwrap_or(false)
    };
    while !tmp() && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(tmp(), "no temporary file appeared");
    // SAFETY: sends a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert_eq!(st.signal(), Some(libc::SIGTERM), "{st:?}");
    let left: Vec<String> = names(&out)
        .into_iter()
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

// N8: truncating the packed-weight cache under a run killed it with SIGBUS, without a word,
// its --output temporary left behind.
#[cfg(target_os = "linux")]
#[test]
fn a_mapped_cache_cut_short_is_a_clear_error() {
    let d = scratch("files-sigbus");
    let cache = d.join("cache");
    let o = classify(&cache)
        .arg(image("rgb_100x80.png"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let packed = maple::packcache::path(&cache, &tiny().join("model.safetensors"));
    assert!(packed.is_file());
    let out = d.join("out.csv");
    let list: String = (0..20000)
        .map(|_| format!("{}\n", image("rgb_100x80.png").display()))
        .collect();
    let child = spawn_with_stdin(
        classify(&cache).args(["-", "-f", "csv", "-o"]).arg(&out),
        list.as_bytes(),
        Stdio::null(),
    );
    let temporary = || names(&d).iter().any(|n| n.ends_with(".tmp"));
    let t = Instant::now();
    while !temporary() && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(temporary(), "no temporary output appeared");
    std::thread::sleep(Duration::from_millis(300));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&packed)
        .unwrap()
        .set_len(0)
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("was cut short by another program"), "{e}");
    assert!(!out.exists());
    assert!(!temporary(), "left behind: {:?}", names(&d));
    // The next run rebuilds the damaged cache.
    let o = classify(&cache)
        .arg(image("rgb_100x80.png"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("rebuilding it"), "{}", stderr(&o));
}

/// The peak RSS of a child (kilobytes), waiting for it with wait4.
#[cfg(target_os = "linux")]
fn wait_peak_kb(child: std::process::Child) -> (i32, i64) {
    let mut status = 0;
    // SAFETY: wait4 fills `status` and `u` for our own child.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        let r = libc::wait4(child.id() as i32, &mut status, 0, &mut u);
        assert_eq!(r, child.id() as i32);
        (libc::WEXITSTATUS(status), u.ru_maxrss)
    }
}

// N11: `-` read a stdin line of any length into memory (3 GB line: 5.9 GB, abort). A line
// over 64 KiB is now skipped without being held; the paths around it are classified.
#[cfg(target_os = "linux")]
#[test]
fn an_endless_stdin_line_is_not_held_in_memory() {
    let d = scratch("files-long-line");
    let mut c = classify(&d.join("cache"));
    c.args(["-", "-f", "csv"]);
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Made after the child started (a child's peak RSS counts what it shared before exec).
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut input = Vec::new();
        input.extend_from_slice(format!("{}\n", image("rgb_100x80.png").display()).as_bytes());
        input.extend(std::iter::repeat_n(b'x', 300 << 20));
        input.push(b'\n');
        input.extend_from_slice(format!("{}\n", image("la_64x64.png").display()).as_bytes());
        let _ = stdin.write_all(&input);
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let (mut o, mut e) = (String::new(), String::new());
        out.read_to_string(&mut o).unwrap();
        err.read_to_string(&mut e).unwrap();
        (o, e)
    });
    let (code, peak_kb) = wait_peak_kb(child);
    writer.join().unwrap();
    let (o, e) = reader.join().unwrap();
    assert_eq!(code, 2, "{e}");
    assert!(e.contains("line 2 of stdin is over 64 KiB long"), "{e}");
    assert!(
        o.contains("rgb_100x80.png,1,") && o.contains("la_64x64.png,1,"),
        "{o}"
    );
    assert!(
        peak_kb < 200 << 10,
        "peak RSS {peak_kb} kB for a 300 MB line"
    );
}

// N15: `maple-convert IN IN` replaced its input.
#[test]
fn convert_refuses_to_write_over_its_input() {
    let d = scratch("files-convert-self");
    let f = d.join("prompts.safetensors");
    std::fs::copy(tiny().join("maple_prompts.safetensors"), &f).unwrap();
    let before = std::fs::read(&f).unwrap();
    let convert = |to: &Path| {
        Command::new(env!("CARGO_BIN_EXE_maple-convert"))
            .arg(&f)
            .arg(to)
            .args(["--dtype", "f16"])
            .output()
            .unwrap()
    };
    fatal(
        &convert(&f),
        &["prompts.safetensors", "is the input file itself"],
    );
    #[cfg(unix)]
    {
        let link = d.join("link.safetensors");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        fatal(
            &convert(&link),
            &["link.safetensors", "is the input file itself"],
        );
        let hard = d.join("hard.safetensors");
        std::fs::hard_link(&f, &hard).unwrap();
        fatal(&convert(&hard), &["is the input file itself"]);
    }
    assert_eq!(std::fs::read(&f).unwrap(), before);
    // Another name converts.
    let o = convert(&d.join("other.safetensors"));
    assert!(o.status.success(), "{}", stderr(&o));
}

// N16: control characters in file names were printed raw (a newline split a CSV record).
#[cfg(unix)]
#[test]
fn control_characters_in_names_are_escaped() {
    let d = scratch("files-control");
    let odd = d.join("a\nb\x1b[31m.png");
    std::fs::copy(image("rgb_100x80.png"), &odd).unwrap();
    for f in ["csv", "text", "json"] {
        let o = classify(&d.join("cache"))
            .arg(&odd)
            .args(["-f", f])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let s = String::from_utf8_lossy(&o.stdout);
        let want = if f == "json" {
            // JSON doubles the backslash of the escape.
            "a\\\\x0Ab\\\\x1B[31m.png"
        } else {
            "a\\x0Ab\\x1B[31m.png"
        };
        assert!(s.contains(want), "{f}: {s:?}");
        assert!(!s.contains('\x1b'), "{f}: {s:?}");
    }
    // On stderr too.
    std::fs::write(d.join("bad\rname.png"), "not a png").unwrap();
    let o = classify(&d.join("cache"))
        .arg(d.join("bad\rname.png"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("bad\\x0Dname.png"), "{}", stderr(&o));
    assert!(!stderr(&o).contains('\r'));
}

// N16: a relative XDG_CACHE_HOME was used relative to the working directory (the XDG spec
// says to ignore it).
#[cfg(all(unix, not(target_os = "macos")))]
#[test]
fn a_relative_xdg_cache_home_is_ignored() {
    let d = scratch("files-xdg");
    let home = d.join("home");
    let work = d.join("work");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let o = classify(Path::new("unused"))
        .env_remove("MAPLE_CACHE_DIR")
        .env("XDG_CACHE_HOME", "relative-cache")
        .env("HOME", &home)
        .current_dir(&work)
        .arg(image("rgb_100x80.png"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(names(&work).is_empty(), "{:?}", names(&work));
    assert!(!names(&home.join(".cache/maple")).is_empty());
}

// N16: the smaller cases.
#[test]
fn smaller_cases_say_what_is_wrong() {
    let d = scratch("files-smaller");
    let cache = d.join("cache");
    // MAPLE_GPU_KERNELS=bogus was ignored with --device cpu and only a notice under auto.
    let o = classify(&cache)
        .env("MAPLE_GPU_KERNELS", "bogus")
        .arg(image("rgb_100x80.png"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warning: MAPLE_GPU_KERNELS=\"bogus\" is not a kernel set"),
        "{}",
        stderr(&o)
    );
    let o = classify(&cache)
        .env("MAPLE_GPU_KERNELS", "bogus")
        .args(["--device", "auto"])
        .arg(image("rgb_100x80.png"))
        .output()
        .unwrap();
    fatal(
        &o,
        &["MAPLE_GPU_KERNELS=\"bogus\"", "simple, tiled, coopmat"],
    );
    // --labels errors named a line of a list that has none.
    let o = Command::new(env!("CARGO_BIN_EXE_maple-classify"))
        .env("MAPLE_DEVICE", "cpu")
        .env("MAPLE_CACHE_DIR", &cache)
        .args(["--labels", "cat,dog,Cat", "--model"])
        .arg(tiny())
        .arg(image("rgb_100x80.png"))
        .output()
        .unwrap();
    fatal(&o, &["--labels: item 3: duplicate label \"Cat\""]);
    // -o X --report X lost one of them.
    let x = d.join("x.out");
    let o = classify(&cache)
        .arg(image("rgb_100x80.png"))
        .arg("-o")
        .arg(&x)
        .arg("--report")
        .arg(&x)
        .output()
        .unwrap();
    fatal(&o, &["--output and --report are the same file"]);
    assert!(!x.exists());
    // maple-synth --n-ctx 1000000000 allocated 7.6 GB before failing.
    for (flag, v) in [
        ("--n-ctx", "1000000000"),
        ("--depth", "18446744073709551615"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_maple-synth"))
            .arg("--out")
            .arg(d.join("synth"))
            .args(["--size", "tiny", flag, v])
            .output()
            .unwrap();
        fatal(&o, &[v, "it must be 1..="]);
        assert!(!d.join("synth").exists());
    }
}

// N16: --precision f16 under --device auto ran f32 on a CPU fallback without a word.
#[cfg(feature = "gpu")]
#[test]
fn f16_on_a_cpu_fallback_is_said() {
    let d = scratch("files-f16-auto");
    let o = classify(&d.join("cache"))
        .env("MAPLE_DEVICE", "auto")
        .args(["--precision", "f16"])
        .arg(image("rgb_100x80.png"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    // On a machine with a hardware GPU the run is on it, with f16 weights: nothing to say.
    if e.contains("CPU") {
        assert!(e.contains("f16 precision is GPU weight storage"), "{e}");
    }
}
