"""The one image -> tensor preprocessing, shared by training data loading and the Encoder.

Steps (driven by a Preprocessing spec that travels inside the model file):
1. intensity to float32 in [0, 1] (to_unit_float): uint8 / 255; other integer types (16-bit PNG,
   raw DICOM values without a window) min-max per image; float arrays already in [0, 1] kept,
   others min-max per image. DICOM windowing happens earlier, in the reader, which hands over
   floats in [0, 1].
2. channels: channels=1 converts RGB(A) to gray (ITU-R BT.601 weights); channels=3 repeats a
   gray image to RGB.
3. geometry: pad to a square with zeros (black, the background of a radiograph), centred, so
   non-square images keep their aspect ratio; then resize to input_size x input_size with the
   spec's interpolation (area averaging by default: the right filter for downsizing).
4. normalise: (x - mean) / std per channel.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np

_INTERPOLATIONS = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "nearest": cv2.INTER_NEAREST,
}


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input; stored in the model metadata."""

    input_size: int
    channels: int = 1
    interpolation: str = "area"
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    pad_to_square: bool = True
    version: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if int(self.input_size) < 8:
            raise ValueError(f"input_size must be >= 8 pixels, got {self.input_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {self.interpolation!r}")
        for name in ("mean", "std"):
            v = tuple(float(x) for x in getattr(self, name))
            if len(v) not in (1, self.channels):
                raise ValueError(f"{name} needs 1 or {self.channels} values, got {len(v)}")
            object.__setattr__(self, name, v)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for name in ("mean", "std"):
            if name in known:
                known[name] = tuple(known[name])
        return cls(**known)

    def canonical_json(self) -> str:
        """Stable serialisation, part of the model fingerprint."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """Map any supported pixel array to float32 in [0, 1] (see module docstring, step 1)."""
    a = np.asarray(image)
    if a.dtype == np.uint8:
        return a.astype(np.float32) * np.float32(1.0 / 255.0)
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating):
        f = a.astype(np.float32, copy=False)
        if not np.all(np.isfinite(f)):
            raise ValueError("image contains NaN or infinite values")
        if np.issubdtype(a.dtype, np.floating) and f.size and f.min() >= 0.0 and f.max() <= 1.0:
            return np.ascontiguousarray(f)
        lo, hi = (float(f.min()), float(f.max())) if f.size else (0.0, 0.0)
        if hi <= lo:
            return np.zeros_like(f, dtype=np.float32)
        return ((f - lo) * np.float32(1.0 / (hi - lo))).astype(np.float32)
    raise TypeError(f"unsupported pixel dtype {a.dtype}; use uint8, uint16, another integer type or float")


def _to_channels(f: np.ndarray, channels: int) -> np.ndarray:
    """HxW or HxWxC float image -> HxW (channels=1) or HxWx3 (channels=3)."""
    if f.ndim == 3 and f.shape[2] == 1:
        f = f[:, :, 0]
    if f.ndim == 2:
        return f if channels == 1 else np.repeat(f[:, :, None], 3, axis=2)
    if f.ndim == 3 and f.shape[2] in (3, 4):
        rgb = np.ascontiguousarray(f[:, :, :3])
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if channels == 1 else rgb
    raise ValueError(
        f"an image must be H x W (gray) or H x W x 3/4 (RGB/RGBA), got shape {f.shape}; "
        "pass a list of arrays for a batch"
    )


def _pad_square(f: np.ndarray) -> np.ndarray:
    h, w = f.shape[:2]
    if h == w:
        return f
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    return cv2.copyMakeBorder(f, top, s - h - top, left, s - w - left, cv2.BORDER_CONSTANT, value=0)


def preprocess(image: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """One image (H x W or H x W x 3, any supported dtype) -> float32 (C, S, S) network input."""
    a = np.asarray(image)
    if a.ndim not in (2, 3) or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"an image must be a non-empty H x W or H x W x 3 array, got shape {a.shape}")
    f = _to_channels(to_unit_float(a), spec.channels)
    if spec.pad_to_square:
        f = _pad_square(f)
    s = int(spec.input_size)
    if f.shape[0] != s or f.shape[1] != s:
        f = cv2.resize(f, (s, s), interpolation=_INTERPOLATIONS[spec.interpolation])
    if f.ndim == 2:
        f = f[None]
    else:
        f = np.transpose(f, (2, 0, 1))
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((f - mean) / std, dtype=np.float32)


def preprocess_batch(images: Sequence[np.ndarray], spec: Preprocessing) -> np.ndarray:
    """A sequence of images -> float32 (N, C, S, S)."""
    out = np.empty((len(images), spec.channels, spec.input_size, spec.input_size), dtype=np.float32)
    for i, im in enumerate(images):
        out[i] = preprocess(im, spec)
    return out
