"""maple from Python: MaPLe (multi-modal prompt learning) on CLIP ViT-B/16, run by a Rust engine.

    import maple_clip
    clf = maple_clip.Classifier("openai/clip-vit-base-patch16", prompts="maple_prompts.safetensors",
                                labels=["cat", "dog", "car"])
    print(clf.classify("photo.jpg").best())

The model runs with the GIL released, so other Python threads go on meanwhile. Results are
plain picklable values (``Classification``, ``Score``, numpy arrays), as are the exceptions.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, NamedTuple, Union

import numpy as np
import numpy.typing as npt

from . import _native
from ._errors import (
    ComputeError,
    ConfigError,
    DeviceError,
    ImageError,
    LabelError,
    MapleError,
    MapleWarning,
    ModelError,
)

__version__: str = _native.__version__

__all__ = [
    "Classifier",
    "Classification",
    "Score",
    "Image",
    "train",
    "default_cache_dir",
    "MapleError",
    "ModelError",
    "LabelError",
    "ImageError",
    "ConfigError",
    "DeviceError",
    "ComputeError",
    "MapleWarning",
]

PathLike = Union[str, "os.PathLike[str]"]
#: What an image may be: a path, the bytes of an encoded file (any buffer: ``bytes``,
#: ``memoryview``, a 1-D uint8 array), a ``PIL.Image.Image``, or a uint8 numpy array of H×W×3
#: (RGB) or H×W×4 (RGBA, alpha dropped) pixels.
Image = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, "npt.NDArray[np.uint8]", Any]


class Score(NamedTuple):
    """One label's score in a :class:`Classification`."""

    index: int
    label: str
    logit: float
    prob: float


class Classification:
    """One image's result: a logit and a probability per label, in the labels' order."""

    __slots__ = ("logits", "probs", "labels")

    def __init__(
        self,
        logits: npt.NDArray[np.float32],
        probs: npt.NDArray[np.float32],
        labels: Sequence[str],
    ) -> None:
        self.logits = logits
        self.probs = probs
        self.labels = list(labels)

    def top(self, k: int = 5) -> list[Score]:
        """The ``k`` best labels, best first (ties keep label order)."""
        order = np.argsort(-self.logits, kind="stable")[: max(k, 0)]
        return [self._score(int(i)) for i in order]

    def best(self) -> Score:
        """The best label."""
        return self._score(int(np.argmax(self.logits)))

    def _score(self, i: int) -> Score:
        return Score(i, self.labels[i], float(self.logits[i]), float(self.probs[i]))

    def __getstate__(self) -> tuple[Any, Any, list[str]]:
        return (self.logits, self.probs, self.labels)

    def __setstate__(self, state: tuple[Any, Any, list[str]]) -> None:
        self.logits, self.probs, self.labels = state

    def __repr__(self) -> str:
        b = self.best()
        return f"Classification(best={b.label!r}, prob={b.prob:.3f}, labels={len(self.labels)})"


def _image(x: Any) -> Any:
    """An image argument as the native module takes it (paths and buffers pass through)."""
    if isinstance(x, (str, os.PathLike, bytes, bytearray, memoryview)):
        return x
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8:
            raise TypeError(
                f"an image array must be uint8 (H×W×3 or H×W×4 pixels, or encoded bytes); got {x.dtype}"
            )
        return x if x.flags.c_contiguous else np.ascontiguousarray(x)
    mod = type(x).__module__ or ""
    if mod.startswith("PIL.") and hasattr(x, "convert"):
        rgb = x if x.mode == "RGB" else x.convert("RGB")
        return np.asarray(rgb, dtype=np.uint8)
    return x  # anything else with the buffer protocol; the native side names what it is not


def _images(images: Iterable[Image], what: str) -> list[Any]:
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)) or (
        isinstance(images, np.ndarray) and images.ndim != 1 and images.dtype == np.uint8
    ):
        raise TypeError(f"{what} takes a list of images; for one image use a list of one")
    return [_image(x) for x in images]


def default_cache_dir() -> str | None:
    """maple's cache directory (``$XDG_CACHE_HOME/maple`` or ``~/.cache/maple``), as the CLI
    uses it, or None where there is no home."""
    d = _native.default_cache_dir()
    return None if d is None else os.fspath(d)


