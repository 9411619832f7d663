//! maple-bench: throughput of the towers on a model directory, as one JSON line.
//! Image tower images/s at the given batch sizes; text tower seconds for N labels.
//! Run side by side with tools/bench/torch_bench.py (tools/bench/run.sh does both).
//! `--device gpu` times the wgpu path instead; `--profile` adds a table of GPU time per kernel.

#[path = "../signals.rs"]
mod signals;

use clap::Parser;
use maple::loader::{load_model, load_tokenizer};
use maple_core::gemm::{gemm, Epilogue, PackedMatrix};
use maple_core::{Parallel, TokenRow};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "maple-bench", version)]
struct Args {
    /// Model directory (e.g. the full-size synthetic model from maple-synth).
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// CPU threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Image batch sizes.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8])]
    batches: Vec<usize>,
    /// Label counts for the text tower.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 100, 1000])]
    labels: Vec<usize>,
    /// Timed repetitions per measurement. The best is reported, and the mean over all of them
    /// as `…_images_per_s_mean` (the sustained rate: run 25 reps of batch 8 to compare with a
    /// 200-image folder).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Also time one GEMM of the vision MLP's shape at batch 8 (1592×768 · 768×3072).
    #[arg(long)]
    gemm: bool,
    /// Also time the image tower with int8 Linears, and report their max |Δlogit| against f32
    /// over the batch-8 images × 100 labels.
    #[arg(long)]
    int8: bool,
    /// Instead of --int8: the image tower with bf16 Linears (bf16 weights and activations, f32
    /// accumulation; AVX-512 BF16 or Arm BF16 where the CPU has it), timed and checked the same way.
    #[arg(long, conflicts_with = "int8")]
    bf16: bool,
    /// With --int8 or --bf16: time only the converted tower (the f32 one is still run once,
    /// untimed, for the |Δlogit| check).
    #[arg(long)]
    low_only: bool,
    /// Also measure the CPU's f32 FMA peak (a loop of independent FMAs in registers on every
    /// thread) and report the GEMM and the image tower as fractions of it.
    #[arg(long)]
    peak: bool,
    /// Instead: time maple-train's step (forward, backward, SGD) at --train-batch images
    /// against each of these class counts (needs --prompts).
    #[arg(long, value_delimiter = ',')]
    train: Vec<usize>,
    /// Images per training step for --train.
    #[arg(long, default_value_t = 4)]
    train_batch: usize,
    /// cpu, or gpu: the wgpu path on the first adapter (software ones included; WGPU_BACKEND
    /// picks the backend).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "gpu"])]
    device: String,
    /// GPU matmul weights: f32, or f16 (needs SHADER_F16; math stays f32).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    precision: String,
    /// GPU kernel set: simple, tiled or coopmat (default: the adapter's, or MAPLE_GPU_KERNELS).
    #[arg(long)]
    kernels: Option<String>,
    /// With --device gpu: also print, per batch size, the GPU time of each kernel (timestamp
    /// queries), its share of the forward pass, GFLOP/s and GB/s, and the dispatch count.
    #[arg(long)]
    profile: bool,
}

/// GFLOP per image of MaPLe's 199-token ViT-B/16 image tower (as tools/bench/run.sh counts).
const IMAGE_GFLOP: f64 = 35.5;

/// `iters` rounds of 12 independent 8-lane FMAs held in registers: 192 flops a round.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_rounds_avx2(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(0.999_99), _mm256_set1_ps(1e-6));
    let mut acc = [_mm256_set1_ps(1.0); 12];
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm256_fmadd_ps(*r, a, b);
        }
    }
    let mut s = _mm256_setzero_ps();
    for r in acc {
        s = _mm256_add_ps(s, r);
    }
    let mut out = [0f32; 8];
    // SAFETY: `out` holds 8 floats.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    out.iter().sum()
}

/// `iters` rounds of 24 independent 16-lane FMAs held in registers: 768 flops a round.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_rounds_avx512(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(0.999_99), _mm512_set1_ps(1e-6));
    let mut acc = [_mm512_set1_ps(1.0); 24];
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm512_fmadd_ps(*r, a, b);
        }
    }
    let mut s = _mm512_setzero_ps();
    for r in acc {
        s = _mm512_add_ps(s, r);
    }
    _mm512_reduce_add_ps(s)
}

