"""Contact sheets: a query and its matches side by side, each with its attention heatmap overlay,
Hamming distance and labels, in one PNG (what `medhash search --explain` and the demo write).

Every image is read by the Encoder's own reader (DICOM after windowing), so the tiles show
what the model saw; the heat is medhash_sdk.overlay's. A match whose file cannot be read
(moved, deleted) gets a grey tile saying so instead of stopping the sheet.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from .exceptions import MedhashError
from .overlay import overlay

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_LINE = 17          # caption line height in pixels
_QUERY_BORDER = (220, 40, 40)   # RGB
_BG = (255, 255, 255)


@dataclass
class Match:
    """One search result to draw: its id, distance, image file (None if unknown) and labels."""

    id: str
    distance: int
    source: str | None = None
    labels: str = ""


def describe_labels(columns: Sequence[str], values: Sequence[str]) -> str:
    """Label values of one item as text: flag columns (0/1) by the names set, others as name=value.

    All flags unset reads "No Finding" (the NIH convention); no label columns reads "".
    """
    names = []
    flags = 0
    for col, v in zip(columns, values):
        v = str(v).strip()
        low = v.lower()
        if low in ("1", "1.0", "true", "yes"):
            names.append(col)
        elif low in ("0", "0.0", "false", "no", ""):
            flags += 1
        else:
            names.append(f"{col}={v}")
    if names:
        return ", ".join(names)
    return "No Finding" if flags else ""


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


def _fit(text: str, width: int, scale: float) -> str:
    """Cut text with '...' so that it fits in width pixels."""
    text = _ascii(text)
    if cv2.getTextSize(text, _FONT, scale, 1)[0][0] <= width:
        return text
    while text and cv2.getTextSize(text + "...", _FONT, scale, 1)[0][0] > width:
        text = text[:-1]
    return text + "..."


def _tile(rgb: np.ndarray | None, size: int, lines: Sequence[str], n_lines: int, border: tuple[int, int, int] | None,
          note: str = "") -> np.ndarray:
    """A size x size image (letterboxed) above n_lines caption lines."""
    pad = 4
    t = np.full((size + n_lines * _LINE + 2 * pad, size, 3), _BG, dtype=np.uint8)
    if rgb is None:
        t[:size] = 200
        cv2.putText(t, _fit(note or "image not available", size - 8, 0.45), (4, size // 2), _FONT, 0.45,
                    (60, 60, 60), 1, cv2.LINE_AA)
    else:
        h, w = rgb.shape[:2]
        s = size / max(h, w)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
        top, left = (size - nh) // 2, (size - nw) // 2
        t[:size] = 0
        t[top:top + nh, left:left + nw] = small
    for i, line in enumerate(lines[:n_lines]):
        y = size + pad + (i + 1) * _LINE - 4
        cv2.putText(t, _fit(line, size - 6, 0.42), (3, y), _FONT, 0.42, (20, 20, 20), 1, cv2.LINE_AA)
    if border is not None:
        cv2.rectangle(t, (0, 0), (size - 1, size - 1), border, 4)
    return t


def render(tiles: Sequence[np.ndarray], columns: int, gap: int = 8) -> np.ndarray:
    """Tiles of one size -> one RGB grid with gaps."""
    th, tw = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * th + (rows + 1) * gap, columns * tw + (columns + 1) * gap, 3), _BG, dtype=np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, columns)
        y, x = gap + r * (th + gap), gap + c * (tw + gap)
        sheet[y:y + th, x:x + tw] = t
    return sheet


def write_png(path: str | os.PathLike[str], rgb: np.ndarray) -> Path:
    """Write an RGB uint8 image as PNG atomically."""
    from .atomic import atomic_write

    out = Path(path)
    if out.suffix.lower() != ".png":
        raise ValueError(f"contact sheets are PNG: give a path ending in .png, got {out.name!r}")
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
        raise OSError(f"could not encode {out} as PNG")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(out), buf.tobytes())
    return out


def contact_sheet(encoder: Any, query: Any, matches: Sequence[Match], path: str | os.PathLike[str], *,
                  query_name: str | None = None, query_labels: str = "", tile: int = 256,
                  columns: int = 6, top_predictions: int = 2) -> Path:
    """Draw the query (red frame) and its matches with attention overlays; write a PNG to path.

    query: a path or an array, as for Encoder.analyze. Query captions show query_labels when
    known, and the model's most probable labels; match captions show rank, distance, id and
    labels. Returns the path written.
    """
    if tile < 64:
        raise ValueError(f"tile must be >= 64 pixels, got {tile}")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    loader = encoder.loader()
    pixels: list[np.ndarray] = []
    readable: list[int] = []
    notes: dict[int, str] = {}
    sources: list[Any] = [query] + [m.source for m in matches]
    for k, src in enumerate(sources):
        if src is None:
            notes[k] = "image not available"
            continue
        try:
            pixels.append(loader.read(src).pixels)
            readable.append(k)
        except MedhashError as e:
            if k == 0:
                raise
            notes[k] = getattr(e, "reason", str(e))
    res = encoder.analyze(pixels, show_progress_bar=False)
    pad = bool(encoder.card.preprocessing.pad_to_square)
    shown = {k: overlay(pixels[j], res.attention[j], pad_to_square=pad, max_side=2 * tile)
             for j, k in enumerate(readable)}
    qname = query_name or (os.path.basename(os.fspath(query)) if isinstance(query, (str, os.PathLike)) else "query")
    qlines = ["QUERY", qname]
    if query_labels:
        qlines.append(query_labels)
    elif top_predictions:
        qlines.append("model: " + ", ".join(f"{n} {p:.2f}" for n, p in res.top_labels(0, top_predictions)))
    n_lines = 3
    tiles = [_tile(shown.get(0), tile, qlines, n_lines, _QUERY_BORDER)]
    for k, m in enumerate(matches, start=1):
        lines = [f"#{k}  distance {m.distance}", str(m.id), m.labels or "labels unknown"]
        tiles.append(_tile(shown.get(k), tile, lines, n_lines, None, notes.get(k, "")))
    return write_png(path, render(tiles, min(columns, len(tiles))))
