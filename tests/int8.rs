//! `Precision::Int8` and `Precision::Bf16` (the CPU image tower's Linears in int8 or bf16)
//! against f32 on the full-size ViT-B/16 synthetic model: the 16 golden images × 110 labels
//! (the golden file's 10 and 100 synthetic names). Bounds: int8's max |Δlogit| ≤ 0.19, which is
//! ONNX Runtime's dynamic int8 (per-channel) error on this model and these images as measured
//! for issue 13; bf16's below int8's (the condition for offering it); for both the same top-1 as
//! f32 on every image, and the PyTorch golden top-1 on the golden labels.

mod common;

use common::{fixtures, full_dir, golden};
use maple::{top_k, Classifier, Device, ImageSource, LabelSet, Precision};

/// ONNX Runtime dynamic int8, per-channel weights: its max |Δlogit| against f32 here.
const ORT_INT8_PER_CHANNEL: f32 = 0.19;

fn labels() -> LabelSet {
    let g = golden("golden_full.json");
    let mut names: Vec<String> = g["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let adj = [
        "red", "small", "wooden", "striped", "old", "shiny", "wild", "tiny", "golden", "paper",
    ];
    let noun = [
        "car", "chair", "lamp", "boat", "tiger", "piano", "kettle", "bridge", "owl", "kite",
    ];
    for a in adj {
        for n in noun {
            names.push(format!("{a} {n}"));
        }
    }
    LabelSet::parse(&names.join("\n"), "test labels").unwrap()
}

/// Max |Δlogit| of `low` against `f32s`, checking top-1 (against f32 and PyTorch's golden).
fn compare(g: &serde_json::Value, f32s: &[Vec<f32>], low: &[Vec<f32>], name: &str) -> f32 {
    let (mut max, mut top5_same) = (0.0f32, 0);
    for (i, (a, b)) in f32s.iter().zip(low).enumerate() {
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        max = max.max(d);
        assert_eq!(top_k(a, 1), top_k(b, 1), "{name}, image {i}: top-1 differs");
        top5_same += usize::from(top_k(a, 5) == top_k(b, 5));
        // The golden labels come first: PyTorch's top-1 among them.
        let gold = g["maple"]["top5"][i][0].as_u64().unwrap() as usize;
        assert_eq!(
            top_k(&b[..10], 1),
            vec![gold],
            "{name}, image {i}: not PyTorch's top-1"
        );
    }
    eprintln!(
        "{name} vs f32: max |Δlogit| {max:.4} over {} images × {} labels; top-5 identical on {top5_same}",
        f32s.len(),
        f32s[0].len()
    );
    max
}

#[test]
fn int8_and_bf16_are_within_ort_int8_error_of_f32_with_the_same_top1() {
    let dir = full_dir();
    let g = golden("golden_full.json");
    let images: Vec<std::path::PathBuf> = g["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| fixtures().join("images").join(v.as_str().unwrap()))
        .collect();
    let sources: Vec<ImageSource> = images.iter().map(|p| ImageSource::Path(p)).collect();
    let run = |p: Precision| {
        let mut c = Classifier::builder(&dir)
            .prompts(dir.join("maple_prompts.safetensors"))
            .label_set(labels())
            .template(g["template"].as_str().unwrap())
            .device(Device::Cpu)
            .precision(p)
            .build()
            .unwrap();
        assert_eq!(c.model().is_int8(), p == Precision::Int8);
        c.classify_batch(&sources)
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap().logits)
            .collect::<Vec<Vec<f32>>>()
    };
    let f32s = run(Precision::F32);
    let int8 = compare(&g, &f32s, &run(Precision::Int8), "int8");
    assert!(
        int8 <= ORT_INT8_PER_CHANNEL,
        "int8: max |Δlogit| {int8} is above ONNX Runtime int8's {ORT_INT8_PER_CHANNEL}"
    );
    if maple::engine::bf16::has_bf16() {
        let bf16 = compare(&g, &f32s, &run(Precision::Bf16), "bf16");
        assert!(
            bf16 < int8,
            "bf16: max |Δlogit| {bf16} is not below int8's {int8}"
        );
    } else {
        eprintln!("this CPU has no bf16 instructions: bf16 is not offered here, not compared");
    }
}

