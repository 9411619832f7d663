"""PyTorch checkpoint fixtures for the loader tests, written by real `torch.save`
(tests/fixtures/checkpoints/). Run from the repository root after the tiny model exists:

    python tools/reference/make_checkpoints.py

Well-formed: a Dassl-shaped MaPLe checkpoint (state_dict + SGD optimizer state + scheduler dict
holding a pickled CosineAnnealingLR object + defaultdict + epoch + val_result) with the tiny
model's prompts and a frozen CLIP copy under MaPLe's names; the tiny CLIP as HF
`pytorch_model.bin`; the tiny CLIP under OpenAI's names (packed in_proj, transposed projections,
one non-contiguous tensor). Hostile: pickles that would run os.system / eval / subprocess /
getattr, a missing storage, an offset past the end, a short storage, a `../` entry, deep
nesting, a huge length, a truncated archive. The hostile ones would create /tmp/maple-pwned-*
if anything executed them; the tests check those files never appear."""
import collections
import io
import os
import pathlib
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile

import torch
from safetensors.torch import load_file
from torch.optim.lr_scheduler import CosineAnnealingLR

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from golden import to_openai  # noqa: E402

root = pathlib.Path(__file__).resolve().parents[2]
tiny = root / "tests/fixtures/tiny"
out = root / "tests/fixtures/checkpoints"
shutil.rmtree(out, ignore_errors=True)
out.mkdir(parents=True)
torch.manual_seed(0)

hf = {k: v.float() for k, v in load_file(str(tiny / "model.safetensors")).items()}
prompts = load_file(str(tiny / "maple_prompts.safetensors"))  # ctx/proj f16, compound f32


# --- well-formed -----------------------------------------------------------------------------
# HF pytorch_model.bin
d = out / "hf_tiny"; d.mkdir()
shutil.copy(tiny / "config.json", d / "config.json")
hf16 = collections.OrderedDict((k, v if k == "logit_scale" else v.half()) for k, v in hf.items())  # the tiny model is f16
torch.save(hf16, d / "pytorch_model.bin")
# OpenAI names
d = out / "openai_tiny"; d.mkdir()
shutil.copy(tiny / "config.json", d / "config.json")
torch.save(to_openai(hf16), d / "pytorch_model.bin")

# Dassl-shaped MaPLe checkpoint (docs/model.md §12.2/§12.3), n_cls = 3 training classes.
sd = collections.OrderedDict()
sd["logit_scale"] = hf["logit_scale"]
sd["prompt_learner.ctx"] = prompts["prompt_learner.ctx"]
sd["prompt_learner.token_prefix"] = torch.randn(3, 1, 32).half()
sd["prompt_learner.token_suffix"] = torch.randn(3, 74, 32).half()
sd["prompt_learner.proj.weight"] = prompts["prompt_learner.proj.weight"]
sd["prompt_learner.proj.bias"] = prompts["prompt_learner.proj.bias"]
j = 0
while f"prompt_learner.compound_prompts_text.{j}" in prompts:
    sd[f"prompt_learner.compound_prompts_text.{j}"] = prompts[f"prompt_learner.compound_prompts_text.{j}"]
    j += 1
for j2 in range(j):
    for s in ("weight", "bias"):
        k = f"prompt_learner.compound_prompt_projections.{j2}.{s}"
        sd[k] = prompts[k]
frozen = to_openai({k: v for k, v in hf.items()}, "image_encoder.", "text_encoder.")
for k, v in frozen.items():
    if k.startswith(("image_encoder.", "text_encoder.")) and "token_embedding" not in k:
        sd[k] = v.half() if v.dim() >= 2 else v
params = [torch.nn.Parameter(sd[k].float().clone()) for k in sd if k.startswith("prompt_learner.") and "token_" not in k]
opt = torch.optim.SGD(params, lr=0.0035, momentum=0.9, weight_decay=5e-4)
for p in params:
    p.grad = torch.ones_like(p)
opt.step()
successor = CosineAnnealingLR(opt, 5)
scheduler = {k: v for k, v in successor.__dict__.items() if k != "optimizer"}
scheduler.update({"successor": successor, "warmup_epoch": 1, "cons_lr": 1e-5, "last_epoch": 5})
ckpt = {"state_dict": sd, "epoch": 5, "optimizer": opt.state_dict(), "scheduler": scheduler, "val_result": None}
d = out / "maple_tiny" / "MultiModalPromptLearner"; d.mkdir(parents=True)
torch.save(ckpt, d / "model.pth.tar-5")
try:
    torch.load(d / "model.pth.tar-5", weights_only=True)
    print("note: weights_only=True loaded the Dassl checkpoint")
except Exception as e:
    print("weights_only=True refuses the Dassl checkpoint, as docs/model.md §12.2 says:", type(e).__name__)

# --- hostile ----------------------------------------------------------------------------------
class Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args
    def __reduce__(self):
        return (self.fn, self.args)

small = collections.OrderedDict(w=torch.ones(2))
torch.save({"state_dict": small, "x": Reduce(os.system, ("touch /tmp/maple-pwned-os-system",))}, out / "evil_os_system.pth")
torch.save({"state_dict": small, "x": Reduce(eval, ("open('/tmp/maple-pwned-eval', 'w')",))}, out / "evil_eval.pth")
torch.save({"state_dict": small, "x": Reduce(subprocess.Popen, (["touch", "/tmp/maple-pwned-subprocess"],))},
           out / "evil_subprocess.pth")
torch.save({"state_dict": small, "x": Reduce(getattr, (Reduce(__import__, ("os",)), "system"))}, out / "evil_getattr.pth")


def rezip(src, dst, drop=(), replace=None, extra=()):
    """Copies a torch archive entry by entry (stored), dropping/replacing/adding entries."""
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zo:
        for info in zi.infolist():
            name = info.filename
            if any(name.endswith(x) for x in drop):
                continue
            data = zi.read(name)
            if replace and name.endswith(replace[0]):
                data = replace[1]
            zo.writestr(name, data)
        for name, data in extra:
            zo.writestr(name, data)


base = out / "_base.pth"
torch.save({"state_dict": collections.OrderedDict(w=torch.arange(4.0))}, base)
rezip(base, out / "missing_storage.pth", drop=("/data/0",))
rezip(base, out / "short_storage.pth", replace=("/data/0", b"\0" * 8))
rezip(base, out / "path_traversal.pth", extra=(("_base/../x", b"hello"),))


class FakeStorage:
    pass

class TensorPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return ("storage", torch.FloatStorage, "0", "cpu", 4)
        return None

buf = io.BytesIO()
bad_tensor = Reduce(torch._utils._rebuild_tensor_v2, (FakeStorage(), 100, (4,), (1,), False, collections.OrderedDict()))
TensorPickler(buf, protocol=2).dump({"state_dict": collections.OrderedDict(w=bad_tensor)})
rezip(base, out / "offset_past_end.pth", replace=("data.pkl", buf.getvalue()))
deep = b"\x80\x02" + b"]" * 100000 + b"a" * 99999 + b"."
rezip(base, out / "deep_nesting.pth", replace=("data.pkl", deep))
huge = b"\x80\x02\x8d" + struct.pack("<Q", 1 << 60) + b"abc."
rezip(base, out / "huge_length.pth", replace=("data.pkl", huge))
full = (out / "maple_tiny/MultiModalPromptLearner/model.pth.tar-5").read_bytes()
(out / "truncated.pth.tar").write_bytes(full[: len(full) // 2])
base.unlink()
for p in sorted(out.rglob("*")):
    if p.is_file():
        print(f"{p.relative_to(out)}: {p.stat().st_size} bytes")
