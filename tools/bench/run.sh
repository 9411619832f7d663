#!/usr/bin/env bash
# Runs maple-bench (f32 and int8), the PyTorch peer (eager, torch.compile, dynamic int8) and (if
# installed) the ONNX Runtime peer (fp32, dynamic int8 per tensor and per channel) on the same
# machine in the same run, then all image towers again in turns (ROUNDS, default 5), then
# maple-classify end to end (1 and 200 images, cold and warm
# caches, peak RSS), and writes BENCHMARKS.md with the ratios. Needs a Python with torch +
# transformers (+ onnxruntime, onnx for the ORT rows); CI installs none of them:
#   PYTHON=/path/to/python bash tools/bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
THREADS="${THREADS:-2}"
M_DIR=target/synth-full
B=target/bench
mkdir -p "$B"
# Prerequisites, each a clear line when missing (the peers' own errors go to $B/*.log).
die() { echo "tools/bench/run.sh: $*" >&2; exit 1; }
"$PY" -c "import torch, transformers" 2>/dev/null \
  || die "$PY cannot import torch and transformers (set PYTHON=/path/to/python with both)"
OC=/tmp/oc/openai-clip-1.0.1.tar.gz
[ -f "$OC" ] || die "the PyTorch peer needs OpenAI's tokenizer sources at $OC: pip download --no-deps openai-clip==1.0.1 -d /tmp/oc"
command -v /usr/bin/time >/dev/null || die "needs /usr/bin/time for peak memory (apt-get install time)"
cargo build --release -q -p maple-cli --bin maple-bench --bin maple-synth --bin maple-classify
[ -f $M_DIR/model.safetensors ] || ./target/release/maple-synth --out $M_DIR --size full
PROMPTS=$M_DIR/maple_prompts.safetensors

echo "maple-bench (both SIMD paths) ..." >&2
M=$(./target/release/maple-bench --model $M_DIR --prompts $PROMPTS --threads "$THREADS" --gemm --peak)
MALT=$(MAPLE_SIMD=avx2 ./target/release/maple-bench --model $M_DIR --prompts $PROMPTS --threads "$THREADS" --labels 10)
M8=$(./target/release/maple-bench --model $M_DIR --prompts $PROMPTS --threads "$THREADS" --int8)
M16=$(./target/release/maple-bench --model $M_DIR --prompts $PROMPTS --threads "$THREADS" --bf16 --labels 10)
echo "PyTorch (eager, torch.compile, dynamic int8) ..." >&2
T=$("$PY" tools/bench/torch_bench.py $M_DIR --threads "$THREADS" --compile --int8 2>$B/torch.log | tail -n 1) \
  || die "the PyTorch peer failed: $(tail -n 1 $B/torch.log) (whole log: $B/torch.log)"
echo "ONNX Runtime (fp32, dynamic int8) ..." >&2
O=$("$PY" tools/bench/ort_bench.py $M_DIR --threads "$THREADS" --onnx $B/maple_vision.onnx --int8 2>$B/ort.log | tail -n 1 || echo '{}')
# Head to head: maple's towers and the peers' take turns, ROUNDS times, so that each round
# measures all of them in the same minutes (one reading each is at the mercy of this machine's
# swings): maple int8 and f32, ONNX Runtime fp32 and int8, PyTorch eager fp32 and dynamic int8.
H=""
if [ "$O" != "{}" ] && [ -f $B/maple_vision_int8_per_channel.onnx ]; then
  echo "head to head, ${ROUNDS:-5} interleaved rounds ..." >&2
  for r in $(seq "${ROUNDS:-5}"); do
    for flags in "--int8 --low-only" ""; do
      H="$H"$'\n'"$(./target/release/maple-bench --model $M_DIR --prompts $PROMPTS --threads "$THREADS" \
        --labels 10 --reps 8 $flags)"
    done
    H="$H"$'\n'"$("$PY" tools/bench/ort_time.py --threads "$THREADS" --reps 8 $B/maple_vision.onnx \
      $B/maple_vision_int8_per_tensor.onnx $B/maple_vision_int8_per_channel.onnx 2>>$B/ort.log)" \
      || die "timing ONNX Runtime failed: $(tail -n 1 $B/ort.log)"
    H="$H"$'\n'"$("$PY" tools/bench/torch_bench.py $M_DIR --threads "$THREADS" --reps 8 --int8 --time-only \
      2>>$B/torch.log | tail -n 1)" || die "timing PyTorch failed: $(tail -n 1 $B/torch.log)"
    H="$H"$'\n'"---"
  done
