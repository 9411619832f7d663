"""Golden logits from Hugging Face `transformers` CLIPModel with MaPLe's prompt splice added by
hooks written here (docs/model.md §5–§8), for a synthetic model directory written by `maple-synth`.

    python tools/reference/golden.py MODEL_DIR OUT.json [--openai-clip SDIST]

Pixels: PIL open → convert("RGB") → torchvision Resize(S, BICUBIC) → CenterCrop(S) → ToTensor →
Normalize(CLIP mean/std) (MaPLe's Dassl test transform). Token ids: OpenAI's SimpleTokenizer from
the `openai-clip` sdist. Everything in float32 on the CPU, eager attention."""
import argparse
import collections
import hashlib
import importlib.util
import json
import pathlib
import tarfile
import tempfile

import torch
import torchvision.transforms as T
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPModel

root = pathlib.Path(__file__).resolve().parents[2]
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def openai_tokenizer(sdist):
    tmp = pathlib.Path(tempfile.mkdtemp())
    with tarfile.open(sdist) as tf:
        for m in tf.getmembers():
            if m.name.endswith(("clip/simple_tokenizer.py", "bpe_simple_vocab_16e6.txt.gz")):
                (tmp / pathlib.Path(m.name).name).write_bytes(tf.extractfile(m).read())
    spec = importlib.util.spec_from_file_location("simple_tokenizer", tmp / "simple_tokenizer.py")
    st = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(st)
    return st.SimpleTokenizer(bpe_path=str(tmp / "bpe_simple_vocab_16e6.txt.gz"))


