#!/usr/bin/env bash
# The CPU kernels (core/examples/kernels.rs) natively and as wasm32 with SIMD128 under Node (V8,
# the engine of Chromium), one thread, each path against the portable one. BENCHMARKS.md, "Kernels".
# (--single-threaded-gc: Node 20 can crash on exit after a WASI program this size without it.)
set -euo pipefail
cd "$(dirname "$0")/../.."
rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
cargo build -q --release -p maple-clip-core --example kernels
cargo build -q --release -p maple-clip-core --example kernels --target wasm32-wasip1
echo "native ($(uname -m)):"
target/release/examples/kernels
echo "wasm32 + SIMD128 under Node $(node --version):"
node --no-warnings --single-threaded-gc tools/wasi-run.mjs target/wasm32-wasip1/release/examples/kernels.wasm
# The browser build before SIMD128: the same kernels compiled without it (scalar wasm).
CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="-C target-feature=-simd128" \
  cargo build -q --release -p maple-clip-core --example kernels --target wasm32-wasip1 --target-dir target/nosimd
echo "wasm32 without SIMD128 (scalar) under Node $(node --version):"
node --no-warnings --single-threaded-gc tools/wasi-run.mjs target/nosimd/wasm32-wasip1/release/examples/kernels.wasm
