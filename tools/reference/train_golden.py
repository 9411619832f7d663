"""Prompt training steps in PyTorch autograd + torch.optim.SGD, on HF `transformers` CLIPModel with
the prompts spliced by hooks as golden.py and family.py do (docs/model.md §5–§8, docs/prompts.md §1),
for maple-train's exactness test: MaPLe, and CoOp, IVLP and VPT (the method is read from the
prompts file's keys, as maple does; their tensors keep the file's names).

    python tools/reference/train_golden.py MODEL_DIR PROMPTS DATA_DIR OUT.safetensors \
        [--steps 3] [--batch-size 2] [--lr 0.0035] [--template "a photo of a"]
    python tools/reference/train_golden.py MODEL_DIR PROMPTS DATA_DIR - --bench --classes 10 100

Deterministic run (maple-train --no-augment --no-shuffle --lr-schedule constant): the test
transform, items in folder order (classes sorted, files sorted), batch b = items [b·B, (b+1)·B),
constant LR, SGD(momentum 0.9, weight_decay 5e-4), the text tower over all classes every step.
Writes `grad0.<name>` (the first step's gradients), `trained.<name>` (the tensors after the last
step) and `init.<name>`, with the losses in the metadata. Everything float32 on the CPU.
With --bench: seconds per step (forward + backward + SGD) at the given batch size for each class
count, one JSON line each (maple-bench --train's synthetic class names and pixels pattern)."""
import argparse
import json
import pathlib
import resource
import sys
import time

import torch
import torchvision.transforms as T
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPModel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from golden import MEAN, STD, openai_tokenizer, run_layer, tokenize  # noqa: E402


EXT = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def names_of(sd):
    """The trainable tensors in maple's order, and the method."""
    if "proj.weight" in sd:
        depth = 1 + sum(1 for k in sd if k.startswith("compound_prompts_text."))
        names = ["ctx", "proj.weight", "proj.bias"]
        for j in range(depth - 1):
            names += [f"compound_prompts_text.{j}", f"compound_prompt_projections.{j}.weight",
                      f"compound_prompt_projections.{j}.bias"]
        return names, "maple"
    if "meta_net.linear2.weight" in sd:
        return ["ctx"] + [f"meta_net.linear{j}.{w}" for j in (1, 2) for w in ("weight", "bias")], "cocoop"
    deep = lambda tower: [f"{tower}.transformer.resblocks.{i}.VPT_shallow" for i in range(1, 99)
                          if f"{tower}.transformer.resblocks.{i}.VPT_shallow" in sd]
    names = [k for k in ("ctx", "prompt_learner.ctx") if k in sd] + deep("text_encoder")
    names += [k for k in ("image_encoder.VPT",) if k in sd] + deep("image_encoder")
    method = "ivlp" if "prompt_learner.ctx" in sd else "coop" if "ctx" in sd else "vpt"
    return names, method


def splice_matrices(P, method):
    """Each tower's input and deep prompts (docs/prompts.md §1); None where a tower has none."""
    if method != "maple":
        ctx = P.get("ctx", P.get("prompt_learner.ctx"))
        deep = lambda tower: [P[k] for k in sorted((k for k in P if k.startswith(tower + ".")
                                                    and k.endswith("VPT_shallow")),
                                                   key=lambda k: int(k.split(".")[3]))]
        return {"tn": 0 if ctx is None else ctx.shape[0], "ctx": ctx, "text_deep": deep("text_encoder"),
                "vn": P["image_encoder.VPT"].shape[0] if "image_encoder.VPT" in P else 0,
                "shared_ctx": P.get("image_encoder.VPT"), "vis_deep": deep("image_encoder")}
    lin = lambda x, w, b: x @ w.t() + b
    depth = 1 + sum(1 for k in P if k.startswith("compound_prompts_text."))
    return {
        "tn": P["ctx"].shape[0], "vn": P["ctx"].shape[0], "ctx": P["ctx"],
        "shared_ctx": lin(P["ctx"], P["proj.weight"], P["proj.bias"]),
        "text_deep": [P[f"compound_prompts_text.{j}"] for j in range(depth - 1)],
        "vis_deep": [lin(P[f"compound_prompts_text.{j}"], P[f"compound_prompt_projections.{j}.weight"],
                         P[f"compound_prompt_projections.{j}.bias"]) for j in range(depth - 1)],
    }


def encode_image(model, px, S):
    """golden.py's encode_image, with autograd (appended image prompts, deep overwrite)."""
    vm = model.vision_model
    B = px.shape[0]
    x = vm.embeddings(px)
    if S["shared_ctx"] is not None:
        x = torch.cat([x, S["shared_ctx"].expand(B, -1, -1)], 1)
    x = vm.pre_layrnorm(x)
    for i, layer in enumerate(vm.encoder.layers):
        if 1 <= i <= len(S["vis_deep"]):
            x = torch.cat([x[:, : -S["vn"]], S["vis_deep"][i - 1].expand(B, -1, -1)], 1)
        x = run_layer(layer, x, None)
    return model.visual_projection(vm.post_layernorm(x[:, 0]))


