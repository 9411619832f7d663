//! Hostile and odd input, as issue 15 found it: where results go (devices, FIFOs, links,
//! modes, `-`, closed stdout, unwritable places), paths that are not UTF-8, pipes as images,
//! directories where files belong, NaN weights, configs that do not match their weights,
//! symlink trees, and typos in environment variables. Each test failed before its fix.

mod common;

use common::{fatal, fixtures, scratch, spawn_with_stdin, stderr, tiny};
use maple_core::safetensors::{serialize, OwnedTensor};
use maple_core::synth::{clip_tensors, hf_config_json, maple_tensors, tiny_config};
use maple_core::Dtype;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn image(n: &str) -> PathBuf {
    fixtures().join("images").join(n)
}

fn classify() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_maple-classify"));
    c.env_remove("MAPLE_MODEL")
        .env_remove("MAPLE_SIMD")
        .env_remove("WGPU_BACKEND")
        .env("HF_HUB_OFFLINE", "1")
        .env("MAPLE_DEVICE", "cpu")
        .env(
            "MAPLE_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("text-cache-hostile"),
        )
        .args(["--labels", "cat,dog,a red car"])
        .arg("--model")
        .arg(tiny());
    c
}

fn ok(o: &Output) {
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(o));
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

// 1. Destinations that are not plain files, and `-`.
#[cfg(unix)]
#[test]
fn outputs_into_devices_links_fifos_and_stdout() {
    use std::os::unix::fs::PermissionsExt;
    let d = scratch("hostile-outputs");
    let img = image("photo_320x240.jpg");
    // A device stays a device. The devices are private nodes (mknod, as root: CI runs as root),
    // never the system's /dev/null, which a regression would replace with a file.
    let null = private_device(&d, "null", 3);
    let full = private_device(&d, "full", 7);
    if let (Some(null), Some(full)) = (&null, &full) {
        let o = classify().arg(&img).arg("-o").arg(null).output().unwrap();
        ok(&o);
        assert!(
            !std::fs::metadata(null).unwrap().is_file(),
            "device replaced"
        );
        let o = classify()
            .arg(&img)
            .arg("--report")
            .arg(null)
            .output()
            .unwrap();
        ok(&o);
        assert!(
            !std::fs::metadata(null).unwrap().is_file(),
            "device replaced"
        );
        // A full device is an error, named.
        let o = classify().arg(&img).arg("-o").arg(full).output().unwrap();
        fatal(&o, &["full", "No space left"]);
        assert!(
            !std::fs::metadata(full).unwrap().is_file(),
            "device replaced"
        );
    } else {
        eprintln!("not root: the device cases were not run (CI runs them)");
    }
    // A 0600 file keeps its mode; a symlink stays a link and its target gets the results.
    let secret = d.join("secret.json");
    std::fs::write(&secret, "old").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = d.join("link.json");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let o = classify()
        .arg(&img)
        .args(["-f", "json", "-o"])
        .arg(&link)
        .output()
        .unwrap();
    ok(&o);
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::read_to_string(&secret)
        .unwrap()
        .contains("\"image\""));
    assert_eq!(mode(&secret), 0o600);
    // A FIFO is written into (a reader on the other end gets every record).
    let fifo = d.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    let o = classify()
        .arg(&img)
        .args(["-f", "csv", "-o"])
        .arg(&fifo)
        .output()
        .unwrap();
    ok(&o);
    let got = reader.join().unwrap();
    assert!(
        got.starts_with("image,rank,label,logit,prob,error\n"),
        "{got}"
    );
    assert_eq!(got.lines().count(), 4);
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo_like());
    // /dev/stdout names whatever stdout is: a pipe, or a file (written in place).
    #[cfg(target_os = "linux")]
    {
        let o = classify()
            .arg(&img)
            .args(["-f", "csv", "-o", "/dev/stdout"])
            .output()
            .unwrap();
        ok(&o);
        assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 4);
        let redirected = d.join("redirected.csv");
        let o = classify()
            .arg(&img)
            .args(["-f", "csv", "-o", "/dev/stdout"])
            .stdout(std::fs::File::create(&redirected).unwrap())
            .output()
            .unwrap();
        ok(&o);
        assert_eq!(
            std::fs::read_to_string(&redirected)
                .unwrap()
                .lines()
                .count(),
            4
        );
    }
    // `-o -` is stdout, not a file named `-`.
    let o = classify()
        .current_dir(&d)
        .arg(&img)
        .args(["-f", "csv", "-o", "-"])
        .output()
        .unwrap();
    ok(&o);
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 4);
    assert!(!d.join("-").exists());
    // maple-convert: a device output stays a device; `-` writes the file to a pipe.
    let conv = |out: &Path| {
        Command::new(env!("CARGO_BIN_EXE_maple-convert"))
            .arg(tiny().join("maple_prompts.safetensors"))
            .arg(out)
            .current_dir(&d)
            .output()
            .unwrap()
    };
    if let Some(null) = &null {
        ok(&conv(null));
        assert!(
            !std::fs::metadata(null).unwrap().is_file(),
            "device replaced"
        );
    }
    let o = conv(Path::new("-"));
    ok(&o);
    assert!(!d.join("-").exists());
    let header = u64::from_le_bytes(o.stdout[..8].try_into().unwrap()) as usize;
    assert!(o.stdout[8..8 + header].starts_with(b"{"), "not safetensors");
}

