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
# The npm package: wasm-bindgen's binding and types + the API (web/js/) + licences.
cp web/js/index.js web/js/index.d.ts web/js/package.json web/js/README.md web/pkg/
cp LICENSE-MIT LICENSE-APACHE web/pkg/
ls -l web/pkg/maple_web_bg.wasm >&2