def encode_text(model, ids, S):
    tm = model.text_model
    C, L = ids.shape
    n = S["tn"]
    x = tm.embeddings.token_embedding(ids)
    if S["ctx"] is not None:
        x = torch.cat([x[:, :1], S["ctx"].expand(C, -1, -1), x[:, 1 + n:]], 1)
    x = x + tm.embeddings.position_embedding(torch.arange(L))[None]
    mask = torch.full((L, L), torch.finfo(torch.float32).min).triu(1)[None, None]
    for i, layer in enumerate(tm.encoder.layers):
        if 1 <= i <= len(S["text_deep"]):
            x = torch.cat([x[:, :1], S["text_deep"][i - 1].expand(C, -1, -1), x[:, 1 + n:]], 1)
        x = run_layer(layer, x, mask)
    x = tm.final_layer_norm(x)
    return model.text_projection(x[torch.arange(C), ids.argmax(-1)])


def loss_of(model, P, method, px, ids, labels):
    S = splice_matrices(P, method)
    img = encode_image(model, px, S)
    img = img / img.norm(dim=-1, keepdim=True)
    if method == "cocoop":
        # Each image's own context ctx + π(f̂) (docs/prompts.md §3), every class under it.
        lin = lambda x, j: x @ P[f"meta_net.linear{j}.weight"].t() + P[f"meta_net.linear{j}.bias"]
        pi = lin(torch.relu(lin(img, 1)), 2)
        rows = []
        for b in range(len(px)):
            t = encode_text(model, ids, dict(S, ctx=P["ctx"] + pi[b]))
            rows.append(model.logit_scale.exp() * img[b] @ (t / t.norm(dim=-1, keepdim=True)).t())
        return torch.nn.functional.cross_entropy(torch.stack(rows), labels)
    txt = encode_text(model, ids, S)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    logits = model.logit_scale.exp() * img @ txt.t()
    return torch.nn.functional.cross_entropy(logits, labels)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("prompts")
    ap.add_argument("data_dir")
    ap.add_argument("out")
    ap.add_argument("--openai-clip", default="/tmp/oc/openai-clip-1.0.1.tar.gz")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.0035)
    ap.add_argument("--template", default="a photo of a")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--classes", type=int, nargs="*", default=[10, 100])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = CLIPModel.from_pretrained(a.model_dir, torch_dtype=torch.float32, attn_implementation="eager").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    raw = {k: v.float() for k, v in load_file(a.prompts).items()}
    maple = any(k.endswith("proj.weight") for k in raw)
    sd = {k.removeprefix("prompt_learner.") if maple else k: v for k, v in raw.items()}
    names, method = names_of(sd)
    P = {k: sd[k].clone().requires_grad_(True) for k in names}
    init = {k: v.detach().clone() for k, v in P.items()}
    opt = torch.optim.SGD([P[k] for k in names], lr=a.lr, momentum=0.9, weight_decay=5e-4)
    tok = openai_tokenizer(a.openai_clip)
    Sz = model.config.vision_config.image_size
    tf = T.Compose([T.Resize(Sz, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(Sz),
                    T.ToTensor(), T.Normalize(MEAN, STD)])
    data = pathlib.Path(a.data_dir)
    classes = sorted(d.name for d in data.iterdir() if d.is_dir() and not d.name.startswith("."))
    items = [(f, c) for c, name in enumerate(classes)
             for f in sorted((data / name).iterdir()) if f.suffix.lower() in EXT and not f.name.startswith(".")]
    px_all = torch.stack([tf(Image.open(f).convert("RGB")) for f, _ in items])
    y_all = torch.tensor([c for _, c in items])
    B = a.batch_size

    if a.bench:
        for nc in a.classes:
            sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
            from peer import labels as bench_labels  # maple-bench's synthetic class names
            labels = bench_labels(nc)
            ids = tokenize(tok, [f"{a.template} {n}." for n in labels])
            S = model.config.vision_config.image_size
            px = (torch.arange(B * 3 * S * S) * 7919 % 255).float().div(127.5).sub(1.0).reshape(B, 3, S, S)
            y = torch.arange(B) % nc
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                opt.zero_grad()
                loss_of(model, P, method, px, ids, y).backward()
                opt.step()
                times.append(time.perf_counter() - t0)
            print(json.dumps({"peer": "pytorch", "classes": nc, "batch": B, "threads": a.threads,
                              "seconds_per_step": min(times[1:]), "all": times,
                              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return

    pretty = [" ".join(c.replace("_", " ").split()) for c in classes]
    ids = tokenize(tok, [f"{a.template} {n}." for n in pretty])
    steps_per_epoch = len(items) // B if len(items) >= B else 1
    losses, grad0 = [], None
    for s in range(a.steps):
        b = s % steps_per_epoch
        idx = torch.arange(b * B, (b + 1) * B) % len(items)
        opt.zero_grad()
        loss = loss_of(model, P, method, px_all[idx], ids, y_all[idx])
        loss.backward()
        if grad0 is None:
            grad0 = {k: P[k].grad.detach().clone() for k in names}
        opt.step()
        losses.append(loss.item())
        print(f"step {s + 1}: loss {loss.item():.6f}")
    out = {}
    for k in names:
        out[f"init.{k}"] = init[k].contiguous()
        out[f"grad0.{k}"] = grad0[k].contiguous()
        out[f"trained.{k}"] = P[k].detach().contiguous()
    meta = {"method": method, "template": a.template, "losses": json.dumps(losses), "classes": json.dumps(classes), "batch_size": str(B),
            "lr": repr(a.lr), "steps": str(a.steps), "token_ids": json.dumps([r[r > 0].tolist() for r in ids]),
            "images": json.dumps([str(f.relative_to(data)) for f, _ in items]), "torch": torch.__version__}
    save_file(out, a.out, metadata=meta)
    print("wrote", a.out)


main()