#[test]
fn int8_on_the_gpu_is_refused() {
    let dir = fixtures().join("tiny");
    let e = Classifier::builder(&dir)
        .labels(["cat", "dog"])
        .device(Device::Gpu)
        .precision(Precision::Int8)
        .build()
        .unwrap_err();
    assert!(
        e.to_string().contains("int8 precision runs on the CPU"),
        "{e}"
    );
}

#[test]
fn bf16_on_the_gpu_is_refused() {
    let dir = fixtures().join("tiny");
    let e = Classifier::builder(&dir)
        .labels(["cat", "dog"])
        .device(Device::Gpu)
        .precision(Precision::Bf16)
        .build()
        .unwrap_err();
    assert!(
        e.to_string().contains("bf16 precision runs on the CPU"),
        "{e}"
    );
}

/// The tiny model in int8 against the PyTorch golden (fp32): every int8 kernel (VNNI, NEON
/// `usdot` or `sdot`, portable) sums the same integers, so this runs whichever the machine picks
/// (the aarch64 CI runs it on CPUs with and without dotprod and i8mm) against one bound: PyTorch's
/// top-1 on every image, and every logit within 5% of that image's logit range (the tiny logits
/// span 20–30; int8's worst error measured on x86 was 0.44, 2.4% of its image's range).
#[test]
fn tiny_int8_is_near_pytorch_with_its_top1() {
    let (max, worst) = tiny_against_pytorch(Precision::Int8);
    eprintln!(
        "tiny int8 ({}): max |Δlogit| vs PyTorch {max:.2e}, {:.1}% of the image's range",
        maple::engine::simd::int8_kernel_name(),
        100.0 * worst
    );
    assert!(
        worst <= 0.05,
        "tiny int8: |Δlogit| {:.1}% of the range",
        100.0 * worst
    );
}

/// bf16 where the CPU has bf16 instructions (AVX-512 BF16, or Arm's BF16 as qemu's `max` CPU in
/// the aarch64 CI): PyTorch's top-1 on every image, logits within 2% of each image's range.
#[test]
fn tiny_bf16_is_near_pytorch_with_its_top1() {
    if !maple::engine::bf16::has_bf16() {
        eprintln!("tiny bf16: not offered (this CPU has no bf16 instructions)");
        return;
    }
    let (max, worst) = tiny_against_pytorch(Precision::Bf16);
    eprintln!(
        "tiny bf16 (hardware): max |Δlogit| vs PyTorch {max:.2e}, {:.1}% of the image's range",
        100.0 * worst
    );
    assert!(
        worst <= 0.02,
        "tiny bf16: |Δlogit| {:.1}% of the range",
        100.0 * worst
    );
}

/// The tiny model's golden images at `precision` on the CPU against PyTorch's f32 logits, the
/// top-1 asserted on each: (max |Δlogit|, max |Δlogit| / the image's logit range).
fn tiny_against_pytorch(precision: Precision) -> (f32, f32) {
    let g = golden("golden_tiny.json");
    let dir = common::tiny_dir();
    let names: Vec<&str> = g["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut c = Classifier::builder(&dir)
        .prompts(dir.join("maple_prompts.safetensors"))
        .label_set(LabelSet::parse(&names.join("\n"), "labels").unwrap())
        .template(g["template"].as_str().unwrap())
        .device(Device::Cpu)
        .precision(precision)
        .build()
        .unwrap();
    assert_eq!(c.model().is_int8(), precision == Precision::Int8);
    let bf16 = c.model().image_precision() == maple::engine::model::LinearPrecision::Bf16;
    assert_eq!(bf16, precision == Precision::Bf16);
    let images: Vec<std::path::PathBuf> = g["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| fixtures().join("images").join(v.as_str().unwrap()))
        .collect();
    let sources: Vec<ImageSource> = images.iter().map(|p| ImageSource::Path(p)).collect();
    let (mut max, mut worst) = (0.0f32, 0.0f32);
    for (i, r) in c.classify_batch(&sources).unwrap().into_iter().enumerate() {
        let got = r.unwrap().logits;
        let want: Vec<f32> = g["maple"]["logits"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let d = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        let range = want.iter().fold(f32::MIN, |m, &v| m.max(v))
            - want.iter().fold(f32::MAX, |m, &v| m.min(v));
        max = max.max(d);
        worst = worst.max(d / range);
        assert_eq!(
            top_k(&got, 1),
            top_k(&want, 1),
            "{precision:?} image {i}: top-1"
        );
    }
    (max, worst)
}
