"""Heatmap overlay of a model's attention map on the image: why a case matched.

The attention map covers the network input, i.e. the image padded to a square (centred) and
resized; it is mapped back by resizing to the padded square and cropping the padding, so the
heat lands on the same anatomy the network looked at, whatever the aspect ratio.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .atomic import atomic_write
from .preprocessing import to_unit_float

_COLORMAPS = {"jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "inferno": cv2.COLORMAP_INFERNO,
              "viridis": cv2.COLORMAP_VIRIDIS, "hot": cv2.COLORMAP_HOT}


def attention_on_image(attention: np.ndarray, height: int, width: int, pad_to_square: bool = True) -> np.ndarray:
    """Attention (h, w) or (1, h, w) over the network input -> float32 (height, width) in [0, 1]."""
    a = np.asarray(attention, dtype=np.float32)
    a = a.reshape(a.shape[-2], a.shape[-1]) if a.ndim == 3 and a.shape[0] == 1 else a
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"attention must be a 2-D map (h, w), got shape {np.shape(attention)}")
    if not np.all(np.isfinite(a)):
        raise ValueError("attention map contains NaN or infinite values")
    if pad_to_square:
        s = max(height, width)
        big = cv2.resize(a, (s, s), interpolation=cv2.INTER_LINEAR)
        top, left = (s - height) // 2, (s - width) // 2
        big = big[top:top + height, left:left + width]
    else:
        big = cv2.resize(a, (width, height), interpolation=cv2.INTER_LINEAR)
    lo, hi = float(big.min()), float(big.max())
    return np.zeros_like(big) if hi <= lo else (big - lo) / (hi - lo)


def overlay(image: np.ndarray, attention: np.ndarray, *, alpha: float = 0.5, colormap: str = "jet",
            pad_to_square: bool = True, max_side: int | None = 1024) -> np.ndarray:
    """uint8 RGB (H, W, 3): the image in grey (or colour) with the attention heat blended in.

    Heat is blended in proportion to attention (alpha * a), so unattended regions stay readable.
    max_side: downsize large images (keeping the aspect ratio) before drawing; None keeps the size.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if colormap not in _COLORMAPS:
        raise ValueError(f"colormap must be one of {sorted(_COLORMAPS)}, got {colormap!r}")
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise ValueError(f"image must be H x W or H x W x 3, got shape {img.shape}")
    f = to_unit_float(img)
    rgb = np.repeat(f[:, :, None], 3, axis=2) if f.ndim == 2 else np.ascontiguousarray(f[:, :, :3])
    h, w = rgb.shape[:2]
    if max_side is not None and max(h, w) > int(max_side):
        scale = int(max_side) / max(h, w)
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    a = attention_on_image(attention, h, w, pad_to_square)
    heat_bgr = cv2.applyColorMap(np.round(a * 255).astype(np.uint8), _COLORMAPS[colormap])
    heat = cv2.cvtColor(heat_bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    weight = (float(alpha) * a)[:, :, None]
    out = (1.0 - weight) * rgb + weight * heat
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def save_overlay(path: str | os.PathLike, image: np.ndarray, attention: np.ndarray, **kwargs: Any) -> Path:
    """Write overlay(image, attention) as a PNG (atomically: temporary file, then rename)."""
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise ValueError(f"overlay files are PNG: give a path ending in .png, got {out.name!r}")
    rgb = overlay(image, attention, **kwargs)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
        raise OSError(f"could not encode {out} as PNG")
    atomic_write(out, buf.tobytes())
    return out


def explain(encoder: Any, source: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Analyze one input with ``encoder`` and write its attention overlay PNG to ``path``.

    The image drawn is the one the model saw before resizing (DICOM after windowing).
    """
    img = encoder.loader().read(source)
    res = encoder.analyze([img.pixels])
    return save_overlay(path, img.pixels, res.attention[0],
                        pad_to_square=encoder.card.preprocessing.pad_to_square, **kwargs)
