//! Every GPU kernel against its CPU twin in maple-core, on random data with odd shapes.

use maple_core::gemm::{gemm, Epilogue, PackedMatrix};
use maple_core::ops::{attention, attention_scratch_len, layer_norm};
use maple_core::synth::Rng;
use maple_core::Parallel;
use maple_gpu::{testing, AdapterChoice, Gpu, KernelSet};

fn gpu() -> Gpu {
    let g = Gpu::open(AdapterChoice::Any)
        .expect("a GPU adapter (CI uses lavapipe: WGPU_BACKEND=vulkan)");
    eprintln!("adapter: {}", g.describe());
    g
}

/// Runs `f` once per kernel set (every variant is checked whatever the adapter's default). The
/// cooperative-matrix set needs a device opened for it (`MAPLE_GPU_KERNELS=coopmat`) on an
/// adapter that has them; elsewhere (lavapipe) it is said and skipped: its shader is still
/// validated by tests/backends.rs.
fn each_set(mut f: impl FnMut(&Gpu, KernelSet)) {
    let mut g = gpu();
    for k in KernelSet::ALL {
        if k == KernelSet::CoopMatrix && g.coop_subgroup.is_none() {
            eprintln!("coopmat: not run (the device was not opened with cooperative matrices)");
            continue;
        }
        g.set_kernels(k);
        f(&g, k);
    }
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
    each_set(matmul_cases);
}

fn matmul_cases(g: &Gpu, set: KernelSet) {
    let mut r = Rng::new(1);
    let par = Parallel::sequential();
    let mut worst = 0.0f32;
    // M = 1 (batch 1 heads), 77 (text), 199 (one image), 1592 (8 images); the shapes reach all
    // three tiles of the tiled set (128×128: 1592×3072, 64×64: 1592×768, 32×32: the rest);
    // K and N off every tile size (33, 130, 97, 5, 3, 1), K past one step of BK (3072).
    for &(m, k, n) in &[
        (1, 768, 512),
        (77, 130, 97),
        (199, 768, 2304),
        (199, 33, 5),
        (8, 3072, 768),
        (5, 3, 1),
        (1592, 768, 3072),
        (1592, 77, 768),
        (1592, 100, 130),
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
                    g,
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
                assert!(
                    d < 1e-4,
                    "{set:?} m={m} k={k} n={n} mode={mode} f16={f16}: {d}"
                );
            }
        }
    }
    eprintln!("matmul {}: max |Δ| GPU vs CPU = {worst:.2e}", set.name());
}

#[test]
fn attention_matches_cpu() {
    each_set(attention_cases);
}

fn attention_cases(g: &Gpu, set: KernelSet) {
    let mut r = Rng::new(2);
    let mut worst = 0.0f32;
    // t past one block of 64 queries and off the 16-key tile (199, 77, 13), t = 1, head
    // dimensions 64, 16 and 128.
    for &(seqs, t, d, heads, causal) in &[
        (2, 199, 768, 12, false),
        (3, 77, 512, 8, true),
        (1, 1, 64, 1, true),
        (2, 13, 48, 3, false),
        (1, 130, 256, 2, true),
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
        let got = testing::attention(g, &qkv, seqs, t, d, heads, causal).unwrap();
        let dd = max_diff(&got, &want);
        worst = worst.max(dd);
        assert!(dd < 1e-5, "{set:?} seqs={seqs} t={t} d={d}: {dd}");
    }
    eprintln!("attention {}: max |Δ| GPU vs CPU = {worst:.2e}", set.name());
}

#[test]
fn layer_norm_matches_cpu() {
    each_set(layer_norm_cases);
}

