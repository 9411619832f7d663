#!/usr/bin/env bash
# Windows: cross-builds maple-classify.exe (x86_64-pc-windows-gnu, Debian's mingw-w64) and runs
# its CPU path under wine on the tiny model, every golden image, against the PyTorch golden
# logits; then tries its GPU path under wine (winevulkan → the host's lavapipe) and says what
# happened. Installs mingw-w64 and wine when missing. Prints SKIPPED (exit 0) only when the
# Rust target cannot be installed on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
need=""
command -v x86_64-w64-mingw32-gcc >/dev/null || need="$need gcc-mingw-w64-x86-64"
command -v wine >/dev/null || need="$need wine wine64"
if [ -n "$need" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
T=x86_64-pc-windows-gnu
if ! rustup target list --installed 2>/dev/null | grep -qx $T; then
  rustup target add $T >&2 || { echo "windows: SKIPPED (rustup target add $T failed)"; exit 0; }
fi
cargo build -q --target $T -p maple-cli --bin maple-classify
W=target/windows-test
mkdir -p $W
cp target/$T/debug/maple-classify.exe $W/
# Rust's std (≥ 1.78) imports ProcessPrng from bcryptprimitives.dll, which wine 8 lacks: a shim
# beside the exe forwards it to advapi32's SystemFunction036 (RtlGenRandom).
cat > $W/shim.c <<'C'
#include <windows.h>
BOOLEAN WINAPI SystemFunction036(PVOID buf, ULONG len);
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
  return SystemFunction036(data, (ULONG)len);
}
C
x86_64-w64-mingw32-gcc -shared -o $W/bcryptprimitives.dll $W/shim.c -ladvapi32
export WINEPREFIX="$PWD/$W/wineprefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
wineboot -i >/dev/null 2>&1 || true
imgs=$(ls tests/fixtures/images/*)
run() {  # $1 = device; the JSON records go to $W/$1.jsonl
  # shellcheck disable=SC2086
  wine $W/maple-classify.exe $imgs --classes tests/fixtures/labels.txt --model tests/fixtures/tiny \
    --prompts tests/fixtures/tiny/maple_prompts.safetensors --format json --device "$1" --no-cache \
    > $W/$1.jsonl 2> $W/$1.log
}
check() {  # $1 = device: every golden image's logits against PyTorch's
  python3 - $W/$1.jsonl "$1" "$(head -n 1 $W/$1.log)" <<'PY'
import json, sys, os
gold = json.load(open("tests/fixtures/golden_tiny.json"))
want = {name: row for name, row in zip(gold["images"], gold["maple"]["logits"])}
got = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    assert "error" not in r, r
    got[os.path.basename(r["image"].replace("\\", "/"))] = [s["logit"] for s in r["scores"]]
assert sorted(got) == sorted(want), (sorted(got), sorted(want))
d = max(abs(a - b) for k in want for a, b in zip(got[k], want[k]))
print(f"windows: maple-classify.exe --device {sys.argv[2]} under wine ({sys.argv[3]}): {len(got)} images x {len(gold['labels'])} labels, max |dlogit| vs PyTorch = {d:.2e}")
assert d <= 1e-3, d
PY
}
run cpu
check cpu
# The GPU path: wine's winevulkan forwards to the host's Vulkan driver (lavapipe here), and
# needs an X display for its graphics driver to load: a private Xvfb.
if command -v Xvfb >/dev/null; then
  Xvfb :93 -screen 0 640x480x24 >/dev/null 2>&1 &
  xvfb=$!
  trap 'kill $xvfb 2>/dev/null || true' EXIT
  sleep 1
  DISPLAY=:93 run gpu || { echo "windows: --device gpu under wine failed: $(head -c 300 $W/gpu.log)" >&2; exit 1; }
  check gpu
else
  echo "windows: GPU path not run (no Xvfb for wine's graphics driver)"
fi