/// GFLOP/s of `rounds` (flops per round) run on `threads` threads at once, best of `reps`.
#[cfg(target_arch = "x86_64")]
fn fma_peak(threads: usize, reps: usize, flops_per_round: u64, rounds: fn(u64) -> f32) -> f64 {
    let iters = 20_000_000u64; // about 0.1-0.3 s a thread
    let mut best = f64::MAX;
    for _ in 0..reps.max(3) {
        let t = Instant::now();
        let sink: f32 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|_| s.spawn(move || rounds(std::hint::black_box(iters))))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        });
        std::hint::black_box(sink);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (threads as u64 * iters * flops_per_round) as f64 / best / 1e9
}

/// The same 1000 synthetic class names as tools/bench/torch_bench.py.
pub fn label_names(n: usize) -> Vec<String> {
    const A: [&str; 20] = [
        "red", "small", "wooden", "striped", "old", "shiny", "wild", "frozen", "tiny", "golden",
        "spotted", "electric", "ancient", "folding", "giant", "paper", "silver", "woolly", "rusty",
        "glass",
    ];
    const B: [&str; 50] = [
        "cat", "dog", "car", "chair", "lamp", "boat", "tiger", "piano", "kettle", "bridge",
        "camera", "rabbit", "guitar", "castle", "bicycle", "owl", "teapot", "tractor", "violin",
        "lizard", "helmet", "mushroom", "anchor", "lantern", "parrot", "scooter", "cactus",
        "whale", "kite", "ladder", "robot", "saddle", "tent", "umbrella", "volcano", "wagon",
        "zebra", "acorn", "bucket", "compass", "drum", "easel", "ferry", "goblet", "harp", "igloo",
        "jaguar", "kayak", "lobster", "mitten",
    ];
    (0..n)
        .map(|i| format!("{} {}", A[i % 20], B[(i / 20) % 50]))
        .collect()
}

