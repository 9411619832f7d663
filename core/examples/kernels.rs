//! Each CPU kernel on every path this machine runs, one thread, with its speed against the
//! portable path: `cargo run --release -p maple-clip-core --example kernels`; for the browser's
//! SIMD128, the same under Node (tools/bench/kernels-wasm.sh). Shapes are the ViT-B/16 image
//! tower's: 197 tokens, width 768, MLP 3072, 12 heads.
use maple_core::gemm::{gemm_isa, Epilogue, PackedMatrix};
use maple_core::par::Parallel;
use maple_core::q8::{gemm_q8, Q8Matrix, Q8Scratch};
use maple_core::simd::{available, exp_scaled_sum, int8_kernel_name, isa, quick_gelu_slice, Isa};
use maple_core::synth::Rng;
use std::time::Instant;

/// Best of 5 runs of `f` (after one warm-up), in seconds.
fn best(mut f: impl FnMut()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

/// Times the int8 GEMM `out = x · wᵀ` (`x`: `m` rows) with epilogue `ep`, one thread, and prints
/// its line: `int8 {what}: … ms, … GOP/s`.
fn int8_row(what: &str, x: &[f32], m: usize, w: &Q8Matrix, out: &mut [f32], ep: Epilogue<'_>) {
    let seq = Parallel::sequential();
    let mut s = Q8Scratch::new(m, w.k);
    let secs = best(|| gemm_q8(&seq, x, w.k, m, w, out, w.n, ep, &mut s));
    println!(
        "int8 {what}: {:.3} ms, {:.1} GOP/s",
        secs * 1e3,
        2.0 * (m * w.k * w.n) as f64 / secs / 1e9
    );
}

fn main() {
    let (t, d, mlp) = (197, 768, 3072);
    let mut r = Rng::new(1);
    let a: Vec<f32> = (0..t * d).map(|_| r.uniform(1.0)).collect();
    let w: Vec<f32> = (0..mlp * d).map(|_| r.uniform(0.05)).collect();
    let bias: Vec<f32> = (0..mlp).map(|_| r.uniform(0.1)).collect();
    let fc1 = PackedMatrix::from_out_in(&w, mlp, d);
    let scores: Vec<f32> = (0..12 * t * t).map(|_| r.uniform(3.0)).collect();
    let hidden: Vec<f32> = (0..t * mlp).map(|_| r.uniform(3.0)).collect();
    let seq = Parallel::sequential();
    let mut c = vec![0.0f32; t * mlp];
    let mut rows: Vec<(&str, Isa, f64)> = Vec::new();
    for isa in available() {
        let g = best(|| {
            gemm_isa(
                isa,
                &seq,
                &a,
                d,
                t,
                &fc1,
                &mut c,
                mlp,
                Epilogue::gelu(&bias),
            )
        });
        rows.push(("fc1 + GELU 197x768x3072", isa, g));
        let mut s = scores.clone();
        let e = best(|| {
            for row in s.chunks_exact_mut(t) {
                exp_scaled_sum(isa, row, 0.125, 1.0);
            }
        });
        rows.push(("softmax exp 12x197x197", isa, e));
        let mut h = hidden.clone();
        let q = best(|| quick_gelu_slice(isa, &mut h));
        rows.push(("QuickGELU 197x3072", isa, q));
    }
    // int8 runs on the chosen path's kernel (MAPLE_SIMD=portable for the portable one).
    let kern = int8_kernel_name();
    let q8 = Q8Matrix::from_out_in(&w, mlp, d);
    let what = format!("fc1 + GELU 197x768x3072 on {kern} ({})", isa().name());
    int8_row(&what, &a, t, &q8, &mut c, Epilogue::gelu(&bias));
    // The same without QuickGELU: what the activation costs inside the int8 epilogue.
    let what = format!("fc1 + bias 197x768x3072 on {kern}");
    int8_row(&what, &a, t, &q8, &mut c, Epilogue::store(Some(&bias)));
    // fc2's shape: the long reduction (3072), whose weight panel (96 KiB widened) outgrows L1.
    let q8_2 = Q8Matrix::from_out_in(&w, d, mlp);
    let mut c2 = vec![0.0f32; t * d];
    let what = format!("fc2 197x3072x768 on {kern}");
    int8_row(&what, &hidden, t, &q8_2, &mut c2, Epilogue::store(None));
    println!("kernel                    path          time   vs portable");
    for (name, isa, secs) in &rows {
        let base = rows
            .iter()
            .find(|(n, i, _)| n == name && *i == Isa::PORTABLE)
            .map_or(*secs, |x| x.2);
        let rate = if name.starts_with("fc1") {
            format!("  {:.1} GFLOP/s", 2.0 * (t * d * mlp) as f64 / secs / 1e9)
        } else {
            String::new()
        };
        println!(
            "{name:<25} {:<9} {:>8.3} ms {:>6.2}x{rate}",
            isa.name(),
            secs * 1e3,
            base / secs
        );
    }
}