class Classifier:
    """A model, its prompts and a set of labels, ready to classify any number of images.

    ``model`` is a directory (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``)
    or a Hugging Face id looked up in (and downloaded to) the hub cache. ``labels`` is a list of
    names or the path of a labels file (one per line, or the CLI's other formats). ``prompts`` is
    any prompts file ``maple-classify --prompts`` takes; without it the model runs zero-shot.
    ``template`` defaults to the one the prompts were trained with, else "a photo of a".
    ``device`` is "auto" (a hardware GPU if one works, else the CPU), "cpu" or "gpu";
    ``precision`` "f32", "int8", "bf16" (CPU) or "f16" (GPU weights). ``threads=0`` uses every
    core. The text-feature and packed-weight caches live in ``cache_dir`` (default: the CLI's,
    see :func:`default_cache_dir`); ``cache=False`` turns them off.

    One call runs at a time on a classifier (others wait); the GIL is released while it runs.
    """

    def __init__(
        self,
        model: PathLike,
        *,
        labels: Sequence[str] | PathLike,
        prompts: PathLike | None = None,
        template: str | None = None,
        device: Literal["auto", "cpu", "gpu"] = "auto",
        precision: Literal["f32", "int8", "bf16", "f16"] = "f32",
        threads: int = 0,
        batch_size: int = 8,
        cache_dir: PathLike | None = None,
        cache: bool = True,
    ) -> None:
        if threads < 0 or batch_size < 1:
            raise ConfigError(
                f"threads must be 0 or more and batch_size 1 or more (got {threads}, {batch_size})"
            )
        if cache and cache_dir is None:
            cache_dir = default_cache_dir()
        names, labels_file = _labels(labels)
        self._native = _native.Classifier(
            model,
            labels=names,
            labels_file=labels_file,
            prompts=prompts,
            template=template,
            device=device,
            precision=precision,
            threads=threads,
            batch_size=batch_size,
            cache_dir=cache_dir if cache else None,
        )
        self._warn()

    def _warn(self) -> None:
        for w in self._native.take_warnings():
            warnings.warn(w, MapleWarning, stacklevel=3)

    @property
    def labels(self) -> list[str]:
        """The labels, as written, in order."""
        return self._native.labels()

    @property
    def device(self) -> str:
        """``"cpu"`` or ``"gpu"``: what runs the model now (see :attr:`device_info` for why)."""
        return self._native.device()[0]

    @property
    def device_info(self) -> str:
        """The device as ``maple-classify`` says it, with the reason for a CPU fallback."""
        return self._native.device()[1]

    @property
    def embedding_dim(self) -> int:
        """The length of a feature row (512 for ViT-B/16)."""
        return self._native.embedding_dim()

    @property
    def logit_scale(self) -> float:
        """A logit is this (exp of the model's ``logit_scale``) times the dot product of an image
        row and a text row."""
        return self._native.logit_scale()

    @property
    def text_features(self) -> npt.NDArray[np.float32]:
        """The labels' text features, ``(labels, E)``, L2-normalised."""
        return self._native.text_features()

    def set_labels(self, labels: Sequence[str] | PathLike) -> None:
        """Replaces the labels (a list or a labels file); only the text tower runs again. A label
        set that is refused leaves the old one in place."""
        names, labels_file = _labels(labels)
        if names is not None:
            self._native.set_labels(names)
        else:
            self._native.set_labels_file(labels_file)
        self._warn()

    def classify(self, image: Image) -> Classification:
        """Classifies one image; raises if it cannot be read."""
        r = self.classify_batch([image], errors="raise")
        return r[0]  # type: ignore[return-value]

    def classify_batch(
        self, images: Iterable[Image], errors: Literal["raise", "return"] = "raise"
    ) -> list[Classification | MapleError | OSError]:
        """Classifies images in forward passes of at most ``batch_size``. With ``errors="raise"``
        the first image that cannot be read raises (after the others ran); with ``"return"`` its
        exception stands in its place in the list."""
        if errors not in ("raise", "return"):
            raise ValueError(f'errors={errors!r}: use "raise" or "return"')
        raw = self._native.classify_batch(_images(images, "classify_batch"))
        self._warn()
        labels = self.labels
        out: list[Classification | MapleError | OSError] = []
        for r in raw:
            if isinstance(r, BaseException):
                if errors == "raise":
                    raise r
                out.append(r)
            else:
                out.append(Classification(r[0], r[1], labels))
        return out

    def logits(self, images: Iterable[Image]) -> npt.NDArray[np.float32]:
        """``(N, labels)`` float32 logits; raises for the first image that cannot be read."""
        rows = self.classify_batch(images, errors="raise")
        if not rows:
            return np.zeros((0, len(self.labels)), np.float32)
        return np.stack([r.logits for r in rows])  # type: ignore[union-attr]

    def embed_images(self, images: Iterable[Image]) -> npt.NDArray[np.float32]:
        """``(N, E)`` image features, L2-normalised (the prompted image tower's, the ones the
        labels are compared with); raises for the first image that cannot be read."""
        raw = self._native.embed_images(_images(images, "embed_images"))
        self._warn()
        for r in raw:
            if isinstance(r, BaseException):
                raise r
        if not raw:
            return np.zeros((0, self.embedding_dim), np.float32)
        return np.stack(raw)

    def embed_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """``(N, E)`` text features, L2-normalised, each text put in the template behind the
        prompts' context as a label would be (``embed_texts(["dog"])`` is the row of a label
        "dog"). The labels are left as they are."""
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a list of texts")
        out = self._native.embed_texts(list(texts))
        self._warn()
        return out

    def evaluate(
        self,
        data: PathLike | None = None,
        *,
        split: PathLike | None = None,
        images: PathLike | None = None,
        subsample: Literal["base-to-new", "all", "base", "new"] = "base-to-new",
        list: Literal["test", "val"] = "test",
    ) -> dict[str, Any]:
        """Accuracy as ``maple-eval`` computes it, on an ImageFolder (``data``: one sub-folder per
        class) or a Dassl/CoOp split file (``split``: ``split_zhou_*.json``, paths relative to
        ``images``, default its folder) with the base-to-novel protocol: the training list's
        labels sorted, the first half (rounded up) base, the rest novel, each half against its
        own class names. Returns ``{"base": {...}, "novel": {...}, "hm": float}`` (or ``"all"``),
        each part with ``accuracy``, ``correct``, ``images``, ``classes`` and ``unreadable``
        (``(image, error)`` pairs, left out of the accuracy). The labels are restored after."""
        out = self._native.evaluate(data, split, images, subsample, list)
        self._warn()
        return out

    def __repr__(self) -> str:
        return f"maple_clip.{self._native.describe()}"


