//! Every GPU kernel against its CPU twin in maple-core, on random data with odd shapes.

use maple_core::gemm::{gemm, Epilogue, PackedMatrix};
use maple_core::ops::{attention, attention_scratch_len, layer_norm};
use maple_core::synth::Rng;
use maple_core::Parallel;
use maple_gpu::{testing, AdapterChoice, Gpu};

fn gpu() -> Gpu {
    let g = Gpu::open(AdapterChoice::Any)
        .expect("a GPU adapter (CI uses lavapipe: WGPU_BACKEND=vulkan)");
    eprintln!("adapter: {}", g.describe());
    g
}

fn rand(r: &mut Rng, n: usize, a: f32) -> Vec<f32> {
    (0..n).map(|_| r.uniform(a)).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn matmul_matches_cpu_gemm() {
    let g = gpu();
    let mut r = Rng::new(1);
    let par = Parallel::sequential();
    let mut worst = 0.0f32;
    for &(m, k, n) in &[
        (1, 768, 512),
        (77, 130, 97),
        (199, 768, 2304),
        (199, 33, 5),
        (8, 3072, 768),
        (5, 3, 1),
    ] {
        for mode in 0..3 {
            for f16 in [false, true] {
                if f16 && !g.shader_f16 {
                    continue;
                }
                let a = rand(&mut r, m * k, 1.0);
                let mut w = rand(&mut r, n * k, 1.0 / (k as f32).sqrt());
                if f16 {
                    // The CPU twin gets the same f16-rounded weights.
                    w.iter_mut()
                        .for_each(|v| *v = half::f16::from_f32(*v).to_f32());
                }
                let bias = rand(&mut r, n, 0.5);
                let c0 = rand(&mut r, m * n, 1.0);
                let mut want = if mode == 2 {
                    c0.clone()
                } else {
                    vec![0.0; m * n]
                };
                let ep = match mode {
                    0 => Epilogue::store(None),
                    1 => Epilogue::gelu(&bias),
                    _ => Epilogue::residual(&bias),
                };
                gemm(
                    &par,
                    &a,
                    k,
                    m,
                    &PackedMatrix::from_out_in(&w, n, k),
                    &mut want,
                    n,
                    ep,
                );
                let got = testing::matmul(
                    &g,
                    &a,
                    m,
                    k,
                    &w,
                    n,
                    (mode > 0).then_some(&bias[..]),
                    mode == 1,
                    (mode == 2).then_some(&c0[..]),
                    f16,
                )
                .unwrap();
                let d = max_diff(&got, &want);
                worst = worst.max(d);
                assert!(d < 1e-4, "m={m} k={k} n={n} mode={mode} f16={f16}: {d}");
            }
        }
    }
    eprintln!("matmul: max |Δ| GPU vs CPU = {worst:.2e}");
}

#[test]
fn attention_matches_cpu() {
    let g = gpu();
    let mut r = Rng::new(2);
    let mut worst = 0.0f32;
    for &(seqs, t, d, heads, causal) in &[
        (2, 199, 768, 12, false),
        (3, 77, 512, 8, true),
        (1, 1, 64, 1, true),
        (2, 13, 48, 3, false),
    ] {
        let qkv = rand(&mut r, seqs * t * 3 * d, 1.0);
        let mut want = vec![0.0; seqs * t * d];
        let mut sc = vec![0.0; attention_scratch_len(t, d / heads)];
        attention(
            &Parallel::sequential(),
            &qkv,
            &mut want,
            seqs,
            t,
            d,
            heads,
            causal,
            &mut sc,
        );
        let got = testing::attention(&g, &qkv, seqs, t, d, heads, causal).unwrap();
        let dd = max_diff(&got, &want);
        worst = worst.max(dd);
        assert!(dd < 1e-5, "seqs={seqs} t={t} d={d}: {dd}");
    }
    eprintln!("attention: max |Δ| GPU vs CPU = {worst:.2e}");
}

#[test]
fn layer_norm_matches_cpu() {
    let g = gpu();
    let mut r = Rng::new(3);
    let mut worst = 0.0f32;
    for &(rows, d) in &[(1, 768), (199, 768), (77, 512), (3, 5)] {
        let x: Vec<f32> = (0..rows * d)
            .map(|i| r.uniform(2.0) + (i % 7) as f32)
            .collect();
        let w = rand(&mut r, d, 1.0);
        let b = rand(&mut r, d, 1.0);
        let mut want = vec![0.0; rows * d];
        layer_norm(&x, &mut want, d, &w, &b, 1e-5);
        let got = testing::layer_norm(&g, &x, rows, d, &w, &b, 1e-5).unwrap();
        let dd = max_diff(&got, &want);
        worst = worst.max(dd);
        assert!(dd < 1e-5, "rows={rows} d={d}: {dd}");
    }
    eprintln!("layernorm: max |Δ| GPU vs CPU = {worst:.2e}");
}
