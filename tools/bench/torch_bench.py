"""The PyTorch peer of maple-bench: HF CLIPModel (fp32, eager) + the MaPLe hooks of
tools/reference/golden.py, torch.set_num_threads equal to maple's, same synthetic labels,
text at MaPLe's 77 tokens. Prints one JSON line.

    python tools/bench/torch_bench.py MODEL_DIR --threads 2"""
import argparse
import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from peer import golden, load, labels, timed as _timed  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--labels", default="10,100,1000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--openai-clip", default="/tmp/oc/openai-clip-1.0.1.tar.gz")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, P = load(a.model_dir)
    s = model.config.vision_config.image_size
    out = {"engine": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads()}
    with torch.inference_mode():
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
        tok = golden.openai_tokenizer(a.openai_clip)
        for n in [int(x) for x in a.labels.split(",")]:
            ids = golden.tokenize(tok, [f"a photo of a {l}." for l in labels(n)])
            # MaPLe encodes all labels at 77 tokens; batch them 100 at a time like its evaluation.
            out[f"text_{n}_labels_s"] = _timed(lambda: [golden.encode_text(model, ids[i:i + 100], P) for i in range(0, n, 100)])
    print(json.dumps(out))


main()
