#!/usr/bin/env bash
# aarch64 (ARM Linux, Apple Silicon's instruction set): cross-builds the core's unit tests and the
# tiny-model golden tests (PyTorch logits for MaPLe and zero-shot, the prompt family, int8) for
# aarch64-unknown-linux-gnu with Debian's gcc-aarch64-linux-gnu, and runs them under qemu-aarch64
# (Debian's qemu-user) as three CPUs, so each NEON int8 arm is the one the engine picks once:
#   max          NEON + dotprod + i8mm + bf16   int8 through usdot, bf16 through bfdot
#   neoverse-n1  NEON + dotprod                 int8 through sdot, no bf16
#   cortex-a53   NEON                           int8 through the portable tile, no bf16
# (the core's int8 test also runs every arm the CPU has against the portable one, its bf16 test
# bfdot against an f64 reference, and its f32
# tests every path: NEON and portable). The full-size tests stay on x86: under emulation one
# full-size pass over the 16 images takes minutes. Installs the cross compiler and qemu when
# missing; prints SKIPPED (exit 0) only when the Rust target cannot be installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
need=""
command -v aarch64-linux-gnu-gcc >/dev/null || need="$need gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
command -v qemu-aarch64 >/dev/null || need="$need qemu-user"
if [ -n "$need" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
T=aarch64-unknown-linux-gnu
if ! rustup target list --installed 2>/dev/null | grep -qx $T; then
  rustup target add $T >&2 || { echo "aarch64: SKIPPED (rustup target add $T failed)"; exit 0; }
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64
export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu
cargo clippy -q -p maple-clip-core --all-targets --target $T -- -D warnings
core=(cargo test -q --release --target $T -p maple-clip-core --lib)
# The library without its default features: no hub client (TLS) and no wgpu to cross-build.
tiny=(cargo test -q --release --target $T --no-default-features --test golden_logits --test family --test int8)
"${core[@]}" --no-run
"${tiny[@]}" --no-run
for cpu in max:neon-i8mm:bf16 neoverse-n1:neon-dotprod:- cortex-a53:portable:-; do
  IFS=: read -r model want bf16 <<<"$cpu"
  echo "aarch64 ($model): core unit tests"
  QEMU_CPU=$model "${core[@]}" 2>&1 | grep -E '^test result' 
  out=$(QEMU_CPU=$model "${tiny[@]}" tiny -- --nocapture 2>&1) || { echo "$out" >&2; exit 1; }
  echo "$out" | grep -E '^test result|max \|Δlogit\|' | sed 's/^/  /'
  echo "$out" | grep -q "tiny int8 ($want)" \
    || { echo "aarch64 ($model): the int8 kernel was not $want" >&2; exit 1; }
  if [ "$bf16" = bf16 ]; then
    echo "$out" | grep -q "tiny bf16 (hardware)" \
      || { echo "aarch64 ($model): bf16 did not run on bfdot" >&2; exit 1; }
  else
    echo "$out" | grep -q "tiny bf16: not offered" \
      || { echo "aarch64 ($model): bf16 was offered on a CPU without BF16" >&2; exit 1; }
  fi
done
echo "aarch64: passed on max, neoverse-n1 and cortex-a53"
