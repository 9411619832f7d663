# Types of the Rust module (bindings/python/src/lib.rs). The public API is maple_clip/__init__.py.
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

class Classifier:
    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        labels: list[str] | None = None,
        labels_file: str | os.PathLike[str] | None = None,
        prompts: str | os.PathLike[str] | None = None,
        template: str | None = None,
        device: str = "auto",
        precision: str = "f32",
        threads: int = 0,
        batch_size: int = 8,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None: ...
    def classify_batch(
        self, images: list[Any]
    ) -> list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | Exception]: ...
    def embed_images(self, images: list[Any]) -> list[npt.NDArray[np.float32] | Exception]: ...
    def embed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]: ...
    def text_features(self) -> npt.NDArray[np.float32]: ...
    def set_labels(self, labels: list[str]) -> None: ...
    def set_labels_file(self, path: str | os.PathLike[str]) -> None: ...
    def labels(self) -> list[str]: ...
    def device(self) -> tuple[str, str]: ...
    def take_warnings(self) -> list[str]: ...
    def embedding_dim(self) -> int: ...
    def logit_scale(self) -> float: ...
    def evaluate(
        self,
        data: str | os.PathLike[str] | None = None,
        split: str | os.PathLike[str] | None = None,
        images: str | os.PathLike[str] | None = None,
        subsample: str = "base-to-new",
        list: str = "test",
    ) -> dict[str, Any]: ...
    def describe(self) -> str: ...

def default_cache_dir() -> str | None: ...
def out_is_file(path: str | os.PathLike[str]) -> bool: ...
def train(
    model: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: dict[str, Any],
    checkpoints: str | os.PathLike[str] | None = None,
    eval: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    progress: Callable[[dict[str, Any]], object] | None = None,
) -> dict[str, Any]: ...