fn main() {
    signals::install("maple-bench");
    let a = Args::parse();
    let model = load_model(&a.model, a.prompts.as_deref()).unwrap_or_else(|e| {
        eprintln!("maple-bench: {e}");
        std::process::exit(1)
    });
    if a.device == "gpu" {
        gpu_bench(&a, &model);
        return;
    }
    let par = Parallel::with_threads(a.threads);
    let s = model.clip.config.vision.image_size;
    let mut out = serde_json::Map::new();
    out.insert("engine".into(), "maple".into());
    out.insert("threads".into(), par.threads().into());
    out.insert("simd".into(), maple_core::simd::isa().name().into());
    #[cfg(target_arch = "x86_64")]
    if a.peak {
        let t = par.threads();
        let mut peak = 0.0f64;
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            let p = fma_peak(t, a.reps, 192, |n| unsafe { fma_rounds_avx2(n) });
            out.insert("fma_peak_avx2_gflops".into(), p.into());
            peak = peak.max(p);
        }
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            let p = fma_peak(t, a.reps, 768, |n| unsafe { fma_rounds_avx512(n) });
            out.insert("fma_peak_avx512_gflops".into(), p.into());
            peak = peak.max(p);
        }
        if peak > 0.0 {
            out.insert("fma_peak_gflops".into(), peak.into());
        }
    }
    if a.gemm {
        // C = A·Wᵀ, A [1592, 768], W [3072, 768]: 2·m·k·n flops.
        let (m, k, n) = (1592, 768, 3072);
        let av: Vec<f32> = (0..m * k)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 97.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 17 % 89) as f32 - 44.0) / 890.0)
            .collect();
        let b = PackedMatrix::from_out_in(&w, n, k);
        let mut c = vec![0.0f32; m * n];
        gemm(&par, &av, k, m, &b, &mut c, n, Epilogue::store(None));
        let mut best = f64::MAX;
        for _ in 0..a.reps.max(5) {
            let t = Instant::now();
            gemm(&par, &av, k, m, &b, &mut c, n, Epilogue::store(None));
            best = best.min(t.elapsed().as_secs_f64());
        }
        out.insert(
            "gemm_1592x768x3072_gflops".into(),
            (2.0 * (m * k * n) as f64 / best / 1e9).into(),
        );
    }
    if !a.train.is_empty() {
        let tok = load_tokenizer(&a.model).unwrap();
        train_bench(&a, model, &par, &tok, &mut out);
        println!("{}", serde_json::Value::Object(out));
        return;
    }
    if model.text_depends_on_image() {
        let tok = load_tokenizer(&a.model).unwrap();
        cocoop_bench(&a, &model, &par, &tok, &mut out);
        println!("{}", serde_json::Value::Object(out));
        return;
    }
    let time_f32 = !(a.low_only && (a.int8 || a.bf16));
    for &b in a.batches.iter().filter(|_| time_f32) {
        let px: Vec<f32> = (0..b * 3 * s * s)
            .map(|i| ((i * 7919 % 255) as f32 / 127.5) - 1.0)
            .collect();
        let (best, mean) = time_tower(&model, &par, &px, b, a.reps);
        out.insert(format!("image_b{b}_images_per_s"), (b as f64 / best).into());
        out.insert(
            format!("image_b{b}_images_per_s_mean"),
            (b as f64 / mean).into(),
        );
        if let Some(peak) = out.get("fma_peak_gflops").and_then(|v| v.as_f64()) {
            out.insert(
                format!("image_b{b}_fraction_of_fma_peak"),
                (b as f64 / best * IMAGE_GFLOP / peak).into(),
            );
        }
    }
    let fraction = out
        .get("gemm_1592x768x3072_gflops")
        .and_then(|g| Some(g.as_f64()? / out.get("fma_peak_gflops")?.as_f64()?));
    if let Some(f) = fraction {
        out.insert("gemm_fraction_of_fma_peak".into(), f.into());
    }
    let tok = load_tokenizer(&a.model).unwrap();
    if a.int8 || a.bf16 {
        let (name, convert): (&str, fn(&mut maple_core::Model)) = if a.int8 {
            ("int8", maple_core::Model::quantize_image_tower)
        } else {
            ("bf16", maple_core::Model::bf16_image_tower)
        };
        let mut model = model;
        let b = *a.batches.iter().max().unwrap_or(&8);
        let px: Vec<f32> = (0..b * 3 * s * s)
            .map(|i| ((i * 7919 % 255) as f32 / 127.5) - 1.0)
            .collect();
        let rows: Vec<TokenRow> = label_names(100)
            .iter()
            .map(|l| tok.encode(&format!("a photo of a {l}.")).unwrap())
            .collect();
        let text = model.encode_texts(&par, &rows).unwrap();
        let logits = |model: &maple_core::Model| {
            let mut ws = model.vision_workspace(b, &par);
            let f = model.encode_images(&par, &mut ws, &px, b).unwrap().to_vec();
            let mut out = vec![0.0f32; b * rows.len()];
            for (i, fi) in f.chunks_exact(f.len() / b).enumerate() {
                model
                    .logits(fi, &text, &mut out[i * rows.len()..(i + 1) * rows.len()])
                    .unwrap();
            }
            out
        };
        let want = logits(&model);
        convert(&mut model);
        let got = logits(&model);
        let diff = want
            .iter()
            .zip(&got)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        out.insert(format!("{name}_max_abs_dlogit"), diff.into());
        out.insert("int8_vnni".into(), maple_core::q8::has_vnni().into());
        out.insert("bf16_hw".into(), maple_core::bf16::has_bf16().into());
        for &bb in &a.batches {
            let (best, mean) = time_tower(&model, &par, &px[..bb * 3 * s * s], bb, a.reps);
            out.insert(
                format!("{name}_image_b{bb}_images_per_s"),
                (bb as f64 / best).into(),
            );
            out.insert(
                format!("{name}_image_b{bb}_images_per_s_mean"),
                (bb as f64 / mean).into(),
            );
        }
        println!("{}", serde_json::Value::Object(out));
        return;
    }
    for &n in &a.labels {
        let rows: Vec<TokenRow> = label_names(n)
            .iter()
            .map(|l| tok.encode(&format!("a photo of a {l}.")).unwrap())
            .collect();
        let t = Instant::now();
        model.encode_texts(&par, &rows).unwrap();
        out.insert(
            format!("text_{n}_labels_s"),
            t.elapsed().as_secs_f64().into(),
        );
    }
    println!("{}", serde_json::Value::Object(out));
}

