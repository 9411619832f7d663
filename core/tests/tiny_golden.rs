//! The committed tiny model against the PyTorch golden logits, using only the core (this test
//! also runs under `--no-default-features`): tensors from bytes, a Pillow crop as raw RGB,
//! token ids from the golden file.

use maple_core::preprocess::normalize_into;
use maple_core::{Clip, ClipConfig, Model, Parallel, Prompts, SafeTensors};

static CONFIG: &str = include_str!("../../tests/fixtures/tiny/config.json");
static WEIGHTS: &[u8] = include_bytes!("../../tests/fixtures/tiny/model.safetensors");
static PROMPTS: &[u8] = include_bytes!("../../tests/fixtures/tiny/maple_prompts.safetensors");
static GOLDEN: &str = include_str!("../../tests/fixtures/golden_tiny.json");
static CROP: &[u8] = include_bytes!("../../tests/fixtures/crops/rgb_451x300.png_32.rgb");

fn logits(with_prompts: bool, int8: bool) -> (Vec<f32>, Vec<f32>) {
    let cfg = ClipConfig::from_hf_json(CONFIG).unwrap();
    let st = SafeTensors::parse(WEIGHTS).unwrap();
    // The MaPLe run loads the text tower late (as a cache miss does), the zero-shot one at once.
    let clip = Clip::load_parts(&cfg, &st, !with_prompts).unwrap();
    let prompts =
        with_prompts.then(|| Prompts::load(&cfg, &SafeTensors::parse(PROMPTS).unwrap()).unwrap());
    let mut model = Model::new(clip, prompts);
    if !model.clip.has_text() {
        let e = model.encode_texts(&Parallel::sequential(), &[vec![1, 2]]);
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("text tower was not loaded"));
        model.clip.load_text(&st).unwrap();
    }
    if int8 {
        model.quantize_image_tower();
    }
    let g: serde_json::Value = serde_json::from_str(GOLDEN).unwrap();
    let rows: Vec<Vec<u32>> = g["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    let par = Parallel::sequential();
    let text = model.encode_texts(&par, &rows).unwrap();
    let s = cfg.vision.image_size;
    let mut px = vec![0.0; 3 * s * s];
    normalize_into(CROP, s, &mut px).unwrap();
    let mut ws = model.vision_workspace(1, &par);
    let f = model.encode_images(&par, &mut ws, &px, 1).unwrap().to_vec();
    let mut out = vec![0.0; rows.len()];
    model.logits(&f, &text, &mut out).unwrap();
    let i = g["images"]
        .as_array()
        .unwrap()
        .iter()
        .position(|n| n == "rgb_451x300.png")
        .unwrap();
    let mode = if with_prompts { "maple" } else { "zeroshot" };
    let want = g[mode]["logits"][i]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    (out, want)
}

#[test]
fn maple_and_zeroshot_logits_match_pytorch() {
    for p in [true, false] {
        let (got, want) = logits(p, false);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-3, "prompts={p}: {a} vs {b}");
        }
    }
}

/// The int8 image tower (not offered by the CLI: see BENCHMARKS.md) stays near PyTorch's f32
/// logits and keeps the top label.
#[test]
fn int8_image_tower_stays_close() {
    let (got, want) = logits(true, true);
    let d = got
        .iter()
        .zip(&want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    std::println!("tiny int8: max |Δlogit| {d:.3e}");
    // 32-wide features quantise coarsely: the full-size model's figure is in BENCHMARKS.md.
    assert!(d < 0.5, "int8 max |Δlogit| {d}");
    let top = |v: &[f32]| (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap();
    assert_eq!(top(&got), top(&want));
}