def tokenize(tok, texts, L=77):
    out = torch.zeros(len(texts), L, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [49406] + tok.encode(t) + [49407]
        assert len(ids) <= L, t
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def to_openai(hf, prefix_v="visual.", prefix_t=""):
    """HF CLIPModel names → OpenAI names (docs/model.md §2.1)."""
    sd = collections.OrderedDict()
    m = {"vision_model.embeddings.patch_embedding.weight": prefix_v + "conv1.weight",
         "vision_model.embeddings.class_embedding": prefix_v + "class_embedding",
         "vision_model.embeddings.position_embedding.weight": prefix_v + "positional_embedding",
         "vision_model.pre_layrnorm.weight": prefix_v + "ln_pre.weight",
         "vision_model.pre_layrnorm.bias": prefix_v + "ln_pre.bias",
         "vision_model.post_layernorm.weight": prefix_v + "ln_post.weight",
         "vision_model.post_layernorm.bias": prefix_v + "ln_post.bias",
         "text_model.embeddings.token_embedding.weight": prefix_t + "token_embedding.weight",
         "text_model.embeddings.position_embedding.weight": prefix_t + "positional_embedding",
         "text_model.final_layer_norm.weight": prefix_t + "ln_final.weight",
         "text_model.final_layer_norm.bias": prefix_t + "ln_final.bias",
         "logit_scale": "logit_scale"}
    for k, v in m.items():
        sd[v] = hf[k]
    sd[prefix_v + "proj"] = hf["visual_projection.weight"].t()          # non-contiguous view
    sd[prefix_t + "text_projection"] = hf["text_projection.weight"].t().contiguous()
    for tower, p in (("vision_model", prefix_v), ("text_model", prefix_t)):
        i = 0
        while f"{tower}.encoder.layers.{i}.layer_norm1.weight" in hf:
            h = f"{tower}.encoder.layers.{i}."
            o = f"{p}transformer.resblocks.{i}."
            sd[o + "attn.in_proj_weight"] = torch.cat([hf[h + f"self_attn.{x}_proj.weight"] for x in "qkv"])
            sd[o + "attn.in_proj_bias"] = torch.cat([hf[h + f"self_attn.{x}_proj.bias"] for x in "qkv"])
            for a, b in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                         ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                sd[o + b + ".weight"] = hf[h + a + ".weight"]
                sd[o + b + ".bias"] = hf[h + a + ".bias"]
            i += 1
    return sd


def load_prompts(path):
    """MaPLe's prompt learner tensors → the matrices of docs/model.md §5 (pure fp32, no .half())."""
    sd = {k.removeprefix("prompt_learner."): v.float() for k, v in load_file(str(path)).items()}
    ctx = sd["ctx"]
    depth = 1 + sum(1 for k in sd if k.startswith("compound_prompts_text."))
    lin = lambda x, w, b: x @ w.t() + b
    return {
        "n": ctx.shape[0],
        "depth": depth,
        "ctx": ctx,
        "shared_ctx": lin(ctx, sd["proj.weight"], sd["proj.bias"]),
        "text_deep": [sd[f"compound_prompts_text.{j}"] for j in range(depth - 1)],
        "vis_deep": [lin(sd[f"compound_prompts_text.{j}"], sd[f"compound_prompt_projections.{j}.weight"],
                         sd[f"compound_prompt_projections.{j}.bias"]) for j in range(depth - 1)],
    }


def run_layer(layer, x, mask):
    y = layer(x, mask)
    return y[0] if isinstance(y, tuple) else y


@torch.no_grad()
def encode_image(model, px, P):
    vm = model.vision_model
    B = px.shape[0]
    x = vm.embeddings(px)                                  # [B, 197, Dv]: CLS + patches + positions
    if P:
        x = torch.cat([x, P["shared_ctx"].expand(B, -1, -1)], 1)   # appended, no positions
    x = vm.pre_layrnorm(x)                                 # covers the prompt tokens too
    for i, layer in enumerate(vm.encoder.layers):
        if P and 1 <= i < P["depth"]:
            x = torch.cat([x[:, : -P["n"]], P["vis_deep"][i - 1].expand(B, -1, -1)], 1)  # overwrite
        x = run_layer(layer, x, None)
    return model.visual_projection(vm.post_layernorm(x[:, 0]))


@torch.no_grad()
def encode_text(model, ids, P):
    tm = model.text_model
    C, L = ids.shape
    x = tm.embeddings.token_embedding(ids)
    if P:
        x[:, 1 : 1 + P["n"]] = P["ctx"]                   # "a photo" → learned ctx
    x = x + tm.embeddings.position_embedding(torch.arange(L))[None]
    mask = torch.full((L, L), torch.finfo(torch.float32).min).triu(1)[None, None]
    for i, layer in enumerate(tm.encoder.layers):
        if P and 1 <= i < P["depth"]:
            x[:, 1 : 1 + P["n"]] = P["text_deep"][i - 1]
        x = run_layer(layer, x, mask)
    x = tm.final_layer_norm(x)
    return model.text_projection(x[torch.arange(C), ids.argmax(-1)])


def logits_of(model, img, txt):
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return model.logit_scale.exp() * img @ txt.t()


def sha256(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("out")
    ap.add_argument("--openai-clip", default="/tmp/oc/openai-clip-1.0.1.tar.gz")
    ap.add_argument("--images", nargs="*", default=None)
    ap.add_argument("--labels", default=str(root / "tests/fixtures/labels.txt"))
    ap.add_argument("--template", default="a photo of a")
    a = ap.parse_args()
    torch.set_num_threads(2)
    d = pathlib.Path(a.model_dir)
    model = CLIPModel.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager").eval()
    S = model.config.vision_config.image_size
    P = load_prompts(d / "maple_prompts.safetensors")
    tok = openai_tokenizer(a.openai_clip)

    labels = [l.strip() for l in open(a.labels, encoding="utf-8")
              if l.strip() and not l.strip().startswith("#")]
    names = [" ".join(l.replace("_", " ").split()) for l in labels]
    prompts = [f"{a.template} {n}." for n in names]
    ids = tokenize(tok, prompts)

    tf = T.Compose([T.Resize(S, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(S),
                    T.ToTensor(), T.Normalize(MEAN, STD)])
    img_dir = root / "tests/fixtures/images"
    images = a.images or sorted(p.name for p in img_dir.iterdir())
    px = torch.stack([tf(Image.open(img_dir / n).convert("RGB")) for n in images])

    out = {"model_sha256": sha256(d / "model.safetensors"),
           "prompts_sha256": sha256(d / "maple_prompts.safetensors"),
           "template": a.template, "labels": labels, "token_ids": [r[r > 0].tolist() for r in ids],
           "images": images, "n_ctx": P["n"], "prompt_depth": P["depth"]}
    for mode, p in (("maple", P), ("zeroshot", None)):
        txt = encode_text(model, ids, p)
        img = torch.cat([encode_image(model, px[i : i + 8], p) for i in range(0, len(images), 8)])
        lg = logits_of(model, img, txt)
        out[mode] = {"logits": lg.tolist(), "top5": lg.topk(min(5, len(labels)), dim=-1).indices.tolist()}
        print(mode, "logit spread (std over labels, mean over images):",
              round(lg.std(dim=-1).mean().item(), 3), "range", round(lg.min().item(), 2), round(lg.max().item(), 2))
    # The hooks with no prompts must be HF's own forward: check against the public API.
    with torch.no_grad():
        hf_img = model.get_image_features(pixel_values=px)
        hf_txt = model.get_text_features(input_ids=ids)
        hf_img = getattr(hf_img, "pooler_output", hf_img)
        hf_txt = getattr(hf_txt, "pooler_output", hf_txt)
        hf = logits_of(model, hf_img, hf_txt)
    diff = (hf - torch.tensor(out["zeroshot"]["logits"])).abs().max().item()
    print("zero-shot hooks vs HF get_*_features: max |Δlogit| =", diff)
    assert diff < 1e-4
    out["zeroshot"]["hf_api_max_abs_diff"] = diff
    pathlib.Path(a.out).write_text(json.dumps(out) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
