#!/usr/bin/env bash
# maple from Python beside the Python tools people use for the same job, on the full-size
# synthetic ViT-B/16, zero-shot, 16 fixture images × 10 labels, each peer in its own process with
# the same threads: maple_clip (the wheel, f32 and int8), transformers' zero-shot-image-
# classification pipeline and open_clip (fp32). Then the per-call overhead of the Python API
# against the Rust library (examples/call_time.rs) on the tiny model. Needs a Python with torch,
# transformers, open_clip_torch and safetensors (CI installs none of them):
#   PYTHON=/path/to/python bash tools/bench/python.sh
# Installs the wheel into that Python (pip install ./bindings/python) and prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
THREADS="${THREADS:-2}"
export THREADS
M=target/synth-full
B=target/bench
mkdir -p "$B"
die() { echo "tools/bench/python.sh: $*" >&2; exit 1; }
"$PY" -c "import torch, transformers, open_clip, safetensors" 2>/dev/null \
  || die "$PY cannot import torch, transformers, open_clip and safetensors (set PYTHON=...)"
[ -f $M/model.safetensors ] || cargo run -q --release -p maple-cli --bin maple-synth -- --out $M --size full
"$PY" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./bindings/python
# transformers' pipeline loads a tokenizer and an image processor from the model folder: CLIP's
# (maple's bundled tokenizer.json, CLIP's preprocessing defaults) beside the same weights.
HF=$B/hf-clip
mkdir -p $HF
ln -sf "$PWD/$M/config.json" "$PWD/$M/model.safetensors" $HF/
"$PY" - "$HF" <<'PYEOF'
import sys
from transformers import CLIPImageProcessor, CLIPTokenizerFast
CLIPTokenizerFast(tokenizer_file="text/assets/tokenizer.json").save_pretrained(sys.argv[1])
CLIPImageProcessor().save_pretrained(sys.argv[1])
PYEOF
run() { "$PY" tools/bench/python.py "$@" 2>>$B/python.log | tail -n 1; }
echo "maple_clip f32, int8; transformers; open_clip ($THREADS threads) ..." >&2
MF=$(run maple $M --precision f32)
MI=$(run maple $M --precision int8)
TR=$(run transformers $HF)
OC=$(run open_clip $M)
echo "per-call overhead (tiny model) ..." >&2
RUST=$(cargo run -q --release --example call_time -- tests/fixtures/tiny "$THREADS" 200)
PYO=$(run overhead tests/fixtures/tiny)
"$PY" - "$MF" "$MI" "$TR" "$OC" "$RUST" "$PYO" <<'PYEOF'
import json, sys
mf, mi, tr, oc, rust, pyo = map(json.loads, sys.argv[1:])
def agree(r): return sum(a == b for a, b in zip(r["top1"], mf["top1"]))
print(f"| peer | batch 1 img/s (best / median) | batch 8 img/s (best / median) | maple f32 b1 / peer b1 | maple f32 b8 / peer b8 | maple int8 b8 / peer b8 | same top-1 as maple f32 |")
print("|---|---|---|---|---|---|---|")
for name, r in (("maple_clip f32", mf), ("maple_clip int8", mi), ("transformers pipeline fp32", tr), ("open_clip fp32 (text cached)", oc)):
    print(f"| {name} | {r['b1_best']:.2f} / {r['b1_median']:.2f} | {r['b8_best']:.2f} / {r['b8_median']:.2f} | "
          f"{mf['b1_best'] / r['b1_best']:.2f}× | {mf['b8_best'] / r['b8_best']:.2f}× | {mi['b8_best'] / r['b8_best']:.2f}× | {agree(r)}/16 |")
print()
print(f"Per call (tiny model, 224² RGB array, 10 labels): Rust library {rust['rust_us_per_call_best']:.0f} µs, "
      f"Python {pyo['python_us_per_call_best']:.0f} µs: overhead {pyo['python_us_per_call_best'] - rust['rust_us_per_call_best']:.0f} µs per call "
      f"(medians {rust['rust_us_per_call_median']:.0f} / {pyo['python_us_per_call_median']:.0f} µs).")
PYEOF