fn layer_norm_cases(g: &Gpu, set: KernelSet) {
    let mut r = Rng::new(3);
    let mut worst = 0.0f32;
    // Widths below, at and off the 128-invocation workgroup; (stride 3: every third row from
    // row 1, as ln_post reads the CLS rows).
    for &(rows, d, first, stride) in &[
        (1, 768, 0, 1),
        (199, 768, 0, 1),
        (77, 512, 0, 1),
        (3, 5, 0, 1),
        (4, 300, 1, 3),
    ] {
        let src_rows = first + (rows - 1) * stride + 1;
        let x: Vec<f32> = (0..src_rows * d)
            .map(|i| r.uniform(2.0) + (i % 7) as f32)
            .collect();
        let w = rand(&mut r, d, 1.0);
        let b = rand(&mut r, d, 1.0);
        let picked: Vec<f32> = (0..rows)
            .flat_map(|i| x[(first + i * stride) * d..][..d].iter().copied())
            .collect();
        let mut want = vec![0.0; rows * d];
        layer_norm(&picked, &mut want, d, &w, &b, 1e-5);
        let got = testing::layer_norm(g, &x, rows, d, first, stride, &w, &b, 1e-5).unwrap();
        let dd = max_diff(&got, &want);
        worst = worst.max(dd);
        assert!(dd < 1e-5, "{set:?} rows={rows} d={d}: {dd}");
    }
    eprintln!("layernorm {}: max |Δ| GPU vs CPU = {worst:.2e}", set.name());
}

#[test]
fn im2col_matches_the_definition() {
    let g = gpu();
    let mut r = Rng::new(4);
    // 2 images of 3×20×20 in 4×4 patches (a 5×5 grid).
    let (images, s, p) = (2, 20, 4);
    let gsz = s / p;
    let px = rand(&mut r, images * 3 * s * s, 1.0);
    let got = testing::im2col(&g, &px, images, s, p).unwrap();
    // Patch (gy, gx) of image i is row i·G² + gy·G + gx; column c·P² + ky·P + kx holds
    // pixel [i, c, gy·P + ky, gx·P + kx] (PyTorch's conv weight order).
    let mut want = Vec::new();
    for i in 0..images {
        for gy in 0..gsz {
            for gx in 0..gsz {
                for c in 0..3 {
                    for ky in 0..p {
                        for kx in 0..p {
                            want.push(px[((i * 3 + c) * s + gy * p + ky) * s + gx * p + kx]);
                        }
                    }
                }
            }
        }
    }
    assert_eq!(got, want);
}

#[test]
fn assemble_splice_and_l2norm_match_the_definitions() {
    let g = gpu();
    let mut r = Rng::new(5);
    // assemble: 2 images, 4 patches, width 6, sequences of 7 rows (CLS + 4 patches + 2 prompts).
    let (images, patches, d, t) = (2, 4, 6, 7);
    let pe = rand(&mut r, images * patches * d, 1.0);
    let cls_pos = rand(&mut r, (patches + 2) * d, 1.0); // class embedding, then 5 positions
    let got = testing::assemble(&g, &pe, &cls_pos, images, t, d).unwrap();
    for i in 0..images {
        for row in 0..t {
            for c in 0..d {
                let want = match row {
                    0 => cls_pos[c] + cls_pos[d + c],
                    r if r <= patches => {
                        pe[(i * patches + r - 1) * d + c] + cls_pos[(r + 1) * d + c]
                    }
                    _ => 0.0, // prompt rows: left for the splice
                };
                assert_eq!(
                    got[(i * t + row) * d + c],
                    want,
                    "image {i} row {row} col {c}"
                );
            }
        }
    }
    // splice: rows 5 and 6 of each sequence replaced, the rest untouched.
    let x = rand(&mut r, images * t * d, 1.0);
    let prompt = rand(&mut r, 2 * d, 1.0);
    let got = testing::splice(&g, &prompt, &x, images, t, 5, d).unwrap();
    for i in 0..images {
        for row in 0..t {
            let want = if row >= 5 {
                &prompt[(row - 5) * d..][..d]
            } else {
                &x[(i * t + row) * d..][..d]
            };
            assert_eq!(
                &got[(i * t + row) * d..][..d],
                want,
                "sequence {i} row {row}"
            );
        }
    }
    // l2norm against maple_core::ops::l2_normalize, a zero row included.
    let mut x = rand(&mut r, 5 * 512, 3.0);
    x[512..1024].fill(0.0);
    let got = testing::l2norm(&g, &x, 512).unwrap();
    let mut want = x.clone();
    want.chunks_mut(512).for_each(maple_core::ops::l2_normalize);
    assert!(max_diff(&got, &want) < 1e-6);
}
