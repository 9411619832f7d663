"""The PyTorch peer of maple-bench: HF CLIPModel (fp32, eager) + the MaPLe hooks of
tools/reference/golden.py, torch.set_num_threads equal to maple's, same synthetic labels,
text at MaPLe's 77 tokens. With --compile, also the image tower through torch.compile
(inductor); with --int8, also PyTorch's dynamic int8 quantization of every Linear
(quantize_dynamic, qint8 weights per tensor) and its max |Δlogit| against fp32 on maple-bench's
8 synthetic images × 100 labels. With --time-only, only the image towers' rates (no GEMM, text,
compile or accuracy): run.sh's interleaved rounds. Prints one JSON line.

    python tools/bench/torch_bench.py MODEL_DIR --threads 2 [--compile] [--int8] [--time-only]"""
import argparse
import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from peer import golden, load, labels, max_dlogit, pattern_images, text_features, timed as _timed  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--labels", default="10,100,1000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--openai-clip", default="/tmp/oc/openai-clip-1.0.1.tar.gz")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--int8", action="store_true")
    ap.add_argument("--time-only", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, P = load(a.model_dir)
    s = model.config.vision_config.image_size
    out = {"engine": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads()}
    with torch.inference_mode():
        if not a.time_only:
            # This CPU's GEMM ceiling as PyTorch reaches it: the vision MLP's shape at batch 8.
            A, W = torch.randn(1592, 768), torch.randn(3072, 768)
            torch.mm(A, W.t())
            best = min(_timed(lambda: torch.mm(A, W.t())) for _ in range(max(a.reps, 5)))
            out["gemm_1592x768x3072_gflops"] = 2 * 1592 * 768 * 3072 / best / 1e9
        for b in [int(x) for x in a.batches.split(",")]:
            px = torch.randn(b, 3, s, s)
            golden.encode_image(model, px, P)
            best = min(_timed(lambda: golden.encode_image(model, px, P)) for _ in range(a.reps))
            out[f"image_b{b}_images_per_s"] = b / best
        tok = None if a.time_only else golden.openai_tokenizer(a.openai_clip)
        for n in [] if a.time_only else [int(x) for x in a.labels.split(",")]:
            ids = golden.tokenize(tok, [f"a photo of a {l}." for l in labels(n)])
            # MaPLe encodes all labels at 77 tokens; batch them 100 at a time like its evaluation.
            out[f"text_{n}_labels_s"] = _timed(lambda: [golden.encode_text(model, ids[i:i + 100], P) for i in range(0, n, 100)])
        batches = [int(x) for x in a.batches.split(",")]
        if a.compile and not a.time_only:
            # The same tower through inductor; the first call compiles (timed apart), a batch
            # size it has not seen recompiles once, so each is warmed before timing.
            tower = torch.compile(lambda px: golden.encode_image(model, px, P))
            try:
                px = torch.randn(batches[0], 3, s, s)
                out["compile_s"] = _timed(lambda: tower(px))
                for b in batches:
                    px = torch.randn(b, 3, s, s)
                    tower(px)
                    best = min(_timed(lambda: tower(px)) for _ in range(a.reps))
                    out[f"compile_image_b{b}_images_per_s"] = b / best
            except Exception as e:  # an inductor that cannot build here is a column of "–"
                out["compile_error"] = f"{type(e).__name__}: {e}"[:200]
        if a.int8:
            bmax = max(batches)
            px = torch.from_numpy(pattern_images(bmax, s))
            if not a.time_only:
                txt = text_features(model, P, 100, a.openai_clip)
                ref = golden.encode_image(model, px, P)
            q = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
            if not a.time_only:
                out["int8_max_abs_dlogit"] = max_dlogit(model, ref, golden.encode_image(q, px, P), txt)
            for b in batches:
                x = px[:b]
                golden.encode_image(q, x, P)
                best = min(_timed(lambda: golden.encode_image(q, x, P)) for _ in range(a.reps))
                out[f"int8_image_b{b}_images_per_s"] = b / best
    print(json.dumps(out))


main()
