"""Encoder: images (paths, arrays, or a mix) -> packed binary codes, without torch.

read (medhash_sdk.readers) -> preprocess (medhash_sdk.preprocessing, driven by the model card)
-> backend (ONNX Runtime or TensorRT) -> sign -> pack (medhash_sdk.codes.pack_codes).

Decoding and inference overlap: medhash_sdk.pipeline decodes and preprocesses the next
inputs in a thread pool while the model runs the current batch (OpenCV, NumPy and ONNX
Runtime release the GIL). One Encoder
may be used from several threads at once: it holds no per-call state, and ONNX Runtime
sessions are thread-safe, so concurrent calls return the same codes as serial ones.
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ._system import available_cpus
from .codes import pack_codes
from .exceptions import ModelFileError, UnsupportedImageError
from .model_card import ModelCard
from .pipeline import decode_ahead, progress_bar, raise_first_error
from .preprocessing import Preprocessing, preprocess
from .readers import MAX_BYTES, MAX_PIXELS, Image, ImageInput, load
from .validation import check_int, check_optional_int

#: File name of the default model inside medhash_sdk/assets (added once a trained model exists).
DEFAULT_MODEL = "chestxr64.onnx"
ASSETS = Path(__file__).resolve().parent / "assets"

#: Batches decoded ahead of the one the model runs on (the decode window, in batches).
PREFETCH = 2

def default_model_path() -> Path:
    """Path of the bundled model, or ModelFileError when this installation has none."""
    p = ASSETS / DEFAULT_MODEL
    if not p.is_file():
        raise ModelFileError(
            f"no trained default model is bundled with this installation of medhash-sdk ({p} is missing); "
            "pass a model file instead: Encoder('model.onnx') (make one with `medhash train` and "
            "`medhash export CHECKPOINT --out model.onnx`)")
    return p


def notes_for(facts: dict[str, Any], problems: list[str]) -> list[str]:
    notes = [p + "; encoded anyway (strict=False)" for p in problems]
    if facts.get("format") != "dicom":
        notes.append("not DICOM: modality and body part unknown")
    elif not (facts.get("body_part") or facts.get("anatomic_region")):
        notes.append("body part not stated in the file")
    if facts.get("frames", 1) > 1:
        notes.append(f"multi-frame file: frame {facts.get('frame', 0)} of {facts['frames']} encoded")
    return notes


@dataclass(frozen=True)
class Loader:
    """Decode + preprocess one input; picklable (process pools for decoders that hold the GIL)."""

    spec: Preprocessing
    max_pixels: int = MAX_PIXELS
    max_bytes: int = MAX_BYTES
    frame: int = 0

    def read(self, item: ImageInput, name: str | None = None) -> Image:
        return load(item, max_pixels=self.max_pixels, max_bytes=self.max_bytes, frame=self.frame, name=name)

    def __call__(self, item: ImageInput) -> np.ndarray:
        """One input -> float32 (C, S, S) network input."""
        return preprocess(self.read(item).pixels, self.spec)


@dataclass
class Analysis:
    """What analyze() returns, one row per input, in input order."""

    codes: np.ndarray                 # uint8 (n, nbits // 8)
    probabilities: np.ndarray         # float32 (n, n_labels), independent sigmoids
    attention: np.ndarray             # float32 (n, h, w) over the padded square network input
    labels: list[str]
    sources: list[str]
    facts: list[dict[str, Any]]       # format, modality, body part, view, frames... (no patient fields)
    notes: list[list[str]] = field(default_factory=list)   # why an input may be outside the model's scope

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def top_labels(self, i: int, k: int = 3) -> list[tuple[str, float]]:
        """The k most probable labels of input i."""
        order = np.argsort(-self.probabilities[i], kind="stable")[:k]
        return [(self.labels[j], float(self.probabilities[i, j])) for j in order]


def _as_list(inputs: Any) -> list[Any]:
    if isinstance(inputs, (str, os.PathLike, np.ndarray, bytes, bytearray)):
        return [inputs]
    if isinstance(inputs, dict):
        raise TypeError("inputs must be a path, an array, or a list of them, not a dict")
    if isinstance(inputs, Iterable):
        return list(inputs)
    raise TypeError(f"inputs must be a path, a numpy array, or a list of them, got {type(inputs).__name__}")


class Encoder:
    """Turn medical images into packed binary codes with an exported medhash model.

    model: an ONNX file or a TensorRT engine (.engine) made by `medhash engine`; None uses the
    bundled default model. providers: 'auto' (TensorRT EP, CUDA EP, then CPU), 'cpu', 'cuda',
    'tensorrt', or an ONNX Runtime provider list. threads: ONNX Runtime intra-op threads;
    workers: decode threads (both default to the CPUs this process may use). max_pixels /
    max_bytes: untrusted-file limits checked before decoding. frame: which frame of a
    multi-frame DICOM file is encoded (default the first).
    """

    def __init__(self, model: str | os.PathLike | None = None, providers: Any = "auto", *,
                 threads: int | None = None, workers: int | None = None,
                 max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES, frame: int = 0):
        from .backends import open_backend

        if model is None:
            model = default_model_path()
        elif not isinstance(model, (str, os.PathLike)):
            raise TypeError(f"model must be a path to an .onnx or .engine file, got {type(model).__name__}")
        workers = check_optional_int("workers", workers)
        max_pixels, max_bytes = check_int("max_pixels", max_pixels), check_int("max_bytes", max_bytes)
        frame = check_int("frame", frame, minimum=0)
        self.model_path = os.fspath(model)
        self._backend = open_backend(model, providers, threads=threads)
        self.card: ModelCard = self._backend.card
        self._loader = Loader(self.card.preprocessing, max_pixels, max_bytes, frame)
        self._workers = workers or available_cpus()

    # ------------------------------------------------------------ what the model is
    @property
    def nbits(self) -> int:
        return int(self.card.nbits)

    @property
    def input_size(self) -> int:
        return int(self.card.input_size)

    @property
    def labels(self) -> list[str]:
        return list(self.card.labels)

    @property
    def fingerprint(self) -> str:
        return self.card.fingerprint

    @property
    def provider(self) -> str:
        """The execution provider that actually runs (e.g. CPUExecutionProvider, TensorRT)."""
        return self._backend.provider

    @property
    def precision(self) -> str:
        return self.card.precision

    def __repr__(self) -> str:
        return (f"Encoder({self.model_path!r}, nbits={self.nbits}, input_size={self.input_size}, "
                f"provider={self.provider!r}, fingerprint={self.fingerprint[:12]!r})")

    def loader(self) -> Loader:
        """The picklable decode + preprocess step (path or array -> float32 (C, S, S))."""
        return self._loader

    # ------------------------------------------------------------ inference
    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run the backend on (n, C, S, S), splitting/padding for models with a fixed batch size."""
        fixed = self._backend.input_shape[0]
        if fixed is None or x.shape[0] == fixed:
            out = self._backend.run(x)
        else:
            parts = []
            for s in range(0, x.shape[0], fixed):
                chunk = x[s:s + fixed]
                n = chunk.shape[0]
                if n < fixed:
                    chunk = np.concatenate([chunk, np.zeros((fixed - n,) + chunk.shape[1:], chunk.dtype)])
                parts.append({k: v[:n] for k, v in self._backend.run(chunk).items()})
            out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        logits = out["code_logits"]
        if logits.ndim != 2 or logits.shape != (x.shape[0], self.nbits):
            raise ModelFileError(f"{self.model_path}: code_logits has shape {logits.shape}, "
                                 f"expected ({x.shape[0]}, {self.nbits}) from the model card")
        return out

    def _check_preprocessed(self, batch: np.ndarray) -> np.ndarray:
        x = np.asarray(batch, dtype=np.float32)
        want = (self.card.channels, self.input_size, self.input_size)
        if x.ndim != 4 or x.shape[1:] != want:
            raise ValueError(f"preprocessed batch must have shape (n, {want[0]}, {want[1]}, {want[2]}), got {x.shape}")
        return x

    def encode_preprocessed(self, batch: np.ndarray) -> np.ndarray:
        """Already preprocessed float32 (n, C, S, S) -> uint8 codes (n, nbits // 8)."""
        x = self._check_preprocessed(batch)
        if x.shape[0] == 0:
            return np.zeros((0, self.nbits // 8), dtype=np.uint8)
        return pack_codes(self._run(x)["code_logits"])

    def outputs_preprocessed(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Already preprocessed float32 (n >= 1, C, S, S) -> the network's raw outputs by name:
        code_logits (n, nbits), probabilities (n, labels), attention (n, 1, h, w)."""
        x = self._check_preprocessed(batch)
        if x.shape[0] == 0:
            raise ValueError("outputs_preprocessed needs at least one image")
        return self._run(x)

    # ------------------------------------------------------------ pipelined decoding
    def _prepare(self, numbered: tuple[int, Any], strict: bool) -> tuple[np.ndarray, dict[str, Any], list[str]]:
        i, item = numbered
        img = self._loader.read(item, name=f"input #{i} (array)")
        problems = self.card.scope_problems(img.facts)
        if strict and problems:
            raise UnsupportedImageError(img.source, "strict=True refuses it: " + "; ".join(problems))
        return preprocess(img.pixels, self._loader.spec), img.facts, notes_for(img.facts, problems)

    def _loop(self, inputs: Any, batch_size: int, show_progress_bar: bool | None, desc: str, strict: bool,
              on_batch: Callable[[dict[str, np.ndarray], list[dict[str, Any]], list[list[str]]], None]) -> int:
        """Decode ahead (medhash_sdk.pipeline), run the model batch by batch, raise the first bad input."""
        items = _as_list(inputs)
        batch_size = check_int("batch_size", batch_size)
        stream = decode_ahead(list(enumerate(items)), functools.partial(self._prepare, strict=strict),
                              workers=self._workers, window=PREFETCH * batch_size + self._workers)
        batch: list[tuple[np.ndarray, dict[str, Any], list[str]]] = []

        def flush() -> None:
            xs, facts, notes = zip(*batch)
            on_batch(self._run(np.stack(xs)), list(facts), list(notes))
            bar.update(len(batch))
            batch.clear()

        with progress_bar(len(items), show=show_progress_bar, desc=desc) as bar, contextlib.closing(stream):
            for d in raise_first_error(stream):
                batch.append(d.value)
                if len(batch) == batch_size:
                    flush()
            if batch:
                flush()
        return len(items)

    # ------------------------------------------------------------ public API
    def encode(self, inputs: Any, batch_size: int = 64, show_progress_bar: bool | None = None) -> np.ndarray:
        """Images -> packed codes, uint8 (n, nbits // 8), in input order.

        inputs: a path (PNG, JPEG, TIFF 8/16 bit, DICOM), one numpy array (H x W gray or
        H x W x 3 RGB; uint8, uint16, other integers or float), or a list mixing them (a batch).
        A bad file raises ImageReadError naming it. show_progress_bar: None shows a bar on a
        terminal for more than one input.
        """
        chunks: list[np.ndarray] = []
        self._loop(inputs, batch_size, show_progress_bar, "encode", False,
                   lambda out, facts, notes: chunks.append(pack_codes(out["code_logits"])))
        if not chunks:
            return np.zeros((0, self.nbits // 8), dtype=np.uint8)
        return np.concatenate(chunks)

    def analyze(self, inputs: Any, batch_size: int = 64, show_progress_bar: bool | None = None, *,
                strict: bool = False) -> Analysis:
        """Codes plus label probabilities, attention maps and the DICOM facts of each input.

        strict=True refuses (UnsupportedImageError) DICOM inputs outside the scope written in
        the model's card (ModelCard.scope: for the bundled model, CR/DX chest radiographs).
        strict=False encodes them and says so in ``notes``. Non-DICOM inputs carry no such
        facts and are accepted.
        """
        codes: list[np.ndarray] = []
        probs: list[np.ndarray] = []
        atts: list[np.ndarray] = []
        all_facts: list[dict[str, Any]] = []
        all_notes: list[list[str]] = []

        def on_batch(out: dict[str, np.ndarray], facts: list[dict[str, Any]], notes: list[list[str]]) -> None:
            codes.append(pack_codes(out["code_logits"]))
            probs.append(out["probabilities"])
            a = out["attention"]
            atts.append(a.reshape(a.shape[0], a.shape[-2], a.shape[-1]))
            all_facts.extend(facts)
            all_notes.extend(notes)

        items = _as_list(inputs)
        self._loop(items, batch_size, show_progress_bar, "analyze", strict, on_batch)
        sources = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else f"input #{i} (array)"
                   for i, x in enumerate(items)]
        if not codes:
            return Analysis(np.zeros((0, self.nbits // 8), np.uint8), np.zeros((0, len(self.labels)), np.float32),
                            np.zeros((0, 0, 0), np.float32), self.labels, [], [], [])
        return Analysis(np.concatenate(codes), np.concatenate(probs).astype(np.float32),
                        np.concatenate(atts).astype(np.float32), self.labels, sources, all_facts, all_notes)
