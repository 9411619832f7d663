//! One image through a model directory's image tower (MaPLe prompts if the directory has
//! `maple_prompts.safetensors`), one thread: best of RUNS − 1 (default 5) after a warm-up, in
//! seconds; with `int8`, also how long quantizing the tower took. For profiling the browser's
//! CPU path under Node (`node --cpu-prof tools/wasi-run.mjs ...`) as well as natively:
//! `cargo run --release -p maple-clip-core --example tower -- DIR [int8|f32] [RUNS]`.
use maple_core::{Clip, ClipConfig, Model, Parallel, Prompts, SafeTensors};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::Path::new(args.get(1).expect("usage: tower DIR [int8|f32] [RUNS]"));
    let cfg = ClipConfig::from_hf_json(&std::fs::read_to_string(dir.join("config.json")).unwrap())
        .unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let clip = Clip::load(&cfg, &SafeTensors::parse(&bytes).unwrap()).unwrap();
    drop(bytes);
    let prompts = std::fs::read(dir.join("maple_prompts.safetensors"))
        .ok()
        .map(|b| Prompts::load(&cfg, &SafeTensors::parse(&b).unwrap()).unwrap());
    let mut model = Model::new(clip, prompts);
    if args.get(2).map(String::as_str) == Some("int8") {
        let t = Instant::now();
        model.quantize_image_tower();
        println!(
            "int8: image tower quantized in {:.3} s",
            t.elapsed().as_secs_f64()
        );
    }
    let par = Parallel::sequential();
    let s = cfg.vision.image_size;
    let px: Vec<f32> = (0..3 * s * s).map(|i| (i as f32 * 0.001).sin()).collect();
    let mut ws = model.vision_workspace(1, &par);
    let mut runs = Vec::new();
    let n: usize = args
        .get(3)
        .map_or(6, |r| r.parse().expect("RUNS: a number"));
    for _ in 0..n.max(2) {
        let t = Instant::now();
        model.encode_images(&par, &mut ws, &px, 1).unwrap();
        runs.push(t.elapsed().as_secs_f64());
    }
    let best = runs[1..].iter().copied().fold(f64::MAX, f64::min);
    println!("image tower, 1 image, 1 thread: best {best:.3} s (runs {runs:.3?})");
}
