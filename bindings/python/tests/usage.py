"""How an application uses maple_clip; `mypy --strict` checks it against the package's types
(test_maple_clip.py runs it)."""

from __future__ import annotations

import pathlib

import numpy as np
import numpy.typing as npt

import maple_clip


def label_folder(model: str, prompts: str, folder: pathlib.Path) -> dict[str, str]:
    clf = maple_clip.Classifier(model, prompts=prompts, labels=["cat", "dog"], device="cpu")
    found: dict[str, str] = {}
    paths = sorted(folder.glob("*.jpg"))
    for path, r in zip(paths, clf.classify_batch(paths, errors="return")):
        if isinstance(r, maple_clip.Classification):
            best: maple_clip.Score = r.best()
            found[path.name] = best.label
        else:
            found[path.name] = f"error: {r}"
    return found


def features(clf: maple_clip.Classifier, images: list[bytes]) -> npt.NDArray[np.float32]:
    img = clf.embed_images(images)
    txt = clf.embed_texts(["a cat", "a dog"])
    scores: npt.NDArray[np.float32] = clf.logit_scale * (img @ txt.T)
    return scores


def progress(event: dict[str, object]) -> None:
    if event["kind"] == "epoch":
        print(event["loss"])


def fit(model: str, data: str) -> int:
    summary = maple_clip.train(model, data, "out.safetensors", epochs=1, progress=progress)
    steps: int = summary["steps"]
    return steps


try:
    maple_clip.Classifier("missing", labels=["cat"])
except maple_clip.ModelError as e:
    print(f"no model: {e}")
except OSError as e:
    print(f"cannot read {e.filename}")
