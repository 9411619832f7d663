//! The time of one `classify_rgb8` call through the Rust library, for comparing a binding's
//! per-call overhead with it (tools/bench/python.py runs the same calls from Python).
//!
//!     cargo run --release --example call_time -- MODEL_DIR [THREADS] [CALLS]
//!
//! Prints `{"rust_us_per_call_best": …, "rust_us_per_call_median": …}`: a 224×224 RGB pattern
//! classified against 10 labels, zero-shot, on the CPU, best and median of 5 rounds of CALLS.

use std::time::Instant;

fn main() -> Result<(), maple::Error> {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny").to_string());
    let threads: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2);
    let calls: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(200);
    let labels: Vec<String> = (0..10).map(|i| format!("thing number {i}")).collect();
    let mut c = maple::Classifier::builder(&model)
        .labels(&labels)
        .device(maple::Device::Cpu)
        .threads(threads)
        .build()?;
    // The same pixels as tools/bench/python.py: (i * 7919) mod 251 over the H×W×3 bytes.
    let pixels: Vec<u8> = (0..224 * 224 * 3).map(|i| (i * 7919 % 251) as u8).collect();
    c.classify_rgb8(&pixels, 224, 224)?;
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..calls {
            std::hint::black_box(c.classify_rgb8(&pixels, 224, 224)?);
        }
        rounds.push(t.elapsed().as_secs_f64() * 1e6 / calls as f64);
    }
    rounds.sort_by(f64::total_cmp);
    println!(
        "{{\"rust_us_per_call_best\": {:.1}, \"rust_us_per_call_median\": {:.1}}}",
        rounds[0], rounds[2]
    );
    Ok(())
}
