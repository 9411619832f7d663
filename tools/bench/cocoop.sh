#!/usr/bin/env bash
# CoCoOp (image-conditioned text) on the full-size synthetic ViT-B/16: maple (maple-bench, its
# CoCoOp path: image tower, then every (image, label) sequence of the batch in row-packed passes
# up to each pass's longest EOT) beside the original CoCoOp (the MaPLe repository's
# trainers/cocoop.py CustomCLIP, tools/bench/cocoop.py), same prompts, same threads, batch 8,
# 10 and 100 labels, each in its own process. The original's code is not part of this
# repository: give a work tree of muzairkhattak/multimodal-prompt-learning, and a Python with
# torch, torchvision, safetensors, pillow, ftfy, regex and tqdm (CI installs none of them):
#   MPL_REPO=/path/to/checkout PYTHON=/path/to/python bash tools/bench/cocoop.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
THREADS="${THREADS:-2}"
LABELS="${LABELS:-10,100}"
M=target/synth-full
P=tests/fixtures/family_full/cocoop.safetensors
[ -n "${MPL_REPO:-}" ] || { echo "tools/bench/cocoop.sh: set MPL_REPO to a checkout of the MaPLe repository" >&2; exit 1; }
[ -f $M/model.safetensors ] || cargo run -q --release -p maple-cli --bin maple-synth -- --out $M --size full
cargo build -q --release -p maple-cli --bin maple-bench
maple=$(target/release/maple-bench --model $M --prompts $P --threads "$THREADS" --batches 8 --labels "$LABELS" --reps 3)
orig=$("$PY" tools/bench/cocoop.py --repo "$MPL_REPO" --model $M --prompts $P --threads "$THREADS" --batch 8 --labels "$LABELS" --reps 3 2>/dev/null | tail -1)
echo "maple:    $maple"
echo "original: $orig"
"$PY" - "$maple" "$orig" "$LABELS" <<'PYEOF'
import json, sys
m, o = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"original vs golden logits: max |Δ| = {o['max_abs_dlogit_vs_golden']:.2e}")
print("| labels | maple images/s | original images/s | maple / original |")
print("|---|---|---|---|")
for n in sys.argv[3].split(","):
    k = f"cocoop_b8_{n}_labels_images_per_s"
    print(f"| {n} | {m[k]:.3f} | {o[k]:.3f} | {m[k] / o[k]:.1f}× |")
PYEOF