fi

# End to end: 1000 labels (the peers' synthetic names) and 1 or 200 images (the 16 fixtures,
# cycled), f32, int8 and bf16.
"$PY" tools/bench/peer.py labels 1000 > $B/labels1000.txt
ONE=(tests/fixtures/images/photo_320x240.jpg)
FIX=(tests/fixtures/images/*)
MANY=()
for i in $(seq 0 199); do MANY+=("${FIX[$((i % ${#FIX[@]}))]}"); done
e2e() { # cache-dir labels-file args... -> "seconds peak_kb"
  local dir=$1 labels=$2; shift 2
  MAPLE_CACHE_DIR=$dir /usr/bin/time -f "%e %M" -o $B/time.txt \
    ./target/release/maple-classify "$@" --classes "$labels" --model $M_DIR --prompts $PROMPTS \
    --device cpu --threads "$THREADS" -q >/dev/null
  cat $B/time.txt
}
sustained() { # precision -> the tower's mean batch-8 rate over 25 batches (200 images)
  local flag="" key="image_b8_images_per_s_mean"
  [ "$1" = f32 ] || { flag="--$1 --low-only"; key="$1_$key"; }
  ./target/release/maple-bench --model $M_DIR --prompts $PROMPTS --threads "$THREADS" --labels 10 \
    --batches 8 --reps 25 $flag | "$PY" -c "import json, sys; print(json.load(sys.stdin)['$key'])"
}
echo "maple-classify end to end ..." >&2
printf 'cat\n' > $B/labels1.txt
cat $M_DIR/model.safetensors $PROMPTS >/dev/null # page cache warm for every run
E=""
SUS=""
for p in f32 int8 bf16; do
  for n in 1 200; do
    if [ $n = 1 ]; then imgs=("${ONE[@]}"); else imgs=("${MANY[@]}"); fi
    rm -rf $B/cache
    E="$E ${p}_cold_$n $(e2e $B/cache $B/labels1000.txt --precision $p "${imgs[@]}")"
    if [ $n = 1 ]; then # best of 3, as the tower's time it is compared with is
      W=$(for r in 1 2 3; do e2e $B/cache $B/labels1000.txt --precision $p "${imgs[@]}"; done | sort -n | head -n 1)
    else
      W=$(e2e $B/cache $B/labels1000.txt --precision $p "${imgs[@]}")
      SUS="$SUS $p $(sustained $p)" # the tower alone for as long, in the same minutes
    fi
    E="$E ${p}_warm_$n $W"
  done
done
rm -rf $B/cache
FILES=$(( $(stat -c %s $M_DIR/model.safetensors) + $(stat -c %s $PROMPTS) ))
CPU=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
# The hand-written GPU section of the current file is kept.
GPU=$(sed -n '/^<!-- gpu -->$/,/^<!-- \/gpu -->$/p' BENCHMARKS.md 2>/dev/null || true)
"$PY" - "$M" "$MALT" "$M8" "$T" "$O" "$E" "$FILES" "$CPU" "$THREADS" "$GPU" "$M16" "$SUS" "$H" <<'PY'
import json, sys, datetime, statistics
m, malt, m8, t, o = (json.loads(x) for x in sys.argv[1:6])
m16 = json.loads(sys.argv[11])
sus = sys.argv[12].split()
sus = {sus[i]: float(sus[i + 1]) for i in range(0, len(sus), 2)}
e = sys.argv[6].split()
e = {e[i]: (float(e[i + 1]), int(e[i + 2])) for i in range(0, len(e), 3)}
files, cpu, threads = int(sys.argv[7]), sys.argv[8], sys.argv[9]
GF = 35.5  # GFLOP per image, MaPLe's 199-token ViT-B/16 image tower
# The image tower, one row per engine and precision: (name, b1, b8, max |Δlogit| vs its own
# fp32, which maple row it is compared with).
def rate(d, prefix, b):
    return d.get(f"{prefix}image_b{b}_images_per_s")
engines = [
    ("**maple f32**", rate(m, "", 1), rate(m, "", 8), None, None),
    ("**maple int8** (`--precision int8`)", rate(m8, "int8_", 1), rate(m8, "int8_", 8), m8.get("int8_max_abs_dlogit"), None),
    ("**maple bf16** (`--precision bf16`)", rate(m16, "bf16_", 1), rate(m16, "bf16_", 8), m16.get("bf16_max_abs_dlogit"), None),
    (f"PyTorch {t['torch']} eager fp32", rate(t, "", 1), rate(t, "", 8), None, "f32"),
    ("PyTorch `torch.compile` fp32" + (f" (failed: {t['compile_error']})" if "compile_error" in t else ""), rate(t, "compile_", 1), rate(t, "compile_", 8), None, "f32"),
    ("PyTorch dynamic int8 (`quantize_dynamic`)", rate(t, "int8_", 1), rate(t, "int8_", 8), t.get("int8_max_abs_dlogit"), "int8"),
    (f"ONNX Runtime {o.get('onnxruntime', '(not installed)')} fp32", rate(o, "", 1), rate(o, "", 8), None, "f32"),
    ("ORT dynamic int8, per tensor", rate(o, "int8_per_tensor_", 1), rate(o, "int8_per_tensor_", 8), o.get("int8_per_tensor_max_abs_dlogit"), "int8"),
    ("ORT dynamic int8, per channel", rate(o, "int8_per_channel_", 1), rate(o, "int8_per_channel_", 8), o.get("int8_per_channel_max_abs_dlogit"), "int8"),
]
mine = {"f32": (rate(m, "", 1), rate(m, "", 8)), "int8": (rate(m8, "int8_", 1), rate(m8, "int8_", 8))}
# Same run, same process: the bf16 tower against the f32 tower it was converted from.
bf16_vs_f32 = (rate(m16, "bf16_", 1) / rate(m16, "", 1), rate(m16, "bf16_", 8) / rate(m16, "", 8))
f = lambda x, p=3: "–" if x is None else f"{x:.{p}f}"
rows = []
for name, b1, b8, err, vs in engines:
    if vs and b1 and b8:
        mb1, mb8 = mine[vs]
        ratio = f"**{mb1 / b1:.2f}× / {mb8 / b8:.2f}×** (maple {vs})"
    else:
        ratio = "–"
    rows.append(f"| {name} | {f(b1)} | {f(b8)} | {ratio} | {f(err)} |")
text_rows = []
for n in (10, 100, 1000):
    k = f"text_{n}_labels_s"
    text_rows.append(f"| {n} | {m[k]:.3f} | {t[k]:.3f} | **{t[k] / m[k]:.2f}×** |")
g_m, g_t = m["gemm_1592x768x3072_gflops"], t["gemm_1592x768x3072_gflops"]
ceiling = max(g_m, g_t)
frac = [(b, m[f"image_b{b}_images_per_s"] * GF) for b in (1, 8)]
tower = {"f32": (1 / m["image_b1_images_per_s"], m["image_b8_images_per_s"]),
         "int8": (1 / m8["int8_image_b1_images_per_s"], m8["int8_image_b8_images_per_s"]),
         "bf16": (1 / m16["bf16_image_b1_images_per_s"], m16["bf16_image_b8_images_per_s"])}
def sec(k): return e[k][0]
mb = lambda kb: kb / 1024
# Head to head: per round, every engine's rates measured back to back.
def engine_of(d):
    if d.get("engine") == "pytorch":
        return "torch"
    if d.get("engine") == "maple":
        return "maple_int8" if "int8_image_b1_images_per_s" in d else "maple_f32"
    return "ort"
rounds = []
for chunk in sys.argv[13].split("---"):
    r = {engine_of(d): d for d in (json.loads(x) for x in chunk.splitlines() if x.strip())}
    if len(r) == 4:
        rounds.append(r)
h2h_rows = []
if rounds:
    ort_rate = lambda stem: lambda r, b: r["ort"][stem][str(b)][0]
    key_rate = lambda eng, prefix: lambda r, b: r[eng][f"{prefix}image_b{b}_images_per_s"]
    lines = [  # (name, rate(round, batch), the maple row it is compared with)
        ("**maple f32**", key_rate("maple_f32", ""), None),
        ("PyTorch eager fp32", key_rate("torch", ""), "maple f32"),
        ("ONNX Runtime fp32", ort_rate("maple_vision"), "maple f32"),
        ("**maple int8**", key_rate("maple_int8", "int8_"), None),
        ("PyTorch dynamic int8", key_rate("torch", "int8_"), "maple int8"),
        ("ORT dynamic int8, per tensor", ort_rate("maple_vision_int8_per_tensor"), "maple int8"),
        ("ORT dynamic int8, per channel", ort_rate("maple_vision_int8_per_channel"), "maple int8"),
    ]
    mine = {"maple f32": lines[0][1], "maple int8": lines[3][1]}
    def cell(xs):
        return f"{statistics.median(xs):.2f} ({min(xs):.2f}–{max(xs):.2f})"
    for name, rate_of, vs in lines:
        got = {b: [rate_of(r, b) for r in rounds] for b in (1, 8)}
        if vs is None:
            h2h_rows.append(f"| {name} | {cell(got[1])} | {cell(got[8])} | – | – |")
            continue
        ratio = {b: [mine[vs](r, b) / rate_of(r, b) for r in rounds] for b in (1, 8)}
        ahead = {b: sum(x > 1 for x in ratio[b]) for b in (1, 8)}
        h2h_rows.append(
            f"| {name} | {cell(got[1])} | {cell(got[8])} | **{statistics.median(ratio[1]):.2f}× / "
            f"{statistics.median(ratio[8]):.2f}×** ({vs}) | {ahead[1]} / {ahead[8]} of {len(rounds)} |")
h2h = "" if not rounds else f"""

### Head to head, interleaved

{len(rounds)} rounds; in each, back to back: `maple-bench --int8 --low-only`, `maple-bench`,
ONNX Runtime's fp32 and int8 graphs above (`tools/bench/ort_time.py`) and PyTorch eager fp32 and
dynamic int8 (`torch_bench.py --int8 --time-only`), each the best of 8 after a warm-up. Median of
the rounds (lowest–highest); the ratio is the median of the per-round ratios, and the last column
counts the rounds in which maple was the faster.

| engine | batch 1 (images/s) | batch 8 (images/s) | maple vs it (batch 1 / 8) | rounds maple is faster (batch 1 / 8) |
| --- | --- | --- | --- | --- |
""" + "\n".join(h2h_rows)
e2e_rows = []
for p in ("f32", "int8", "bf16"):
    for n in (1, 200):
        alone = tower[p][0] if n == 1 else n / tower[p][1]
        cold, warm = e[f"{p}_cold_{n}"], e[f"{p}_warm_{n}"]
        if n == 1:
            held = "–"
        else:
            s = n / sus[p]
            held = f"{s:.2f} (**{s / warm[0]:.2f}×**)"
        e2e_rows.append(
            f"| {p} | {n} | {cold[0]:.2f} | {warm[0]:.2f} | {alone:.2f} | **{warm[0] / alone:.2f}×** | {held} | "
            f"{mb(cold[1]):.0f} | {mb(warm[1]):.0f} | {max(cold[1], warm[1]) * 1024 / files:.2f}× |")
doc = f"""# Benchmarks

CPU: {cpu}; {threads} threads for every engine; full-size ViT-B/16 synthetic model with MaPLe
prompts (n_ctx 2, depth 9; vision sequence 199 tokens), f32 files. maple's SIMD path:
{m['simd']} (chosen at run time). PyTorch {t['torch']} (HF CLIPModel + MaPLe hooks, text at
MaPLe's 77 tokens); ONNX Runtime {o.get('onnxruntime', 'not installed')} (the same image tower
exported to ONNX, CPU provider, max |Δ| vs PyTorch fp32
{o.get('max_abs_diff_vs_torch', float('nan')):.1e}). maple runs the text tower only up to each
batch's longest EOT (exact, docs/model.md §7). Measured {datetime.date.today()}, all in one run of:

    PYTHON=/path/to/python-with-torch-and-onnxruntime bash tools/bench/run.sh

## Image tower

| engine, precision | batch 1 (images/s) | batch 8 (images/s) | maple vs it (batch 1 / 8) | max \\|Δlogit\\| vs fp32 |
| --- | --- | --- | --- | --- |
""" + "\n".join(rows) + f"""

Best of 3 after a warm-up; higher is better. "maple vs it" = how many times faster maple is,
its f32 tower against fp32 peers and its int8 tower against int8 peers. Max |Δlogit|: each int8
tower against its own engine's fp32 on maple-bench's 8 synthetic images × 100 labels (the same
pixels and labels for every engine; logits = 100 · cosine). `torch.compile` took
{f(t.get('compile_s'), 0)} s to compile (less when inductor's on-disk cache is warm from an earlier run). Same run, the AVX2 f32 kernels forced
(`MAPLE_SIMD=avx2`, path {malt['simd']}): {malt['image_b1_images_per_s']:.3f} / {malt['image_b8_images_per_s']:.3f} images/s.

maple int8: every Linear of the image tower (q/k/v, out, fc1, fc2) with weights per output
column and activations per row (asymmetric u8, AVX-512 VNNI
{"used" if m8.get("int8_vnni") else "not available here: portable kernel"}); attention, LayerNorm
and the text tower stay f32. maple bf16: the same Linears with bf16 weights and activations
into f32 accumulators (AVX-512 BF16 `vdpbf16ps`
{"used" if m16.get("bf16_hw") else "not available here: portable kernel"}), {bf16_vs_f32[0]:.2f}× / {bf16_vs_f32[1]:.2f}× maple f32
measured in the same process (batch 1 / 8); offered because it is faster than f32 with an
error below int8's.""" + h2h + f"""

## Text tower

| labels | maple (s) | PyTorch eager (s) | maple vs PyTorch |
| --- | --- | --- | --- |
""" + "\n".join(text_rows) + f"""

One run each; lower is better.

## GEMM ceiling and the machine's peak

One f32 GEMM of the vision MLP's shape at batch 8 (1592×768 · 768×3072): maple {g_m:.0f} GFLOP/s,
PyTorch {g_t:.0f} GFLOP/s. maple's image tower ({GF} GFLOP/image) runs at {frac[0][1]:.0f} GFLOP/s
at batch 1 (**{100 * frac[0][1] / ceiling:.0f} %** of the better GEMM) and {frac[1][1]:.0f} GFLOP/s
at batch 8 (**{100 * frac[1][1] / ceiling:.0f} %**).

The machine's own limit, `maple-bench --peak` (independent FMAs in registers on every thread):
{m['fma_peak_gflops']:.0f} GFLOP/s. Against it the GEMM runs at **{100 * m['gemm_fraction_of_fma_peak']:.0f} %** and the image tower at
**{100 * m['image_b1_fraction_of_fma_peak']:.0f} %** / **{100 * m['image_b8_fraction_of_fma_peak']:.0f} %** (batch 1 / 8).

## maple-classify end to end

1000 labels (`--classes`, the peers' synthetic names), `--device cpu --threads {threads}`,
page cache warm. "cold" = empty cache directory: the run computes the text features and packs
the weights, and writes both caches; "warm" = the next run, which maps the packed-weight cache
and reads the text-feature cache (for 1 image the best of 3 such runs, as the tower's time is a
best of 3). 200 images = the 16 fixtures cycled. "tower alone" =
maple-bench's batch-1 time for 1 image, its best batch-8 rate for 200 (a burst of 3 batches).
"tower sustained" = the tower alone for as long as the folder takes, run right after it: the
mean rate over 25 batches of 8 (`maple-bench --batches 8 --reps 25`), and in parentheses the
folder's rate as a fraction of it. Peak RSS from `/usr/bin/time -f %M`.

| precision | images | cold (s) | warm (s) | tower alone (s) | warm / tower alone | tower sustained (s) | peak RSS cold (MB) | peak RSS warm (MB) | RSS / weight files |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
""" + "\n".join(e2e_rows) + f"""

Weight files: model.safetensors + maple_prompts.safetensors = {files / 1e6:.0f} MB.

Readings on this shared 2-core machine swing by up to ±25 % within minutes: rerun before
drawing conclusions.

""" + (sys.argv[10] or "<!-- gpu -->\n<!-- /gpu -->") + "\n"
open("BENCHMARKS.md", "w").write(doc)
print(doc)
PY
# The GPU section (written by hand from tools/bench/gpu.sh and lavapipe runs) and the training
# section (its own script, so it can be rerun alone) go back into the new file.
PYTHON="$PY" THREADS="$THREADS" bash tools/bench/train.sh > /dev/null