/// CoCoOp (its prompts loaded): whole classification, the image tower and each image's own
/// text features, images/s for each batch size × label count (best of `reps` after a warm-up).
fn cocoop_bench(
    a: &Args,
    model: &maple_core::Model,
    par: &Parallel,
    tok: &maple::text::ClipTokenizer,
    out: &mut serde_json::Map<String, serde_json::Value>,
) {
    let s = model.clip.config.vision.image_size;
    let template = model.prompts.as_ref().map(|p| p.default_template());
    let template = template.as_deref().unwrap_or("a photo of a");
    let mut tws = model.text_workspace(32, par);
    for &b in &a.batches {
        let px: Vec<f32> = (0..b * 3 * s * s)
            .map(|i| ((i * 7919 % 255) as f32 / 127.5) - 1.0)
            .collect();
        let mut vws = model.vision_workspace(b, par);
        for &n in &a.labels {
            let rows: Vec<TokenRow> = label_names(n)
                .iter()
                .map(|l| tok.encode(&format!("{template} {l}.")).unwrap())
                .collect();
            let mut logits = vec![0.0f32; b * n];
            let mut best = f64::MAX;
            for _ in 0..=a.reps {
                let t = Instant::now();
                let f = model.encode_images(par, &mut vws, &px, b).unwrap().to_vec();
                model
                    .conditioned_logits(par, &mut tws, &f, b, &rows, &mut logits)
                    .unwrap();
                best = best.min(t.elapsed().as_secs_f64());
            }
            out.insert(
                format!("cocoop_b{b}_{n}_labels_images_per_s"),
                (b as f64 / best).into(),
            );
        }
    }
}

/// Seconds per training step (best of `reps` after one warm-up) and the peak RSS.
fn train_bench(
    a: &Args,
    model: maple_core::Model,
    par: &Parallel,
    tok: &maple::text::ClipTokenizer,
    out: &mut serde_json::Map<String, serde_json::Value>,
) {
    use maple::loader::with_tensors;
    use maple_core::train::{PromptParams, Sgd, TrainWorkspace};
    let Some(prompts) = &a.prompts else {
        eprintln!("maple-bench: --train needs --prompts (the starting prompts)");
        std::process::exit(1)
    };
    let mut model = model;
    let cfg = model.clip.config;
    let mut params = with_tensors(prompts, false, |src| PromptParams::load(&cfg, src))
        .unwrap_or_else(|e| {
            eprintln!("maple-bench: {e}");
            std::process::exit(1)
        });
    let s = cfg.vision.image_size;
    let b = a.train_batch.max(1);
    let px: Vec<f32> = (0..b * 3 * s * s)
        .map(|i| ((i * 7919 % 255) as f32 / 127.5) - 1.0)
        .collect();
    for &nc in &a.train {
        let rows: Vec<TokenRow> = label_names(nc)
            .iter()
            .map(|l| tok.encode(&format!("a photo of a {l}.")).unwrap())
            .collect();
        let labels: Vec<usize> = (0..b).map(|i| i % nc).collect();
        model.prompts = Some(params.prompts());
        let mut ws = TrainWorkspace::new(&model, &rows, b, par).unwrap();
        let mut grads = params.zeros_like();
        let mut opt = Sgd::new(0.9, 5e-4);
        let mut best = f64::MAX;
        for _ in 0..a.reps + 1 {
            let t = Instant::now();
            model
                .loss_and_grad(par, &mut ws, &params, &px, &labels, &mut grads)
                .unwrap();
            opt.step(&mut params, &grads, 0.0035);
            model.prompts = Some(params.prompts());
            best = best.min(t.elapsed().as_secs_f64());
        }
        out.insert(format!("train_c{nc}_b{b}_s_per_step"), best.into());
        out.insert(
            format!("train_c{nc}_b{b}_workspace_mb"),
            (ws.bytes() as f64 / 1e6).into(),
        );
    }
    out.insert("peak_rss_mb".into(), (peak_rss_kb() as f64 / 1024.0).into());
}

/// This process's peak resident set (Linux `VmHWM`), in KiB; 0 where unknown.
/// One warm-up forward of `b` images, then `reps` timed ones: (best, mean) seconds.
fn time_tower(
    model: &maple_core::Model,
    par: &Parallel,
    px: &[f32],
    b: usize,
    reps: usize,
) -> (f64, f64) {
    let mut ws = model.vision_workspace(b, par);
    model.encode_images(par, &mut ws, px, b).unwrap(); // warm-up
    let (mut best, mut total) = (f64::MAX, 0.0);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        model.encode_images(par, &mut ws, px, b).unwrap();
        let dt = t.elapsed().as_secs_f64();
        best = best.min(dt);
        total += dt;
    }
    (best, total / reps.max(1) as f64)
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The same synthetic pixels as the CPU measurement, for `b` images of `s`×`s`.
fn bench_pixels(b: usize, s: usize) -> Vec<f32> {
    (0..b * 3 * s * s)
        .map(|i| ((i * 7919 % 255) as f32 / 127.5) - 1.0)
        .collect()
}