/// A character device node `dir/name` for the kernel's memory device `minor` (3: null, 7: full);
/// `None` unless this process may create one.
#[cfg(unix)]
fn private_device(dir: &Path, name: &str, minor: u32) -> Option<PathBuf> {
    let p = dir.join(name);
    let made = Command::new("mknod")
        .arg(&p)
        .args(["c", "1", &minor.to_string()])
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success();
    made.then_some(p)
}

#[cfg(unix)]
trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}
#[cfg(unix)]
impl FifoLike for std::fs::FileType {
    fn is_fifo_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_fifo()
    }
}

// 22. Nowhere to write: found before any work, and a closed stdout is an error, not exit 0.
#[cfg(unix)]
#[test]
fn unwritable_destinations_fail_first_and_closed_stdout_fails() {
    use std::os::unix::process::CommandExt;
    let d = scratch("hostile-unwritable");
    // The model is missing too: the output's error comes first, before the model is looked at.
    let o = Command::new(env!("CARGO_BIN_EXE_maple-classify"))
        .env("MAPLE_DEVICE", "cpu")
        .arg(image("photo_320x240.jpg"))
        .args(["--labels", "cat,dog", "--model"])
        .arg(d.join("no-model"))
        .arg("-o")
        .arg(d.join("no/such/dir/out.csv"))
        .output()
        .unwrap();
    fatal(&o, &["out.csv", "is not a directory"]);
    let o = classify()
        .arg(image("photo_320x240.jpg"))
        .arg("--report")
        .arg(&d)
        .output()
        .unwrap();
    fatal(&o, &["is a directory"]);
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0, "left files");
    // maple-convert checks its output before it reads (here: an endless input).
    let o = Command::new(env!("CARGO_BIN_EXE_maple-convert"))
        .arg("/dev/zero")
        .arg(d.join("no/such/dir/out.safetensors"))
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("out.safetensors") && e.contains("is not a directory"),
        "{e}"
    );
    // stdout closed (`>&-`).
    let mut c = classify();
    c.arg(image("photo_320x240.jpg"));
    // SAFETY: only async-signal-safe close(2) between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::close(1);
            Ok(())
        });
    }
    let o = c.stderr(Stdio::piped()).output().unwrap();
    fatal(&o, &["stdout is closed"]);
}

// 2. Paths on stdin are bytes: a name that is not UTF-8 neither stops the list nor merges.
#[cfg(target_os = "linux")]
#[test]
fn stdin_paths_that_are_not_utf8() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let d = scratch("hostile-stdin-bytes");
    let latin1 = d.join(OsStr::from_bytes(b"caf\xe9.png"));
    let other = d.join(OsStr::from_bytes(b"caf\xc3.png"));
    std::fs::copy(image("rgb_100x80.png"), &latin1).unwrap();
    std::fs::copy(image("rgb_451x300.png"), &other).unwrap();
    let mut list = Vec::new();
    list.extend_from_slice(latin1.as_os_str().as_bytes());
    list.push(b'\n');
    list.extend_from_slice(other.as_os_str().as_bytes());
    list.extend_from_slice(b"\r\n");
    list.extend_from_slice(image("photo_320x240.jpg").as_os_str().as_bytes());
    list.push(b'\n');
    let child = spawn_with_stdin(classify().args(["-", "-f", "json"]), &list, Stdio::piped());
    let o = child.wait_with_output().unwrap();
    ok(&o);
    let names: Vec<String> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["image"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names[0].ends_with("caf\\xE9.png"), "{names:?}");
    assert!(names[1].ends_with("caf\\xC3.png"), "{names:?}");
    assert!(names[2].ends_with("photo_320x240.jpg"));
}