def _labels(labels: Sequence[str] | PathLike) -> tuple[list[str] | None, Any]:
    if isinstance(labels, (str, os.PathLike)):
        return None, labels
    names = list(labels)
    for n in names:
        if not isinstance(n, str):
            raise TypeError(f"labels must be strings; got {type(n).__name__}")
    return names, None


def train(
    model: PathLike,
    data: PathLike,
    out: PathLike,
    *,
    method: Literal["maple", "coop", "cocoop", "ivlp", "vpt"] = "maple",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    lr_schedule: Literal["cosine", "constant"] = "cosine",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    n_ctx: int | None = None,
    depth: int | None = None,
    template: str | None = None,
    shots: int | None = None,
    seed: int = 1,
    augment: bool = True,
    shuffle: bool = True,
    threads: int = 0,
    init: PathLike | None = None,
    max_steps: int | None = None,
    eval: PathLike | None = None,
    resume: PathLike | None = None,
    checkpoints: PathLike | Literal[False] | None = None,
    progress: Callable[[dict[str, Any]], object] | None = None,
) -> dict[str, Any]:
    """Trains prompts on an ImageFolder (``data/<class>/<image>``) as ``maple-train`` does, with
    its options, and writes them to ``out`` (safetensors, for ``prompts=``). ``method`` is
    ``maple-train --method``: MaPLe by default, or "coop", "cocoop", "ivlp", "vpt"; ``epochs``,
    ``batch_size``, ``lr``, ``n_ctx``, ``depth`` and ``template`` left as None take that method's
    recipe (MaPLe: 5, 4, 0.0035, 2, 9, "a photo of a"). ``checkpoints`` is the folder for one file per epoch (default ``out`` +
    ``".checkpoints"``; ``False`` for none). ``progress`` gets a dict per event (``kind``:
    "start", "step", "skipped", "eval", "epoch", "checkpoint_failed", with that event's fields);
    an exception it raises is raised after the run. Returns the number of ``steps`` and the
    last event of each kind. The GIL is released while it trains."""
    ints = dict(epochs=epochs, batch_size=batch_size, n_ctx=n_ctx, depth=depth, seed=seed,
                threads=threads, shots=shots, max_steps=max_steps)
    for name, v in ints.items():
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ConfigError(f"{name}={v!r}: it must be a whole number, 0 or more")
    for name, f in dict(lr=lr, momentum=momentum, weight_decay=weight_decay).items():
        if f is None and name == "lr":
            continue
        if not isinstance(f, (int, float)) or not math.isfinite(f) or f < 0:
            raise ConfigError(f"{name}={f!r}: it must be a finite number, 0 or more")
    if checkpoints is None:
        checkpoints = os.fspath(out) + ".checkpoints" if _native.out_is_file(out) else None
        if checkpoints is None:
            raise ConfigError(
                f"out={os.fspath(out)!r} is not a file a checkpoint folder can go beside; "
                "give checkpoints=DIR or checkpoints=False"
            )
    options = dict(
        ints, method=method, lr=None if lr is None else float(lr), lr_schedule=lr_schedule,
        momentum=float(momentum),
        weight_decay=float(weight_decay), template=template, augment=bool(augment),
        shuffle=bool(shuffle), init=init,
    )
    return _native.train(
        model, data, out, options,
        checkpoints=checkpoints if checkpoints is not False else None,
        eval=eval, resume=resume, progress=progress,
    )
