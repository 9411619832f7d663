"""The PyTorch CUDA peer of `maple-bench --device gpu`: HF CLIPModel + the MaPLe hooks of
tools/reference/golden.py on the image tower, in fp32 with TF32 off, fp32 with TF32 on, and
fp16 (weights and activations), SDPA attention. Images/s per batch size (best of --reps after
two warm-ups, synchronised), and each mode's max |Δ| of the features against fp32. One JSON
line.

    python tools/bench/torch_gpu_bench.py MODEL_DIR --batches 1,8,32"""
import argparse
import json
import pathlib
import sys
import time

import torch
from transformers import CLIPModel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from peer import golden  # noqa: E402


def prompts_to(P, dev, dtype):
    if P is None:
        return None
    mv = lambda t: t.to(dev, dtype)
    return {**P, "ctx": mv(P["ctx"]), "shared_ctx": mv(P["shared_ctx"]),
            "text_deep": [mv(t) for t in P["text_deep"]], "vis_deep": [mv(t) for t in P["vis_deep"]]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    dev = torch.device("cuda")
    d = pathlib.Path(a.model_dir)
    p = d / "maple_prompts.safetensors"
    P = golden.load_prompts(p) if p.exists() else None
    out = {"engine": "pytorch-cuda", "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}
    s = 224
    ref = {}
    for mode, dtype, tf32 in [("fp32", torch.float32, False), ("tf32", torch.float32, True), ("fp16", torch.float16, False)]:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        model = CLIPModel.from_pretrained(d, torch_dtype=dtype, attn_implementation="sdpa").eval().to(dev)
        Pm = prompts_to(P, dev, dtype)
        with torch.inference_mode():
            for b in [int(x) for x in a.batches.split(",")]:
                g = torch.Generator().manual_seed(b)
                px = torch.randn(b, 3, s, s, generator=g).to(dev, dtype)
                f = lambda: golden.encode_image(model, px, Pm)
                for _ in range(2):
                    feats = f()
                torch.cuda.synchronize()
                best = float("inf")
                for _ in range(a.reps):
                    t = time.perf_counter()
                    f()
                    torch.cuda.synchronize()
                    best = min(best, time.perf_counter() - t)
                out[f"{mode}_image_b{b}_images_per_s"] = b / best
                feats = feats.float()
                if mode == "fp32":
                    ref[b] = feats
                else:
                    out[f"{mode}_image_b{b}_max_abs_dfeature"] = (feats - ref[b]).abs().max().item()
        del model
        torch.cuda.empty_cache()
    print(json.dumps(out))


main()
