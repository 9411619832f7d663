#!/usr/bin/env bash
# maple's GPU path beside PyTorch CUDA on one NVIDIA machine, in one run (issue 12): the
# full-size synthetic ViT-B/16 + MaPLe image tower at batch 1, 8 and 32 — PyTorch fp32 with
# TF32 off, TF32, fp16; maple f32 and f16 weights on Vulkan, with its per-kernel GPU profile —
# then one table with the GPU's name. Needs: an NVIDIA driver with Vulkan (libvulkan1 and the
# driver's ICD), a Python with torch (CUDA) + transformers + safetensors, and prebuilt
# maple-bench, maple-synth and maple-classify (cargo build --release -p maple-cli). Each maple
# GPU variant's logits on the 16 fixture images × 10 labels are checked against maple's CPU
# path (max |Δlogit|, same top-5), the tensor-core one (MAPLE_GPU_KERNELS=coopmat) included.
#   PYTHON=/path/to/python bash tools/bench/gpu.sh [DIR_WITH_BINARIES]      (about 3-6 minutes)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${1:-target/release}"
PY="${PYTHON:-python3}"
OUT="${OUT:-target/bench-gpu}"
BATCHES="${BATCHES:-1,8,32}"
die() { echo "tools/bench/gpu.sh: $*" >&2; exit 1; }
for b in maple-bench maple-synth maple-classify; do [ -x "$BIN/$b" ] || die "no $b in $BIN"; done
"$PY" -c "import torch, transformers; assert torch.cuda.is_available()" 2>/dev/null \
  || die "$PY cannot import torch + transformers with CUDA (set PYTHON=...)"
mkdir -p "$OUT"
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
[ -f "$OUT/model/model.safetensors" ] || timeout 300 "$BIN/maple-synth" --out "$OUT/model" --size full >&2
M="$OUT/model"
classify() {  # $1 = device, $2 = precision, $3 = kernel set → $OUT/logits-$1-$2-$3.jsonl
  MAPLE_GPU_KERNELS="$3" timeout 120 "$BIN/maple-classify" tests/fixtures/images --classes tests/fixtures/labels.txt \
    --model "$M" --prompts "$M/maple_prompts.safetensors" --format json --no-cache --quiet \
    --device "$1" --precision "$2" > "$OUT/logits-$1-$2-$3.jsonl" 2> "$OUT/logits-$1-$2-$3.log" || true
}
echo "accuracy: maple GPU variants against maple's CPU path ..." >&2
classify cpu f32 tiled
for v in "f32 simple" "f32 tiled" "f16 tiled" "f16 coopmat"; do classify gpu $v; done
run_maple() {  # $1 = precision, $2 = kernel set
  timeout 240 "$BIN/maple-bench" --model "$M" --prompts "$M/maple_prompts.safetensors" --device gpu \
    --precision "$1" --kernels "$2" --batches "$BATCHES" --labels 100 --reps 5 --profile \
    > "$OUT/maple-$1-$2.txt" 2> "$OUT/maple-$1-$2.log" || echo "{\"error\": \"maple-bench $1 $2 failed: see $OUT/maple-$1-$2.log\"}" >> "$OUT/maple-$1-$2.txt"
  cat "$OUT/maple-$1-$2.txt" >&2
}
echo "maple (Vulkan) ..." >&2
run_maple f32 tiled
run_maple f16 tiled
run_maple f32 simple
run_maple f16 coopmat
echo "PyTorch CUDA ..." >&2
timeout 300 "$PY" tools/bench/torch_gpu_bench.py "$M" --batches "$BATCHES" > "$OUT/torch.json" 2> "$OUT/torch.log" \
  || die "the PyTorch peer failed: $OUT/torch.log"
"$PY" - "$OUT" "$BATCHES" <<'PYEOF'
import json, sys, pathlib
out, batches = pathlib.Path(sys.argv[1]), [int(b) for b in sys.argv[2].split(",")]
last = lambda p: json.loads(p.read_text().strip().splitlines()[-1])
t = last(out / "torch.json")
m = {k: last(out / f"maple-{k}.txt") for k in ["f32-tiled", "f16-tiled", "f32-simple", "f16-coopmat"]}
print(f"\nGPU: {t['gpu']}  (maple on {m['f32-tiled'].get('adapter', '?')}; torch {t['torch']})")
print("image tower, images/s (higher is better); ratio = maple / PyTorch fp32 (TF32 off)")
cols = ["torch fp32", "torch tf32", "torch fp16", "maple f32 tiled", "maple f16 tiled", "maple f32 simple", "maple f16 coopmat", "f32/fp32", "f16/fp32", "coopmat/fp32"]
print("| batch | " + " | ".join(cols) + " |")
print("|" + " --- |" * (len(cols) + 1))
for b in batches:
    k = f"image_b{b}_images_per_s"
    v = [t.get(f"fp32_{k}"), t.get(f"tf32_{k}"), t.get(f"fp16_{k}"), m["f32-tiled"].get(k), m["f16-tiled"].get(k), m["f32-simple"].get(k), m["f16-coopmat"].get(k)]
    r = [v[i] / v[0] if v[0] and v[i] else None for i in (3, 4, 6)]
    f = lambda x, d=1: "–" if x is None else f"{x:.{d}f}"
    print(f"| {b} | " + " | ".join(f(x) for x in v) + " | " + " | ".join(f(x, 2) + "×" if x else "–" for x in r) + " |")
def logits(name):
    p = out / f"logits-{name}.jsonl"
    rows = [json.loads(l) for l in p.read_text().splitlines()] if p.exists() else []
    return {r["image"]: r for r in rows if "scores" in r}
cpu = logits("cpu-f32-tiled")
print("\naccuracy on 16 fixture images x 10 labels, against maple's CPU path (itself within 1e-4 of PyTorch):")
for v in ["gpu-f32-simple", "gpu-f32-tiled", "gpu-f16-tiled", "gpu-f16-coopmat"]:
    g = logits(v)
    if not g or len(g) != len(cpu):
        log = out / f"logits-{v}.log"
        err = log.read_text().strip().splitlines() if log.exists() else []
        print(f"  {v}: did not run ({err[-1] if err else 'no output'})")
        continue
    d = max(abs(a["logit"] - b["logit"]) for k in cpu for a, b in zip(g[k]["scores"], cpu[k]["scores"]))
    same = sum(g[k]["top"] == cpu[k]["top"] for k in cpu)
    print(f"  {v}: max |dlogit| {d:.2e}, same top-5 on {same}/{len(cpu)} images")
print("\nPer-kernel GPU time (maple-bench --profile) for each maple run is in", out)
PYEOF
