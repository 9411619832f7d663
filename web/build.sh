#!/usr/bin/env bash
# Builds web/pkg, the npm package `maple-web` (wasm + JS glue + API + types), which the demo page uses: wasm32 target and a wasm-bindgen-cli of
# exactly the crate's version are installed when missing. Exits 3 when the wasm32 target cannot
# be had on this machine (the web test then reports SKIPPED).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup target list --installed 2>/dev/null | grep -q '^wasm32-unknown-unknown$'; then
  if ! rustup target add wasm32-unknown-unknown >&2; then
    echo "the wasm32-unknown-unknown target could not be installed (rustup target add failed)" >&2
    exit 3
  fi
fi
want=$(sed -n 's/^wasm-bindgen = "=\(.*\)"/\1/p' web/Cargo.toml)
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$want" ]; then
  cargo install wasm-bindgen-cli --version "$want" >&2
fi
cargo build -p maple-web --lib --target wasm32-unknown-unknown --profile wasm >&2
wasm-bindgen --target web --out-dir web/pkg target/wasm32-unknown-unknown/wasm/maple_web.wasm >&2
# A second build with relaxed SIMD (the GEMM's multiply-adds fused, f32x4.relaxed_madd), which
# index.js loads where the browser validates it; the first is the fallback. Same Rust code, so
# wasm-bindgen writes the same glue for both (checked): only the .wasm differs.
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-C target-feature=+simd128,+relaxed-simd" \
  cargo build -p maple-web --lib --target wasm32-unknown-unknown --profile wasm --target-dir target/wasm-relaxed >&2
rm -rf target/wasm-relaxed/pkg
wasm-bindgen --target web --out-dir target/wasm-relaxed/pkg \
  target/wasm-relaxed/wasm32-unknown-unknown/wasm/maple_web.wasm >&2
cmp -s web/pkg/maple_web.js target/wasm-relaxed/pkg/maple_web.js \
  || { echo "the relaxed-SIMD build's glue differs from the SIMD128 build's" >&2; exit 1; }
cp target/wasm-relaxed/pkg/maple_web_bg.wasm web/pkg/maple_web_relaxed_bg.wasm
# The threaded build (relaxed SIMD + atomics, shared memory): index.js loads it on a
# cross-origin-isolated page and starts Web Workers (worker.js) on it. Rust's std must be rebuilt
# with atomics, which needs a nightly toolchain and its rust-src: one dated nightly, so the build
# does not change under us (-Z build-std and the atomics flags are unstable). Override with
# MAPLE_NIGHTLY=nightly-YYYY-MM-DD.
NIGHTLY="${MAPLE_NIGHTLY:-nightly-2026-05-20}"
if ! rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1 \
  || ! rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null | grep -q '^rust-src' \
  || ! rustup target list --toolchain "$NIGHTLY" --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src --target wasm32-unknown-unknown >&2
fi
threads="-C target-feature=+atomics,+bulk-memory,+mutable-globals,+simd128,+relaxed-simd"
for a in --shared-memory --max-memory=4294967296 --import-memory --export=__wasm_init_tls \
  --export=__tls_size --export=__tls_align --export=__tls_base; do
  threads="$threads -C link-arg=$a"
done
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="$threads" cargo "+$NIGHTLY" build -Z build-std=panic_abort,std \
  -p maple-web --lib --target wasm32-unknown-unknown --profile wasm --target-dir target/wasm-threads >&2
rm -rf web/pkg/threads
wasm-bindgen --target web --out-dir web/pkg/threads \
  target/wasm-threads/wasm32-unknown-unknown/wasm/maple_web.wasm >&2
# The npm package: wasm-bindgen's binding and types + the API (web/js/) + licences.
cp web/js/index.js web/js/index.d.ts web/js/worker.js web/js/package.json web/js/README.md web/pkg/
cp LICENSE-MIT LICENSE-APACHE web/pkg/
ls -l web/pkg/maple_web_bg.wasm web/pkg/maple_web_relaxed_bg.wasm web/pkg/threads/maple_web_bg.wasm >&2
