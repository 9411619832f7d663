"""The prompt family (CoOp, CoCoOp, IVLP, VPT): synthetic checkpoints in each trainer's own
format and golden logits from Hugging Face `transformers` CLIPModel with each method's prompt
splice added by hooks written here (docs/prompts.md), pure float32 on the CPU.

    python tools/reference/family.py MODEL_DIR OUT_DIR GOLDEN.json [--full]

Writes, per method M, `OUT_DIR/M.safetensors` (the learned tensors, f32, the names of the
trainer's state dict) and, without --full, the Dassl checkpoint as the trainer saves it
(`OUT_DIR/M/<registered name>/model.pth.tar-<epochs>`: state_dict + epoch + SGD state +
scheduler + val_result; token buffers of 3 training classes; for IVLP and VPT the whole
CustomCLIP, frozen CLIP copy included, dtypes as under PREC fp16). Pixels, token ids and the
CLIP forward are golden.py's. The reference is pure fp32: the originals' `.half()` rounding of
IVLP/VPT prompts is not emulated (docs/prompts.md §4)."""
import argparse
import collections
import json
import pathlib
import sys

import torch
import torchvision.transforms as T
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.optim.lr_scheduler import CosineAnnealingLR
from transformers import CLIPModel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from golden import MEAN, STD, logits_of, openai_tokenizer, run_layer, sha256, to_openai, tokenize  # noqa: E402

root = pathlib.Path(__file__).resolve().parents[2]


