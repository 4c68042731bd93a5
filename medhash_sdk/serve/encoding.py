"""Images in the service: decode in the request's thread, run the model on micro-batches.

Decoding (OpenCV, pydicom) runs in the thread that serves the request, with the Encoder's
readers and limits. The decoded pixels then go to one batching thread that hands everything
queued at that moment (up to ``max_batch``) to one ``Encoder.analyze`` call: under load,
concurrent requests share model runs the way ``Encoder.encode`` batches files, and a lone
request waits for nobody (no timer). analyze() gives the attention map with the code, for the
heatmaps, at no extra cost.
"""
from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..exceptions import MedhashError
from ..readers import Image, read_bytes
from .groups import take_group

log = logging.getLogger("medhash.serve")

THUMBNAIL_SIDE = 256


@dataclass
class Encoded:
    code: np.ndarray          # uint8 (nbytes,)
    attention: np.ndarray     # float32 (h, w) over the padded square network input


class BatchAnalyzer:
    """One thread running Encoder.analyze on whatever decoded images are waiting."""

    def __init__(self, encoder: Any, max_batch: int = 32, on_batch: Any = None):
        self.encoder = encoder
        self.max_batch = int(max_batch)
        self.on_batch = on_batch      # (batch size, seconds) -> None, for metrics
        self._q: queue.Queue[tuple[np.ndarray, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="medhash-encoder", daemon=True)
        self._thread.start()

    def submit(self, pixels: np.ndarray) -> Future:
        f: Future = Future()
        self._q.put((pixels, f))
        return f

    def encode(self, pixels: np.ndarray) -> Encoded:
        return self.submit(pixels).result()

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(10)

    def _loop(self) -> None:
        import time

        while True:
            batch, stop = take_group(self._q, self.max_batch)
            if not batch:
                return
            t0 = time.perf_counter()
            self._run(batch)
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - t0)
            if stop:
                return

    def _run(self, batch: list[tuple[np.ndarray, Future]]) -> None:
        try:
            res = self.encoder.analyze([p for p, _ in batch], batch_size=len(batch), show_progress_bar=False)
        except Exception:  # noqa: BLE001 - find the input at fault: run them one by one
            if len(batch) > 1:
                for one in batch:
                    self._run([one])
                return
            _, f = batch[0]
            try:
                res = self.encoder.analyze([batch[0][0]], show_progress_bar=False)
            except Exception as e:  # noqa: BLE001
                f.set_exception(e)
                return
        for i, (_, f) in enumerate(batch):
            f.set_result(Encoded(res.codes[i].copy(), res.attention[i].copy()))


def decode(data: bytes, source: str, *, max_pixels: int, suffix: str = "") -> Image:
    """Bytes of an uploaded file -> Image (pixels + facts); ImageReadError says what is wrong."""
    return read_bytes(data, source, max_pixels=max_pixels, suffix=suffix)


def thumbnail(pixels: np.ndarray, side: int = THUMBNAIL_SIDE) -> bytes:
    """JPEG (quality 90) of the image with its longer side at most `side` pixels."""
    import cv2

    from ..preprocessing import to_unit_float

    f = to_unit_float(np.asarray(pixels))
    if f.ndim == 3:
        f = cv2.cvtColor(np.ascontiguousarray(f[:, :, :3]), cv2.COLOR_RGB2BGR)
    h, w = f.shape[:2]
    if max(h, w) > side:
        s = side / max(h, w)
        f = cv2.resize(f, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", np.clip(np.round(f * 255), 0, 255).astype(np.uint8),
                           [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise MedhashError("could not encode a thumbnail")
    return buf.tobytes()


def heatmap_png(thumb_jpeg: bytes, attention: np.ndarray, pad_to_square: bool) -> bytes:
    """PNG of the thumbnail with the attention heat blended in (medhash_sdk.overlay)."""
    import cv2

    from ..overlay import overlay

    img = cv2.imdecode(np.frombuffer(thumb_jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:  # pragma: no cover - thumbnails are written by thumbnail()
        raise MedhashError("stored thumbnail is unreadable")
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    rgb = overlay(img, attention, pad_to_square=pad_to_square, max_side=None)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover
        raise MedhashError("could not encode a heatmap")
    return buf.tobytes()


def pack_attention(att: np.ndarray) -> tuple[bytes, int, int]:
    a = np.asarray(att, dtype=np.float16)
    return a.tobytes(), int(a.shape[0]), int(a.shape[1])


def unpack_attention(blob: bytes, h: int, w: int) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float16).reshape(h, w).astype(np.float32)