// 15. Pipes and devices as image inputs are read as streams.
#[cfg(target_os = "linux")]
#[test]
fn images_from_pipes() {
    let bytes = std::fs::read(image("photo_320x240.jpg")).unwrap();
    let child = spawn_with_stdin(
        classify().args(["/dev/stdin", "-f", "json"]),
        &bytes,
        Stdio::piped(),
    );
    let piped = child.wait_with_output().unwrap();
    ok(&piped);
    let from_file = classify()
        .arg(image("photo_320x240.jpg"))
        .args(["-f", "json"])
        .output()
        .unwrap();
    let scores = |o: &Output| {
        let v: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
        v["scores"].clone()
    };
    assert_eq!(scores(&piped), scores(&from_file));
}

// 16. A directory where a file belongs says so, and names the checkpoint inside.
#[test]
fn directories_given_as_prompts_or_convert_input() {
    let d = scratch("hostile-dir-prompts");
    let run = d.join("seed1");
    std::fs::create_dir_all(run.join("MultiModalPromptLearner")).unwrap();
    for n in ["model.pth.tar-2", "model.pth.tar-5"] {
        std::fs::copy(
            fixtures().join("checkpoints/maple_tiny/MultiModalPromptLearner/model.pth.tar-5"),
            run.join("MultiModalPromptLearner").join(n),
        )
        .unwrap();
    }
    let o = classify()
        .arg(image("photo_320x240.jpg"))
        .arg("--prompts")
        .arg(&run)
        .output()
        .unwrap();
    fatal(
        &o,
        &[
            "seed1: is a directory",
            "MultiModalPromptLearner/model.pth.tar-5",
        ],
    );
    let o = Command::new(env!("CARGO_BIN_EXE_maple-convert"))
        .arg(run.join("MultiModalPromptLearner"))
        .arg(d.join("out.safetensors"))
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("is a directory") && e.contains("model.pth.tar-5"),
        "{e}"
    );
    assert!(!d.join("out.safetensors").exists());
}

// 9. --prompts and maple-convert's input have limits: /dev/zero is refused, not read forever.
#[cfg(target_os = "linux")]
#[test]
fn endless_prompts_and_convert_inputs() {
    let o = classify()
        .arg(image("photo_320x240.jpg"))
        .args(["--prompts", "/dev/zero"])
        .output()
        .unwrap();
    fatal(&o, &["/dev/zero", "a stream of over 1.0 GiB, larger than"]);
    let d = scratch("hostile-endless");
    let o = Command::new(env!("CARGO_BIN_EXE_maple-convert"))
        .arg("/dev/zero")
        .arg(d.join("out.safetensors"))
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("/dev/zero") && e.contains("larger than"), "{e}");
}

/// A tiny model directory (f32, seed 0) whose tensors `edit` may change.
fn model_with(dir: &Path, edit: impl Fn(&mut Vec<OwnedTensor>)) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = tiny_config();
    std::fs::write(dir.join("config.json"), hf_config_json(&cfg)).unwrap();
    let mut t = clip_tensors(&cfg, 0, Dtype::F32);
    edit(&mut t);
    std::fs::write(dir.join("model.safetensors"), serialize(&t, &[])).unwrap();
    let p = maple_tensors(&cfg, 2, 2, 0);
    std::fs::write(dir.join("prompts.safetensors"), serialize(&p, &[])).unwrap();
    dir.to_path_buf()
}

fn set_f32(t: &mut [OwnedTensor], name: &str, at: usize, v: f32) {
    let t = t.iter_mut().find(|t| t.name == name).unwrap();
    assert_eq!(t.dtype, Dtype::F32);
    t.data[4 * at..4 * at + 4].copy_from_slice(&v.to_le_bytes());
}

