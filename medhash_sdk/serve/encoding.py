"""Images in the service: a few decoding threads feed one model thread.

submit(prepare) runs ``prepare()`` (reading the upload, decoding it with the Encoder's readers
and limits, the model's preprocessing) in one of ``decode_threads`` long-lived threads, then
queues the network input for the model thread, which hands everything queued at that moment (up
to ``max_batch``) to one model run: under load, concurrent requests share model runs the way
``Encoder.encode`` batches files, and a lone request waits for nobody (no timer). While other
images are being decoded at that moment, the model thread waits for them up to ``gather_s``
(8 ms, about one 1024 x 1024 PNG's decode): runs of 1-2 images cost up to twice as much model
time an image as runs of 4-5. With 32 concurrent uploads on 2 cores that took the mean run from
1.5 to 3.7 images and the throughput up 5-7% (two networks: 2.0 to 4.7 images, +6-16%;
benchmarks/bench_serve.py, README "Service"). The model gives the attention map with the code,
for the heatmaps, at no extra cost.

Why a small pool and not the request's own thread: with 32 concurrent uploads on 2 cores, 32
threads each decoding, waiting for the model and waking again spent ~15% of the time with a
core idle (threads waiting for the GIL, woken tasks queued behind the other core);
a few threads that take the next upload as soon as they finish one keep the cores busy
(benchmarks/bench_serve.py; README, "Service").
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

import numpy as np

from ..codes import pack_codes
from ..exceptions import MedhashError
from ..readers import Image, read_bytes
from .groups import take_group

log = logging.getLogger("medhash.serve")

THUMBNAIL_SIDE = 256
T = TypeVar("T")


@dataclass
class Encoded(Generic[T]):
    code: np.ndarray          # uint8 (nbytes,)
    attention: np.ndarray     # float32 (h, w) over the padded square network input
    context: T                # what prepare() returned beside the network input


class EncodePipeline:
    """Decode threads -> one model thread: submit() returns a Future of Encoded (for blocking
    callers), encode_async() awaits it on an event loop (the results of one model run reach each
    loop in one call, not one wake-up per request).

    prepare() returns (network input float32 (C, S, S), context). An exception it raises is the
    caller's; a model failure is retried image by image, so only the input at fault fails.
    """

    def __init__(self, encoder: Any, *, decode_threads: int, max_batch: int = 32, gather_s: float = 0.008,
                 on_batch: Callable[[int, float], None] | None = None):
        self.encoder = encoder
        self.max_batch = int(max_batch)
        self.on_batch = on_batch      # (batch size, seconds) -> None, for metrics
        self._decoders = cf.ThreadPoolExecutor(int(decode_threads), thread_name_prefix="medhash-decode")
        self._decoding = 0                # images a decode thread is working on now
        self._decoding_lock = threading.Lock()
        self.gather_s = float(gather_s)
        self._q: queue.Queue[tuple[np.ndarray, Any, Any] | None] = queue.Queue()   # future: concurrent or asyncio
        self._model = threading.Thread(target=self._loop, name="medhash-model", daemon=True)
        self._model.start()

    def submit(self, prepare: Callable[[], tuple[np.ndarray, T]]) -> cf.Future[Encoded[T]]:
        out: cf.Future[Encoded[T]] = cf.Future()
        self._decoders.submit(self._prepare, prepare, out)
        return out

    async def encode_async(self, prepare: Callable[[], tuple[np.ndarray, T]]) -> Encoded[T]:
        out: asyncio.Future[Encoded[T]] = asyncio.get_running_loop().create_future()
        self._decoders.submit(self._prepare, prepare, out)
        return await out

    def _prepare(self, prepare: Callable[[], tuple[np.ndarray, T]], out: Any) -> None:
        with self._decoding_lock:
            self._decoding += 1
        try:
            x, context = prepare()
        except BaseException as e:  # noqa: BLE001 - the caller's to raise
            _settle_all([(out, None, e)])
        else:
            self._q.put((x, context, out))
        finally:   # after the put: a model thread waiting for this image sees it arrive
            with self._decoding_lock:
                self._decoding -= 1

    def close(self) -> None:
        """Finish what was submitted (every caller gets its answer), then stop the threads."""
        self._decoders.shutdown(wait=True)
        self._q.put(None)
        self._model.join(10)

    def _loop(self) -> None:
        while True:
            batch, stop = take_group(self._q, self.max_batch, wait_s=self.gather_s,
                                     coming=lambda: self._decoding > 0)
            if batch:
                t0 = time.perf_counter()
                self._run(batch)
                if self.on_batch is not None:
                    self.on_batch(len(batch), time.perf_counter() - t0)
            if stop:
                return

    def _run(self, batch: list[tuple[np.ndarray, Any, Any]]) -> None:
        try:
            out = self.encoder.outputs_preprocessed(np.stack([x for x, _, _ in batch]))
        except Exception as e:  # noqa: BLE001 - find the input at fault: run them one by one
            if len(batch) > 1:
                for one in batch:
                    self._run([one])
            else:
                _settle_all([(batch[0][2], None, e)])
            return
        codes = pack_codes(out["code_logits"])
        att = out["attention"]
        att = att.reshape(att.shape[0], att.shape[-2], att.shape[-1])
        _settle_all([(f, Encoded(codes[i].copy(), att[i].astype(np.float32), context), None)
                     for i, (_, context, f) in enumerate(batch)])


def _settle_all(results: list[tuple[Any, Any, BaseException | None]]) -> None:
    """Resolve futures from a pipeline thread: concurrent ones here, asyncio ones with one
    call_soon_threadsafe per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any, BaseException | None]]] = {}
    for r in results:
        if isinstance(r[0], asyncio.Future):
            by_loop.setdefault(r[0].get_loop(), []).append(r)
        else:
            _settle([r])
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, items)
        except RuntimeError:   # the loop is closed: nobody waits for these any more
            pass


def _settle(results: list[tuple[Any, Any, BaseException | None]]) -> None:
    for future, value, error in results:
        if future.done():      # cancelled: the client went away
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


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
