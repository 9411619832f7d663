"""The original trainers' models: the MaPLe repository's `CustomCLIP` of CoOp, CoCoOp, IVLP and VPT
(trainers/*.py on its own clip/model.py; the Dassl modules they import stubbed, the model needs
none of them), float32 on the CPU, with the synthetic prompts family.py wrote, against the golden
logits family.py computed with HF CLIPModel + hooks. This is how the reference is validated.

    python tools/reference/originals.py --repo CHECKOUT MODEL_DIR PROMPTS_DIR GOLDEN.json

CHECKOUT is a work tree of muzairkhattak/multimodal-prompt-learning (not part of this
repository). Prints one line per method: max |Δlogit| against the golden with the original's
`.half()` casts of the VPT prompts disabled (what an fp32 port should match), and as shipped."""
import argparse
import importlib.util
import json
import pathlib
import sys
import types
from types import SimpleNamespace as NS

import torch
import torchvision.transforms as T
from PIL import Image
from safetensors.torch import load_file

root = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from golden import MEAN, STD, to_openai  # noqa: E402

TRAINERS = {"coop": "coop.py", "cocoop": "cocoop.py", "ivlp": "independentVL.py", "vpt": "vpt.py"}


def load_trainer(repo, method):
    """trainers/<method>.py with the dassl modules it imports stubbed."""
    class Registry:
        def register(self):
            return lambda c: c

    stubs = {"dassl": {}, "dassl.engine": {"TRAINER_REGISTRY": Registry(), "TrainerX": object},
             "dassl.metrics": {"compute_accuracy": None},
             "dassl.utils": {"load_pretrained_weights": None, "load_checkpoint": None},
             "dassl.optim": {"build_optimizer": None, "build_lr_scheduler": None}}
    for name, attrs in stubs.items():
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    spec = importlib.util.spec_from_file_location(f"orig_{method}", repo / "trainers" / TRAINERS[method])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def original(repo, method, hf, learned, classnames):
    """The trainer's CustomCLIP as its build_model makes it, in fp32, with `learned` loaded."""
    mod = load_trainer(repo, method)
    from clip.model import build_model  # the repository's CLIP (on the path from here on)

    sd = to_openai(hf)
    n_t = learned.get("ctx", learned.get("prompt_learner.ctx", torch.zeros(0))).shape[0]
    n_v = learned["image_encoder.VPT"].shape[0] if "image_encoder.VPT" in learned else 0
    blocks = lambda tower: 1 + sum(1 for k in learned if k.startswith(tower) and k.endswith("VPT_shallow"))
    d_t, d_v = blocks("text_encoder."), blocks("image_encoder.")
    design = {"trainer": {"coop": "CoOp", "cocoop": "CoCoOp", "ivlp": "IVLP", "vpt": "VPT"}[method],
              "vision_depth": d_v if n_v else 0, "language_depth": d_t if method == "ivlp" else 0,
              "vision_ctx": n_v, "language_ctx": n_t if method == "ivlp" else 0}
    clip_model = build_model(dict(sd), design).float().eval()
    # build_model loaded the weights into its fp16 copy: load them again in fp32.
    missing, unexpected = clip_model.load_state_dict(sd, strict=False)
    assert not unexpected and all("VPT" in k for k in missing), (missing, unexpected)
    S = clip_model.visual.input_resolution
    trainer = {
        "coop": NS(COOP=NS(N_CTX=n_t, CTX_INIT="", CSC=False, CLASS_TOKEN_POSITION="end", PREC="fp32")),
        "cocoop": NS(COCOOP=NS(N_CTX=n_t, CTX_INIT="a photo of a", PREC="fp32")),
        "ivlp": NS(IVLP=NS(N_CTX_TEXT=n_t, N_CTX_VISION=n_v, CTX_INIT="a photo of a", PROMPT_DEPTH_TEXT=d_t,
                           PROMPT_DEPTH_VISION=d_v, PREC="fp32")),
        "vpt": NS(VPT=NS(N_CTX_VISION=n_v, PROMPT_DEPTH_VISION=d_v, CTX_INIT="a photo of a", PREC="fp32")),
    }[method]
    cfg = NS(TRAINER=trainer, INPUT=NS(SIZE=(S, S)), MODEL=NS(BACKBONE=NS(NAME="ViT-B/16")))
    m = mod.CustomCLIP(cfg, classnames, clip_model).float().eval()
    if method in ("coop", "cocoop"):
        missing, unexpected = m.prompt_learner.load_state_dict(learned, strict=False)
        assert not unexpected and set(missing) == {"token_prefix", "token_suffix"}, (missing, unexpected)
    else:
        missing, unexpected = m.load_state_dict(learned, strict=False)
        assert not unexpected and not any("VPT" in k or k == "prompt_learner.ctx" for k in missing), unexpected
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True, type=pathlib.Path)
    ap.add_argument("model_dir", type=pathlib.Path)
    ap.add_argument("prompts_dir", type=pathlib.Path)
    ap.add_argument("golden", type=pathlib.Path)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.Tensor.cuda = lambda self, *args, **kw: self  # VPT's forward calls .cuda() (CPU only here)
    gold = json.loads(a.golden.read_text())
    hf = {k: v.float() for k, v in load_file(str(a.model_dir / "model.safetensors")).items()}
    labels = gold["labels"]
    half = torch.Tensor.half
    for method in ("coop", "cocoop", "ivlp", "vpt"):
        learned = load_file(str(a.prompts_dir / f"{method}.safetensors"))
        m = original(a.repo, method, hf, learned, labels)
        S = m.image_encoder.input_resolution
        tf = T.Compose([T.Resize(S, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(S),
                        T.ToTensor(), T.Normalize(MEAN, STD)])
        px = torch.stack([tf(Image.open(root / "tests/fixtures/images" / n).convert("RGB")) for n in gold["images"]])
        want = torch.tensor(gold[method]["logits"])
        out = {}
        for mode in ("fp32", "as shipped"):
            torch.Tensor.half = (lambda self, *args, **kw: self) if mode == "fp32" else half
            with torch.no_grad():
                lg = torch.cat([m(px[i : i + 8]) for i in range(0, len(px), 8)])
            out[mode] = (lg - want).abs().max().item()
        torch.Tensor.half = half
        print(f"{method}: original vs golden max |Δlogit| {out['fp32']:.2e} "
              f"(its .half() prompt casts on, as shipped: {out['as shipped']:.2e})", flush=True)


if __name__ == "__main__":
    main()