fn run_model(dir: &Path, cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_maple-classify"))
        .env("MAPLE_DEVICE", "cpu")
        .env("MAPLE_CACHE_DIR", cache)
        .arg(image("photo_320x240.jpg"))
        .args(["--labels", "cat,dog", "-f", "json", "--model"])
        .arg(dir)
        .arg("--prompts")
        .arg(dir.join("prompts.safetensors"))
        .output()
        .unwrap()
}

// 13. NaN or infinite weights: a clear error naming the tensor, and no poisoned cache file.
#[test]
fn non_finite_weights_are_named() {
    let d = scratch("hostile-nan");
    let cases = [
        (
            "text",
            "text_model.encoder.layers.0.mlp.fc1.weight",
            f32::NAN,
            "the text tower",
        ),
        (
            "vision",
            "vision_model.encoder.layers.1.self_attn.q_proj.weight",
            f32::INFINITY,
            "the image tower",
        ),
        // Refused at load time already (the loader checks the scale).
        ("scale", "logit_scale", f32::INFINITY, "logit_scale"),
    ];
    for (dir, tensor, v, what) in cases {
        let m = model_with(&d.join(dir), |t| set_f32(t, tensor, 0, v));
        let cache = d.join(format!("cache-{dir}"));
        let o = run_model(&m, &cache);
        if dir == "scale" {
            fatal(&o, &[tensor, "inf"]);
        } else {
            fatal(&o, &[what, "NaN or infinite", tensor]);
        }
        assert!(o.stdout.is_empty(), "records for a broken model");
        let cached = std::fs::read_dir(&cache).map_or(0, |r| r.count());
        if dir == "text" {
            assert_eq!(cached, 0, "NaN text features were cached");
        }
    }
}

// 21. A config with fewer layers than the weights hold is an error naming the extra tensors.
#[test]
fn unused_tensors_are_an_error() {
    let d = scratch("hostile-unused");
    let m = model_with(&d.join("m"), |_| {});
    ok(&run_model(&m, &d.join("cache")));
    let mut cfg = tiny_config();
    cfg.vision.tower.num_hidden_layers -= 1;
    std::fs::write(m.join("config.json"), hf_config_json(&cfg)).unwrap();
    let last = cfg.vision.tower.num_hidden_layers;
    let o = run_model(&m, &d.join("cache"));
    fatal(
        &o,
        &[
            "model.safetensors",
            "not used",
            &format!("vision_model.encoder.layers.{last}."),
        ],
    );
    // Same for the text tower, where a cache hit would not even load it.
    let mut cfg = tiny_config();
    cfg.text.tower.num_hidden_layers -= 1;
    std::fs::write(m.join("config.json"), hf_config_json(&cfg)).unwrap();
    let o = run_model(&m, &d.join("cache"));
    fatal(&o, &["not used", "text_model.encoder.layers."]);
    // A tensor no CLIP has.
    let m2 = model_with(&d.join("m2"), |t| {
        t.push(OwnedTensor {
            name: "vision_model.extra_head.weight".into(),
            dtype: Dtype::F32,
            shape: vec![2],
            data: vec![0; 8],
        })
    });
    fatal(
        &run_model(&m2, &d.join("cache2")),
        &["vision_model.extra_head.weight"],
    );
}

// 18. A tree of links that share directories is walked once per real directory.
#[cfg(unix)]
#[test]
fn symlink_dag_is_walked_once() {
    let d = scratch("hostile-dag");
    let depth = 12;
    for i in 0..=depth {
        std::fs::create_dir_all(d.join(format!("d{i}"))).unwrap();
    }
    for i in 0..depth {
        for l in ["a", "b"] {
            std::os::unix::fs::symlink(d.join(format!("d{}", i + 1)), d.join(format!("d{i}/{l}")))
                .unwrap();
        }
    }
    std::fs::copy(
        image("rgb_100x80.png"),
        d.join(format!("d{depth}/only.png")),
    )
    .unwrap();
    let o = classify()
        .arg(d.join("d0"))
        .args(["-f", "csv", "-k", "1"])
        .output()
        .unwrap();
    ok(&o);
    let rows = String::from_utf8_lossy(&o.stdout).lines().count() - 1;
    assert_eq!(rows, 1, "one image, listed {rows} times");
}

