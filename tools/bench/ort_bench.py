"""The ONNX Runtime peer of maple-bench's image rows: the same MaPLe image tower as
torch_bench.py (HF CLIPModel + the golden MaPLe hooks), exported once to ONNX (dynamic batch)
and run by ONNX Runtime's CPU provider, fp32, intra-op threads equal to maple's. Checks the
ONNX features against PyTorch's before timing. With --int8, also ORT's dynamic int8
quantization of that graph (quantize_dynamic, QInt8 weights) per tensor and per channel, timed
the same way, with max |Δlogit| against PyTorch fp32 on maple-bench's 8 synthetic images × 100
labels. Prints one JSON line.

    python tools/bench/ort_bench.py MODEL_DIR --threads 2 --onnx target/bench/maple_vision.onnx [--int8]"""
import argparse
import json
import pathlib
import sys

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from ort_time import rates as ort_rates, session as ort_session  # noqa: E402
from peer import golden, load, max_dlogit, pattern_images, text_features  # noqa: E402


class ImageTower(torch.nn.Module):
    def __init__(self, model, prompts):
        super().__init__()
        self.model, self.prompts = model, prompts

    def forward(self, px):
        return golden.encode_image(self.model, px, self.prompts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--onnx", default="target/bench/maple_vision.onnx")
    ap.add_argument("--openai-clip", default="/tmp/oc/openai-clip-1.0.1.tar.gz")
    ap.add_argument("--int8", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, P = load(a.model_dir)
    s = model.config.vision_config.image_size
    tower = ImageTower(model, P).eval()
    path = pathlib.Path(a.onnx)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(tower, (torch.randn(2, 3, s, s),), str(path), input_names=["pixels"],
                          output_names=["features"], dynamic_axes={"pixels": {0: "batch"}},
                          opset_version=17, dynamo=False)
    def rates(sess, prefix):
        for b, (best, _) in ort_rates(sess, [int(x) for x in a.batches.split(",")], a.reps).items():
            out[f"{prefix}image_b{b}_images_per_s"] = best

    sess = ort_session(path, a.threads)
    out = {"engine": "onnxruntime", "onnxruntime": ort.__version__, "threads": a.threads}
    px = torch.randn(3, 3, s, s)
    with torch.inference_mode():
        want = tower(px).numpy()
    got = sess.run(None, {"pixels": px.numpy()})[0]
    out["max_abs_diff_vs_torch"] = float(np.abs(got - want).max())
    rates(sess, "")
    if a.int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        bmax = max(int(x) for x in a.batches.split(","))
        px = pattern_images(bmax, s)
        with torch.inference_mode():
            txt = text_features(model, P, 100, a.openai_clip)
            ref = tower(torch.from_numpy(px))
        for name, per_channel in [("per_tensor", False), ("per_channel", True)]:
            q = path.with_name(f"{path.stem}_int8_{name}.onnx")
            quantize_dynamic(str(path), str(q), per_channel=per_channel, weight_type=QuantType.QInt8)
            qs = ort_session(q, a.threads)
            got = qs.run(None, {"pixels": px})[0]
            out[f"int8_{name}_max_abs_dlogit"] = max_dlogit(model, ref, got, txt)
            rates(qs, f"int8_{name}_")
    print(json.dumps(out))


main()