def synth(model, method, full):
    """Deterministic prompts with each trainer's default shapes (depths capped by the model)."""
    g = torch.Generator().manual_seed({"coop": 1, "cocoop": 2, "ivlp": 3, "vpt": 4}[method])
    tc, vc = model.config.text_config, model.config.vision_config
    dt, dv, e = tc.hidden_size, vc.hidden_size, model.config.projection_dim
    # Prompts on the scale of what they replace: token embeddings (text), the residual stream (vision).
    st = model.text_model.embeddings.token_embedding.weight.std().item()
    sv = model.vision_model.embeddings.position_embedding.weight.std().item() * 4
    rn = lambda *s, std: torch.randn(*s, generator=g) * std
    lt, lv = tc.num_hidden_layers, vc.num_hidden_layers
    sd = collections.OrderedDict()
    if method == "coop":
        sd["ctx"] = rn(16, dt, std=st)
    elif method == "cocoop":
        h = e // 16
        sd["ctx"] = rn(4, dt, std=st)
        sd["meta_net.linear1.weight"] = rn(h, e, std=e ** -0.5 * 4)
        sd["meta_net.linear1.bias"] = rn(h, std=0.1)
        sd["meta_net.linear2.weight"] = rn(dt, h, std=h ** -0.5 * st)
        sd["meta_net.linear2.bias"] = rn(dt, std=st * 0.1)
    elif method == "ivlp":
        depth_t, depth_v = (12, 12) if full else (lt, lt - 1)  # tiny: unequal depths
        sd["prompt_learner.ctx"] = rn(2, dt, std=st)
        sd["image_encoder.VPT"] = rn(2, dv, std=sv)
        for i in range(1, depth_v):
            sd[f"image_encoder.transformer.resblocks.{i}.VPT_shallow"] = rn(2, dv, std=sv)
        for i in range(1, depth_t):
            sd[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"] = rn(2, dt, std=st)
    elif method == "vpt":
        sd["image_encoder.VPT"] = rn(8, dv, std=sv)
        for i in range(1, 12 if full else lv):
            sd[f"image_encoder.transformer.resblocks.{i}.VPT_shallow"] = rn(8, dv, std=sv)
    # The trainers save these in fp16 (PREC fp16): take fp16 values, so the Dassl file and the
    # f32 safetensors form hold the same numbers. IVLP/VPT's VPT prompts stay fp32.
    for k in sd:
        if k in ("ctx", "prompt_learner.ctx") or k.startswith("meta_net."):
            sd[k] = sd[k].half().float()
    return sd


def plan(sd, method):
    """The splice plan of docs/prompts.md §1 from a learned state dict."""
    P = {"text": None, "vision": None, "meta": None, "template": "a photo of a"}
    ctx = sd.get("ctx", sd.get("prompt_learner.ctx"))
    deep = lambda tower: [sd[f"{tower}.transformer.resblocks.{i}.VPT_shallow"]
                          for i in range(1, 99) if f"{tower}.transformer.resblocks.{i}.VPT_shallow" in sd]
    if ctx is not None:
        P["text"] = {"n": ctx.shape[0], "input": ctx, "deep": deep("text_encoder")}
    if "image_encoder.VPT" in sd:
        P["vision"] = {"n": sd["image_encoder.VPT"].shape[0], "input": sd["image_encoder.VPT"],
                       "deep": deep("image_encoder")}
    if method == "cocoop":
        P["meta"] = [sd[f"meta_net.linear{j}.{s}"] for j in (1, 2) for s in ("weight", "bias")]
    if method == "coop":
        P["template"] = " ".join(["X"] * ctx.shape[0])  # CoOp's random init: "X X … X"
    return P


@torch.no_grad()
def encode_image(model, px, V):
    vm = model.vision_model
    B = px.shape[0]
    x = vm.embeddings(px)                                        # [B, 197, Dv]
    if V:
        x = torch.cat([x, V["input"].expand(B, -1, -1)], 1)      # appended, no positions
    x = vm.pre_layrnorm(x)
    for i, layer in enumerate(vm.encoder.layers):
        if V and 1 <= i <= len(V["deep"]):
            x = torch.cat([x[:, : -V["n"]], V["deep"][i - 1].expand(B, -1, -1)], 1)  # replace last n
        x = run_layer(layer, x, None)
    return model.visual_projection(vm.post_layernorm(x[:, 0]))


@torch.no_grad()
def encode_text(model, ids, Tp, ctx=None):
    tm = model.text_model
    C, L = ids.shape
    x = tm.embeddings.token_embedding(ids)
    if Tp:
        x[:, 1 : 1 + Tp["n"]] = Tp["input"] if ctx is None else ctx   # before positions
    x = x + tm.embeddings.position_embedding(torch.arange(L))[None]
    mask = torch.full((L, L), torch.finfo(torch.float32).min).triu(1)[None, None]
    for i, layer in enumerate(tm.encoder.layers):
        if Tp and 1 <= i <= len(Tp["deep"]):
            x[:, 1 : 1 + Tp["n"]] = Tp["deep"][i - 1]
        x = run_layer(layer, x, mask)
    x = tm.final_layer_norm(x)
    return model.text_projection(x[torch.arange(C), ids.argmax(-1)])


def family_logits(model, px, ids, P):
    img = torch.cat([encode_image(model, px[i : i + 8], P["vision"]) for i in range(0, len(px), 8)])
    if P["meta"] is None:
        return logits_of(model, img, encode_text(model, ids, P["text"]))
    w1, b1, w2, b2 = P["meta"]
    f = img / img.norm(dim=-1, keepdim=True)
    pi = torch.relu(f @ w1.t() + b1) @ w2.t() + b2               # [B, Dt], from the normalised feature
    rows = []
    for b in range(len(px)):                                     # per image: its own context
        t = encode_text(model, ids, P["text"], P["text"]["input"] + pi[b])
        t = t / t.norm(dim=-1, keepdim=True)
        rows.append(model.logit_scale.exp() * f[b] @ t.t())
    return torch.stack(rows)


def dassl(method, sd, hf_openai, n_cls, dt):
    """The state dict the trainer's registered module saves, dtypes as under PREC fp16."""
    out = collections.OrderedDict()
    g = torch.Generator().manual_seed(7)
    L = 77
    if method in ("coop", "cocoop"):
        n = sd["ctx"].shape[0]
        out["ctx"] = sd["ctx"].half()
        out["token_prefix"] = torch.randn(n_cls, 1, dt, generator=g).half()
        out["token_suffix"] = torch.randn(n_cls, L - 1 - n, dt, generator=g).half()
        for k, v in sd.items():
            if k.startswith("meta_net."):
                out[k] = v.half()
        return out, "prompt_learner", {"coop": 50, "cocoop": 10}[method]
    out["logit_scale"] = hf_openai["logit_scale"]
    if method == "ivlp":
        n = sd["prompt_learner.ctx"].shape[0]
        out["prompt_learner.ctx"] = sd["prompt_learner.ctx"].half()
        out["prompt_learner.token_prefix"] = torch.randn(n_cls, 1, dt, generator=g).half()
        out["prompt_learner.token_suffix"] = torch.randn(n_cls, L - 1 - 4, dt, generator=g).half()
    out["image_encoder.VPT"] = sd["image_encoder.VPT"]
    for k, v in hf_openai.items():                               # the frozen CustomCLIP, VPT_shallow first
        if k == "logit_scale" or "token_embedding" in k:
            continue
        m = k.split(".")  # image_encoder.transformer.resblocks.{i}.attn.in_proj_weight
        if m[1:3] == ["transformer", "resblocks"] and m[4:] == ["attn", "in_proj_weight"]:
            vpt = f"{m[0]}.transformer.resblocks.{m[3]}.VPT_shallow"
            if vpt in sd:
                out[vpt] = sd[vpt]
        half = method == "ivlp" and v.dim() >= 2 and "embedding" not in k
        out[k] = v.half() if half else v
    assert all(k in out for k in sd), [k for k in sd if k not in out]
    return out, {"ivlp": "VLPromptLearner", "vpt": "prompt_learner"}[method], 5


def save_dassl(path, sd, epoch):
    params = [torch.nn.Parameter(v.float().clone()) for k, v in sd.items()
              if ("ctx" in k or "VPT" in k or "meta_net" in k) and "token_" not in k]
    opt = torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=5e-4)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    successor = CosineAnnealingLR(opt, epoch)
    scheduler = {k: v for k, v in successor.__dict__.items() if k != "optimizer"}
    scheduler.update({"successor": successor, "warmup_epoch": 1, "cons_lr": 1e-5, "last_epoch": epoch})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": sd, "epoch": epoch, "optimizer": opt.state_dict(), "scheduler": scheduler,
                "val_result": None}, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("out_dir")
    ap.add_argument("golden")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--openai-clip", default="/tmp/oc/openai-clip-1.0.1.tar.gz")
    a = ap.parse_args()
    torch.set_num_threads(2)
    d, out = pathlib.Path(a.model_dir), pathlib.Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = CLIPModel.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager").eval()
    S = model.config.vision_config.image_size
    tok = openai_tokenizer(a.openai_clip)
    labels = [l.strip() for l in open(root / "tests/fixtures/labels.txt", encoding="utf-8")
              if l.strip() and not l.strip().startswith("#")]
    names = [" ".join(l.replace("_", " ").split()) for l in labels]
    tf = T.Compose([T.Resize(S, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(S),
                    T.ToTensor(), T.Normalize(MEAN, STD)])
    img_dir = root / "tests/fixtures/images"
    images = sorted(p.name for p in img_dir.iterdir())
    px = torch.stack([tf(Image.open(img_dir / n).convert("RGB")) for n in images])
    golden = {"model_sha256": sha256(d / "model.safetensors"), "labels": labels, "images": images}
    for method in ("coop", "cocoop", "ivlp", "vpt"):
        sd = synth(model, method, a.full)
        P = plan(sd, method)
        ids = tokenize(tok, [f"{P['template']} {n}." for n in names])
        lg = family_logits(model, px, ids, P)
        # Without prompts the same hooks must be zero-shot CLIP (golden.py checks that against HF's API).
        st = out / f"{method}.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
        golden[method] = {"template": P["template"], "prompts_sha256": sha256(st),
                          "token_ids": [r[r > 0].tolist() for r in ids],
                          "logits": lg.tolist(), "top5": lg.topk(5, dim=-1).indices.tolist()}
        zs = logits_of(model, encode_image(model, px, None), encode_text(model, ids, None))
        print(f"{method}: logit range {lg.min().item():.2f}..{lg.max().item():.2f}, "
              f"max |Δ| from zero-shot with the same ids {(lg - zs).abs().max().item():.2f}")
        if not a.full:
            hf = {k: v.float() for k, v in load_file(str(d / "model.safetensors")).items()}
            full_sd, reg, epoch = dassl(method, sd, to_openai(hf, "image_encoder.", "text_encoder."), 3,
                                        model.config.text_config.hidden_size)
            path = out / method / reg / f"model.pth.tar-{epoch}"
            save_dassl(path, full_sd, epoch)
            golden[method]["checkpoint"] = str(path.resolve().relative_to(root))
    pathlib.Path(a.golden).write_text(json.dumps(golden) + "\n")
    print("wrote", a.golden)


if __name__ == "__main__":
    main()
