"""Domain exceptions: bad files and mismatched models. Bad arguments raise ValueError/TypeError."""
from __future__ import annotations


class MedhashError(Exception):
    """Base class of every error medhash-sdk raises about data (not about arguments)."""


class IndexFileError(MedhashError):
    """An index file is truncated, damaged, of an unknown format, or not an index at all."""


class ModelMismatchError(MedhashError):
    """Codes, indexes or shards made by two different models were about to be mixed."""


class ModelFileError(MedhashError):
    """A model file (ONNX or TensorRT engine) is missing, unreadable or lacks medhash metadata."""


class ImageReadError(MedhashError):
    """An input image could not be read; names the input and the reason."""

    def __init__(self, source: object, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:   # crosses process pools whole
        return type(self), (self.source, self.reason)


class UnsupportedImageError(ImageReadError):
    """The input is a valid file the SDK will not encode (unsupported syntax, refused by strict=True, too large)."""
