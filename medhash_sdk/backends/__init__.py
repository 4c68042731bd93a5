"""Inference backends, chosen by the model file: ONNX Runtime (.onnx) or TensorRT (.engine/.plan).

A backend is built from a model file and exposes what the Encoder needs, read from the file
itself (no side config): the ModelCard, the provider that actually runs, the input shape and
``run(batch) -> {output name: array}``, which is safe to call from several threads at once.
Heavy libraries (onnxruntime, tensorrt) are imported only when a backend is opened.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, Sequence, Union

import numpy as np

from ..exceptions import ModelFileError
from ..model_card import ModelCard

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
#: Magic bytes that open a medhash TensorRT engine file (see backends.tensorrt).
ENGINE_MAGIC = b"MEDHASH-TRT\x00"

Providers = Union[str, Sequence[Union[str, tuple[str, dict[str, Any]]]]]


class Backend(Protocol):
    """What the Encoder runs on."""

    card: ModelCard
    provider: str
    #: Input shape (batch, channels, size, size); batch is None when the model accepts any.
    input_shape: tuple[int | None, int, int, int]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """float32 (n, C, S, S) -> the model's outputs by name. Thread-safe."""
        ...


def is_engine_file(path: str | os.PathLike) -> bool:
    """True for a medhash TensorRT engine (by suffix, or by its magic bytes)."""
    p = Path(path)
    if p.suffix.lower() in ENGINE_SUFFIXES:
        return True
    try:
        with open(p, "rb") as f:
            return f.read(len(ENGINE_MAGIC)) == ENGINE_MAGIC
    except OSError:
        return False


def open_backend(path: str | os.PathLike, providers: Providers = "auto", *, threads: int | None = None) -> Backend:
    """Open a model file with the backend its type calls for."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{os.fspath(path)}: model file not found")
    if is_engine_file(p):
        if providers not in ("auto", "tensorrt"):
            raise ValueError(f"{p} is a TensorRT engine: providers must be 'auto' or 'tensorrt', got {providers!r}")
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(p)
    from .onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(p, providers, threads=threads)