/// `--device gpu`: images/s of the wgpu image tower per batch size (best of `reps` after a
/// warm-up), text seconds per label count, and with `--profile` the per-kernel table.
#[cfg(feature = "gpu")]
fn gpu_bench(a: &Args, model: &maple_core::Model) {
    use maple_gpu::{AdapterChoice, Gpu, GpuModel, KernelSet, Precision};
    let fail = |e: &dyn std::fmt::Display| -> ! {
        eprintln!("maple-bench: {e}");
        std::process::exit(1)
    };
    if let Some(k) = &a.kernels {
        if KernelSet::from_name(k).is_none() {
            let names = KernelSet::ALL.map(|k| k.name()).join(", ");
            fail(&format!(
                "--kernels {k}: not a kernel set; use one of: {names}"
            ));
        }
        // Through the environment, so that the device is opened with what the set needs
        // (cooperative matrices are requested only then).
        std::env::set_var(maple_gpu::KERNELS_ENV, k);
    }
    let gpu = Gpu::open(AdapterChoice::Any).unwrap_or_else(|e| fail(&e));
    let precision = if a.precision == "f16" {
        Precision::F16
    } else {
        Precision::F32
    };
    let mut out = serde_json::Map::new();
    out.insert("engine".into(), "maple-gpu".into());
    out.insert("adapter".into(), gpu.describe().into());
    out.insert("kernels".into(), gpu.kernels().name().into());
    out.insert("precision".into(), a.precision.clone().into());
    let mut gm = GpuModel::upload(gpu, model, precision).unwrap_or_else(|e| fail(&e));
    let s = model.clip.config.vision.image_size;
    for &b in &a.batches {
        let px = bench_pixels(b, s);
        gm.encode_images(&px, b).unwrap_or_else(|e| fail(&e)); // warm-up: plan + pipelines
        let mut best = f64::MAX;
        for _ in 0..a.reps {
            let t = Instant::now();
            gm.encode_images(&px, b).unwrap_or_else(|e| fail(&e));
            best = best.min(t.elapsed().as_secs_f64());
        }
        out.insert(format!("image_b{b}_images_per_s"), (b as f64 / best).into());
        if a.profile {
            let p = gm.profile_images(&px, b).unwrap_or_else(|e| fail(&e));
            print_profile(&format!("image tower, batch {b}"), &gm, &p, best);
            out.insert(format!("image_b{b}_dispatches"), p.dispatches.into());
            out.insert(format!("image_b{b}_gpu_ms"), (p.seconds() * 1e3).into());
        }
    }
    let tok = load_tokenizer(&a.model).unwrap_or_else(|e| fail(&e));
    for &n in &a.labels {
        let rows: Vec<TokenRow> = label_names(n)
            .iter()
            .map(|l| tok.encode(&format!("a photo of a {l}.")).unwrap())
            .collect();
        let t = Instant::now();
        gm.encode_texts(&rows).unwrap_or_else(|e| fail(&e));
        out.insert(
            format!("text_{n}_labels_s"),
            t.elapsed().as_secs_f64().into(),
        );
    }
    println!("{}", serde_json::Value::Object(out));
}

/// The per-kernel table of one profiled forward pass, on stdout before the JSON line.
#[cfg(feature = "gpu")]
fn print_profile(what: &str, gm: &maple_gpu::GpuModel, p: &maple_gpu::Profile, wall: f64) {
    let total = p.seconds();
    println!(
        "{what}: {} kernels on {}, {} dispatches; GPU {:.3} ms (timestamps, one pass per dispatch), wall {:.3} ms (plain run)",
        gm.gpu.kernels().name(),
        gm.gpu.describe(),
        p.dispatches,
        total * 1e3,
        wall * 1e3
    );
    println!(
        "{:<28} {:>10} {:>10} {:>7} {:>9} {:>8}",
        "kernel", "dispatches", "ms", "share", "GFLOP/s", "GB/s"
    );
    for k in &p.kernels {
        let rate = |x: f64| {
            if k.seconds > 0.0 {
                x / k.seconds / 1e9
            } else {
                0.0
            }
        };
        println!(
            "{:<28} {:>10} {:>10.3} {:>6.1}% {:>9.1} {:>8.1}",
            k.name,
            k.dispatches,
            k.seconds * 1e3,
            if total > 0.0 {
                100.0 * k.seconds / total
            } else {
                0.0
            },
            rate(k.flops),
            rate(k.bytes)
        );
    }
}

#[cfg(not(feature = "gpu"))]
fn gpu_bench(_: &Args, _: &maple_core::Model) {
    eprintln!("maple-bench: this build has no GPU backend (cargo feature `gpu`)");
    std::process::exit(1)
}
