"""maple's exceptions. Each one's text is the line ``maple-classify`` prints for the same problem.

Problems the operating system reports (a missing file, no permission) are ``OSError`` (so
``FileNotFoundError``, ``PermissionError``...) with ``filename`` set, not these.
"""

from __future__ import annotations


class MapleError(Exception):
    """Everything maple itself refuses or fails at."""


class ModelError(MapleError, ValueError):
    """No usable model or prompts: a missing or malformed weights file, a wrong shape,
    prompts that do not fit the model, a checkpoint that asks for code to run."""


class LabelError(MapleError, ValueError):
    """Labels, the template or the tokenizer: an empty label, a label too long for the
    text context, a labels file that cannot be parsed."""


class ImageError(MapleError, ValueError):
    """An image that cannot be decoded or used. ``image`` names it: its path, or ``<bytes>`` /
    ``<pixels>`` for images given in memory."""

    def __init__(self, message: str, image: str | None = None) -> None:
        super().__init__(message)
        self.image = image

    def __reduce__(self) -> tuple[type[ImageError], tuple[str, str | None]]:
        return (type(self), (str(self), self.image))


class ConfigError(MapleError, ValueError):
    """A setting that cannot work (``precision="f16"`` on the CPU, no labels, ...)."""


class DeviceError(MapleError, RuntimeError):
    """The GPU could not be opened, or failed while running, under ``device="gpu"`` (under
    ``"auto"`` a failing GPU is replaced by the CPU instead)."""


class ComputeError(MapleError, RuntimeError):
    """The engine refused its input (a size that does not fit the model)."""


class MapleWarning(UserWarning):
    """Something that did not stop the call: an unwritable cache, a damaged cache file, a
    GPU fallback."""
