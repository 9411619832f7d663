//! maple-bench: CPU throughput of the towers on a model directory, as one JSON line.
//! Image tower images/s at the given batch sizes; text tower seconds for N labels.
//! Run side by side with tools/bench/torch_bench.py (tools/bench/run.sh does both).

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
    /// Timed repetitions per measurement (the best is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Also time one GEMM of the vision MLP's shape at batch 8 (1592×768 · 768×3072).
    #[arg(long)]
    gemm: bool,
    /// Also time the image tower with int8 Linears, and report their max |Δlogit| against f32
    /// over the batch-8 images × 100 labels.
    #[arg(long)]
    int8: bool,
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
    let a = Args::parse();
    let model = load_model(&a.model, a.prompts.as_deref()).unwrap_or_else(|e| {
        eprintln!("maple-bench: {e}");
        std::process::exit(1)
    });
    let par = Parallel::with_threads(a.threads);
    let s = model.clip.config.vision.image_size;
    let mut out = serde_json::Map::new();
    out.insert("engine".into(), "maple".into());
    out.insert("threads".into(), par.threads().into());
    out.insert("simd".into(), maple_core::simd::isa().name().into());
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
    for &b in &a.batches {
        let px: Vec<f32> = (0..b * 3 * s * s)
            .map(|i| ((i * 7919 % 255) as f32 / 127.5) - 1.0)
            .collect();
        let mut ws = model.vision_workspace(b, &par);
        model.encode_images(&par, &mut ws, &px, b).unwrap(); // warm-up
        let mut best = f64::MAX;
        for _ in 0..a.reps {
            let t = Instant::now();
            model.encode_images(&par, &mut ws, &px, b).unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        out.insert(format!("image_b{b}_images_per_s"), (b as f64 / best).into());
    }
    let tok = load_tokenizer(&a.model).unwrap();
    if a.int8 {
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
        model.quantize_image_tower();
        let got = logits(&model);
        let diff = want
            .iter()
            .zip(&got)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        out.insert("int8_max_abs_dlogit".into(), diff.into());
        out.insert("int8_vnni".into(), maple_core::q8::has_vnni().into());
        for &bb in &a.batches {
            let px: Vec<f32> = px[..bb * 3 * s * s].to_vec();
            let mut ws = model.vision_workspace(bb, &par);
            model.encode_images(&par, &mut ws, &px, bb).unwrap();
            let mut best = f64::MAX;
            for _ in 0..a.reps {
                let t = Instant::now();
                model.encode_images(&par, &mut ws, &px, bb).unwrap();
                best = best.min(t.elapsed().as_secs_f64());
            }
            out.insert(
                format!("int8_image_b{bb}_images_per_s"),
                (bb as f64 / best).into(),
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
