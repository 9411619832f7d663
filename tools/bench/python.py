"""Zero-shot classification from Python, one peer per process (tools/bench/python.sh runs them):

    python.py maple MODEL_DIR --precision f32|int8   maple_clip (the wheel)
    python.py transformers MODEL_DIR                 transformers' zero-shot-image-classification pipeline
    python.py open_clip MODEL_DIR                    open_clip ViT-B-16-quickgelu, the text features made once
    python.py overhead TINY_DIR                      maple_clip's time per classify() of a 224² array

Every peer classifies the 16 fixture images (files: each decodes and preprocesses them itself)
against the same 10 labels in "a photo of a {label}.", at batch 1 (16 calls) and batch 8 (2
calls), after one warm-up pass; 5 rounds, images/s best and median. Prints one JSON line with the
rates and each image's top-1 label."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
IMAGES = sorted(str(p) for p in (ROOT / "tests/fixtures/images").iterdir())
LABELS = ["cat", "dog", "red car", "Eiffel Tower", "sea anemone", "airplane", "teapot", "violin",
          "lighthouse", "golden retriever"]
TEMPLATE = "a photo of a {}."
ROUNDS = 5


def timed(classify_batch) -> dict[str, object]:
    """Rates of `classify_batch(paths) -> list of top-1 labels` at batch 1 and 8."""
    top1 = classify_batch(IMAGES)  # warm-up, and the answers
    out: dict[str, object] = {"top1": top1}
    for b in (1, 8):
        rates = []
        for _ in range(ROUNDS):
            t = time.perf_counter()
            for i in range(0, len(IMAGES), b):
                classify_batch(IMAGES[i : i + b])
            rates.append(len(IMAGES) / (time.perf_counter() - t))
        out[f"b{b}_best"] = max(rates)
        out[f"b{b}_median"] = statistics.median(rates)
    return out


def maple(model: str, precision: str, threads: int) -> dict[str, object]:
    import maple_clip

    clf = maple_clip.Classifier(model, labels=LABELS, device="cpu", precision=precision,
                                threads=threads, batch_size=8, cache=False)
    return timed(lambda paths: [r.best().label for r in clf.classify_batch(paths)])


def transformers_pipeline(model: str, threads: int) -> dict[str, object]:
    import torch
    from transformers import pipeline

    torch.set_num_threads(threads)
    pipe = pipeline("zero-shot-image-classification", model=model, device="cpu",
                    dtype=torch.float32)

    def run(paths: list[str]) -> list[str]:
        res = pipe(paths, candidate_labels=LABELS, hypothesis_template=TEMPLATE, batch_size=len(paths))
        return [r[0]["label"] for r in res]

    return timed(run)


def to_openai(hf: dict) -> dict:
    """HF CLIPModel tensor names → OpenAI's (q, k, v packed into in_proj; projections transposed)."""
    import torch

    sd = {}
    for tower, pre in (("vision_model", "visual."), ("text_model", "")):
        i = 0
        while f"{tower}.encoder.layers.{i}.layer_norm1.weight" in hf:
            h, o = f"{tower}.encoder.layers.{i}.", f"{pre}transformer.resblocks.{i}."
            for kind in ("weight", "bias"):
                sd[o + f"attn.in_proj_{kind}"] = torch.cat([hf[h + f"self_attn.{x}_proj.{kind}"] for x in "qkv"])
                for a, b in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                             ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                    sd[o + f"{b}.{kind}"] = hf[h + f"{a}.{kind}"]
            i += 1
    names = {"vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
             "vision_model.embeddings.class_embedding": "visual.class_embedding",
             "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
             "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
             "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
             "vision_model.post_layernorm.weight": "visual.ln_post.weight",
             "vision_model.post_layernorm.bias": "visual.ln_post.bias",
             "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
             "text_model.embeddings.position_embedding.weight": "positional_embedding",
             "text_model.final_layer_norm.weight": "ln_final.weight",
             "text_model.final_layer_norm.bias": "ln_final.bias",
             "logit_scale": "logit_scale"}
    for a, b in names.items():
        sd[b] = hf[a]
    sd["visual.proj"] = hf["visual_projection.weight"].t().contiguous()
    sd["text_projection"] = hf["text_projection.weight"].t().contiguous()
    return sd


def open_clip_peer(model: str, threads: int) -> dict[str, object]:
    import open_clip
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    torch.set_num_threads(threads)
    m = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    missing, unexpected = m.load_state_dict(to_openai(load_file(f"{model}/model.safetensors")), strict=False)
    assert not unexpected and all("attn_mask" in k for k in missing), (missing, unexpected)
    m.eval()
    preprocess = open_clip.image_transform(224, is_train=False)
    tok = open_clip.get_tokenizer("ViT-B-16-quickgelu")
    with torch.inference_mode():
        text = m.encode_text(tok([TEMPLATE.format(l) for l in LABELS]))
        text = text / text.norm(dim=-1, keepdim=True)

    def run(paths: list[str]) -> list[str]:
        with torch.inference_mode():
            x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])
            f = m.encode_image(x)
            f = f / f.norm(dim=-1, keepdim=True)
            logits = m.logit_scale.exp() * f @ text.T
        return [LABELS[i] for i in logits.argmax(-1).tolist()]

    return timed(run)


def overhead(model: str, threads: int) -> dict[str, object]:
    """The same calls as examples/call_time.rs, from Python."""
    import numpy as np

    import maple_clip

    clf = maple_clip.Classifier(model, labels=[f"thing number {i}" for i in range(10)], device="cpu",
                                threads=threads, cache=False)
    px = (np.arange(224 * 224 * 3, dtype=np.int64) * 7919 % 251).astype(np.uint8).reshape(224, 224, 3)
    clf.classify(px)
    calls, rounds = 200, []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        for _ in range(calls):
            clf.classify(px)
        rounds.append((time.perf_counter() - t) * 1e6 / calls)
    rounds.sort()
    return {"python_us_per_call_best": rounds[0], "python_us_per_call_median": rounds[2]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("peer", choices=["maple", "transformers", "open_clip", "overhead"])
    ap.add_argument("model")
    ap.add_argument("--precision", default="f32")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", "2")))
    a = ap.parse_args()
    if a.peer == "maple":
        r = maple(a.model, a.precision, a.threads)
    elif a.peer == "transformers":
        r = transformers_pipeline(a.model, a.threads)
    elif a.peer == "open_clip":
        r = open_clip_peer(a.model, a.threads)
    else:
        r = overhead(a.model, a.threads)
    print(json.dumps({"peer": a.peer, "precision": a.precision, **r}))


if __name__ == "__main__":
    main()
