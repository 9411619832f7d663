"""The original CoCoOp: the MaPLe repository's `trainers/cocoop.py` CustomCLIP on its own
`clip/model.py`, Dassl stubbed (the model needs none of it), float32 on the CPU, with the
synthetic CoCoOp prompts maple's golden file was made from.

    python tools/bench/cocoop.py --repo CHECKOUT --model target/synth-full \
        --prompts tests/fixtures/family_full/cocoop.safetensors [--threads 2] [--batch 8] [--labels 10,100]

Prints one JSON line: the original's max |Δlogit| against tests/fixtures/golden_family_full.json
on the 16 fixture images (the reference maple is tested against, checked here against the
original), and images/s at the batch size for each label count (best of --reps after a warm-up),
for label names made as maple-bench makes them. CHECKOUT is a work tree of
muzairkhattak/multimodal-prompt-learning (its code is not part of this repository)."""
import argparse
import json
import pathlib
import sys
import time

import torch
import torchvision.transforms as T
from PIL import Image
from safetensors.torch import load_file

root = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(root / "tools/reference"))
from golden import MEAN, STD  # noqa: E402
from originals import original  # noqa: E402


def label_names(n):
    """maple-bench's synthetic class names."""
    a = ("red small wooden striped old shiny wild frozen tiny golden spotted electric ancient folding giant "
         "paper silver woolly rusty glass").split()
    b = ("cat dog car chair lamp boat tiger piano kettle bridge camera rabbit guitar castle bicycle owl teapot "
         "tractor violin lizard helmet mushroom anchor lantern parrot scooter cactus whale kite ladder robot "
         "saddle tent umbrella volcano wagon zebra acorn bucket compass drum easel ferry goblet harp igloo "
         "jaguar kayak lobster mitten").split()
    return [f"{a[i % 20]} {b[(i // 20) % 50]}" for i in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True, type=pathlib.Path)
    ap.add_argument("--model", required=True, type=pathlib.Path)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--labels", default="10,100")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    hf = {k: v.float() for k, v in load_file(str(a.model / "model.safetensors")).items()}
    learned = load_file(a.prompts)
    build = lambda names: original(a.repo, "cocoop", hf, learned, names)  # noqa: E731

    out = {"engine": "original CoCoOp (PyTorch %s)" % torch.__version__, "threads": a.threads}
    # Correctness: the fixture images and labels against the golden logits maple is tested on.
    gold = json.loads((root / "tests/fixtures/golden_family_full.json").read_text())
    m = build(gold["labels"])
    S = m.image_encoder.input_resolution
    tf = T.Compose([T.Resize(S, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(S),
                    T.ToTensor(), T.Normalize(MEAN, STD)])
    px = torch.stack([tf(Image.open(root / "tests/fixtures/images" / n).convert("RGB")) for n in gold["images"]])
    with torch.no_grad():
        lg = torch.cat([m(px[i : i + 8]) for i in range(0, len(px), 8)])
    out["max_abs_dlogit_vs_golden"] = (lg - torch.tensor(gold["cocoop"]["logits"])).abs().max().item()
    # Speed.
    g = torch.Generator().manual_seed(0)
    x = torch.rand(a.batch, 3, S, S, generator=g) * 2 - 1
    for n in [int(v) for v in a.labels.split(",")]:
        m = build(label_names(n))
        best = float("inf")
        with torch.no_grad():
            for _ in range(a.reps + 1):
                t = time.perf_counter()
                m(x)
                best = min(best, time.perf_counter() - t)
        out[f"cocoop_b{a.batch}_{n}_labels_images_per_s"] = a.batch / best
    print(json.dumps(out))


if __name__ == "__main__":
    main()
