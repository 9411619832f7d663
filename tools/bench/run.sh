#!/usr/bin/env bash
# Runs maple-bench and the PyTorch peer on the same machine, in the same run, and writes
# BENCHMARKS.md with the ratios. Needs a Python with torch + transformers (not installed by CI):
#   PYTHON=/path/to/python bash tools/bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
THREADS="${THREADS:-2}"
cargo build --release -q -p maple-cli --bin maple-bench --bin maple-synth
[ -f target/synth-full/model.safetensors ] || ./target/release/maple-synth --out target/synth-full --size full
M=$(./target/release/maple-bench --model target/synth-full --prompts target/synth-full/maple_prompts.safetensors --threads "$THREADS")
T=$("$PY" tools/bench/torch_bench.py target/synth-full --threads "$THREADS" 2>/dev/null | tail -n 1)
CPU=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
"$PY" - "$M" "$T" "$CPU" "$THREADS" <<'PY'
import json, sys, datetime
m, t, cpu, threads = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
rows = []
for k in t:
    if k in ("engine", "threads", "torch"):
        continue
    faster = m[k] / t[k] if k.endswith("per_s") else t[k] / m[k]
    rows.append(f"| {k} | {m[k]:.3f} | {t[k]:.3f} | **{faster:.2f}×** |")
doc = f"""# Benchmarks

CPU: {cpu}; {threads} threads for both engines; full-size ViT-B/16 synthetic model with MaPLe
prompts (n_ctx 2, depth 9; vision sequence 199 tokens); PyTorch {t['torch']} eager fp32
(HF CLIPModel + MaPLe hooks), text at MaPLe's 77 tokens; maple runs the text tower only up to
each batch's longest EOT (exact, spec §7). Ratio = how many times faster maple is.
Measured {datetime.date.today()} with:

    PYTHON=/path/to/python-with-torch bash tools/bench/run.sh

| measurement | maple | PyTorch | maple vs PyTorch |
| --- | --- | --- | --- |
""" + "\n".join(rows) + """

Image rows are images/s (best of 3 after a warm-up); text rows are seconds for that many
labels (one run). Readings on this shared 2-core machine swing by up to ±25 % within minutes:
rerun before drawing conclusions.
"""
open("BENCHMARKS.md", "w").write(doc)
print(doc)
PY
