"""What the Python peers share: the MaPLe hooks of tools/reference/golden.py (loaded without
running its main), the model loader, the benchmark's synthetic label names, and a timer."""
import pathlib
import sys
import time

root = pathlib.Path(__file__).resolve().parents[2]
_src = (root / "tools/reference/golden.py").read_text().replace("\nmain()\n", "\n")
golden = type(sys)("golden")
golden.__file__ = str(root / "tools/reference/golden.py")
exec(compile(_src, "golden.py", "exec"), golden.__dict__)

A = ["red", "small", "wooden", "striped", "old", "shiny", "wild", "frozen", "tiny", "golden", "spotted", "electric", "ancient", "folding", "giant", "paper", "silver", "woolly", "rusty", "glass"]
B = ["cat", "dog", "car", "chair", "lamp", "boat", "tiger", "piano", "kettle", "bridge", "camera", "rabbit", "guitar", "castle", "bicycle", "owl", "teapot", "tractor", "violin", "lizard", "helmet", "mushroom", "anchor", "lantern", "parrot", "scooter", "cactus", "whale", "kite", "ladder", "robot", "saddle", "tent", "umbrella", "volcano", "wagon", "zebra", "acorn", "bucket", "compass", "drum", "easel", "ferry", "goblet", "harp", "igloo", "jaguar", "kayak", "lobster", "mitten"]


def labels(n):
    """The same names as maple-bench's label_names (cli/src/bin/maple-bench.rs)."""
    return [f"{A[i % 20]} {B[(i // 20) % 50]}" for i in range(n)]


def load(model_dir):
    """HF CLIPModel (fp32, eager attention) and the MaPLe prompts beside it, if any."""
    import torch
    from transformers import CLIPModel

    d = pathlib.Path(model_dir)
    model = CLIPModel.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager").eval()
    p = d / "maple_prompts.safetensors"
    return model, (golden.load_prompts(p) if p.exists() else None)


def pattern_images(b, s):
    """maple-bench's synthetic pixels (cli/src/bin/maple-bench.rs): pixel i of the flattened
    [b, 3, s, s] batch is (i·7919 mod 255) / 127.5 − 1."""
    import numpy as np

    i = np.arange(b * 3 * s * s, dtype=np.int64)
    return ((i * 7919 % 255).astype(np.float32) / np.float32(127.5) - np.float32(1.0)).reshape(b, 3, s, s)


def text_features(model, P, n, openai_clip):
    """The features of maple-bench's first n synthetic labels ("a photo of a {label}.")."""
    tok = golden.openai_tokenizer(openai_clip)
    ids = golden.tokenize(tok, [f"a photo of a {l}." for l in labels(n)])
    return golden.encode_text(model, ids, P)


def max_dlogit(model, img_ref, img, txt):
    """max |Δlogit| between two sets of image features against the same text features."""
    import torch

    a = golden.logits_of(model, torch.as_tensor(img_ref), txt)
    b = golden.logits_of(model, torch.as_tensor(img), txt)
    return float((a - b).abs().max())


def timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


if __name__ == "__main__":
    # `python tools/bench/peer.py labels N`: the label list, one per line (used by run.sh).
    print("\n".join(labels(int(sys.argv[2]))))