// 23. Typos in MAPLE_SIMD and WGPU_BACKEND are warned about, naming the valid values.
#[test]
fn typos_in_environment_variables_warn() {
    let with = |var: &str, value: &str, device: &str| {
        classify()
            .env(var, value)
            .args(["--device", device])
            .arg(image("photo_320x240.jpg"))
            .output()
            .unwrap()
    };
    let o = with("MAPLE_SIMD", "avx3", "cpu");
    ok(&o);
    let e = stderr(&o);
    assert!(
        e.contains("warning: MAPLE_SIMD=\"avx3\" is not one of avx512, avx2, portable"),
        "{e}"
    );
    let o = with("WGPU_BACKEND", "vulkn", "auto");
    ok(&o);
    let e = stderr(&o);
    assert!(
        e.contains("WGPU_BACKEND=\"vulkn\": \"vulkn\" is not a backend (vulkan, metal, dx12, gl)"),
        "{e}"
    );
    // With --device gpu the failure says why.
    let o = with("WGPU_BACKEND", "vulkn", "gpu");
    fatal(&o, &["--device gpu", "\"vulkn\" is not a backend"]);
}

// 3, 4. Files Pillow opens are classified (the pixels are checked in tests/decode_parity.rs).
#[test]
fn odd_images_pillow_opens_are_classified() {
    let odd = fixtures().join("odd");
    let o = classify()
        .arg(odd.join("jpeg_motion_photo.jpg"))
        .arg(odd.join("gif_partial_frame.gif"))
        .arg(odd.join("cmyk_100x80.jpg"))
        .arg(odd.join("png_no_iend.png"))
        .arg(odd.join("palette_100x80.tiff"))
        .arg(odd.join("float_60x40.tiff"))
        .args(["-f", "csv", "-k", "1"])
        .output()
        .unwrap();
    ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().count(), 7, "{out}");
    // A truncated JPEG is still refused, as Pillow refuses it.
    let d = scratch("hostile-truncated");
    let bytes = std::fs::read(image("photo_320x240.jpg")).unwrap();
    std::fs::write(d.join("cut.jpg"), &bytes[..bytes.len() / 2]).unwrap();
    let o = classify().arg(d.join("cut.jpg")).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("truncated"), "{}", stderr(&o));
}

// Ctrl-C in the middle of writing --output: the file is as it was, and no temporary file stays.
#[cfg(target_os = "linux")]
#[test]
fn interrupted_runs_leave_the_output_as_it_was() {
    use std::os::unix::process::ExitStatusExt;
    let d = scratch("hostile-sigint");
    let out = d.join("out.csv");
    std::fs::write(&out, "old\n").unwrap();
    let list: String = (0..20000)
        .map(|_| format!("{}\n", image("rgb_100x80.png").display()))
        .collect();
    let mut child = spawn_with_stdin(
        classify()
            .args(["-", "-f", "csv", "-o"])
            .arg(&out)
            .arg("--report")
            .arg(d.join("report.html")),
        list.as_bytes(),
        Stdio::null(),
    );
    let others = || {
        std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "out.csv")
            .collect::<Vec<_>>()
    };
    let t = std::time::Instant::now();
    while others().len() < 2 && t.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(others().len(), 2, "no temporary files appeared");
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: sends a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let st = child.wait().unwrap();
    assert_eq!(
        st.signal(),
        Some(libc::SIGINT),
        "{st:?}: finished before the signal"
    );
    assert_eq!(others(), Vec::<String>::new(), "left behind");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "old\n");
}

// MAPLE_SIMD governs every kernel: the int8 (VNNI) and bf16 kernels run only on the avx512 path,
// so `portable` and `avx2` turn them off too (they used to detect the CPU on their own).
#[test]
fn maple_simd_governs_the_int8_and_bf16_kernels() {
    let tiny = tiny();
    for path in ["portable", "avx2"] {
        let o = Command::new(env!("CARGO_BIN_EXE_maple-bench"))
            .env("MAPLE_SIMD", path)
            .arg("--model")
            .arg(&tiny)
            .args(["--int8", "--labels", "3", "--batches", "1", "--reps", "1"])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{out}{}", stderr(&o));
        let line = out.lines().last().unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let cpu_has = |f: &str| v[f].as_bool() == Some(true);
        if v["simd"] == "portable" || v["simd"] == "avx2+fma" {
            assert!(
                !cpu_has("int8_vnni") && !cpu_has("bf16_hw"),
                "MAPLE_SIMD={path}: {line}"
            );
        }
        if path == "portable" {
            assert_eq!(v["simd"], "portable", "{line}");
        }
    }
}
