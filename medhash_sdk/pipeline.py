"""Decode ahead of the model: the one pipeline under every encoding path.

Encoder.encode / analyze, bulk encoding (`medhash encode`, the Ray actors), `medhash search`,
quantisation calibration and training-data loading all read and preprocess their inputs
through decode_ahead(): worker pools decode the next inputs while the caller runs the model
on the current batch (OpenCV, NumPy and ONNX Runtime release the GIL), results come back in
input order, and at most `window` inputs are in flight, so memory stays bounded whatever the
number of inputs. encode_groups() adds batching and inference for callers that keep going
past unreadable inputs (bulk jobs, search); Encoder batches itself and raises instead.

Pools, per input kind: images (PNG/JPEG/TIFF, arrays) are decoded in threads; DICOM files in
processes when the mode is "auto", since pydicom's pure-Python parsing holds the GIL. A run
without DICOM starts no process at all.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import multiprocessing
import os
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from ._system import available_cpus
from .exceptions import ImageReadError, MedhashError
from .validation import check_choice, check_int

T = TypeVar("T")
K = TypeVar("K")

POOL_MODES = ("auto", "thread", "process")


class DecodePools:
    """Worker pools for decoding: threads, and processes for DICOM in mode "auto".

    mode: "auto" (threads for images, processes for DICOM), "thread" or "process" (every
    input). Each pool has `workers` workers and starts on first use; close() (or a with block)
    shuts them down. One DecodePools may serve many decode_ahead() calls (a Ray actor keeps
    its pools across shards).
    """

    def __init__(self, workers: int, mode: str = "auto"):
        self.workers = check_int("workers", workers)
        self.mode = check_choice("pool", mode, POOL_MODES)
        self._threads: cf.ThreadPoolExecutor | None = None
        self._procs: cf.ProcessPoolExecutor | None = None

    def in_processes(self, kind: str) -> bool:
        """Whether inputs of this kind are decoded in the process pool."""
        return self.mode == "process" or (self.mode == "auto" and kind == "dicom")

    def restart_processes(self) -> None:
        """Drop a process pool that a dying worker broke; the next submit starts a new one."""
        if self._procs is not None:
            _stop_broken_pool(self._procs)
        self._procs = None

    def submit(self, fn: Callable[[Any], Any], arg: Any, kind: str = "image") -> cf.Future:
        """Run fn(arg) in the pool for this kind of input ("dicom" or anything else)."""
        if self.in_processes(kind):
            if self._procs is None:
                self._procs = cf.ProcessPoolExecutor(self.workers, mp_context=process_context())
                # CPython >= 3.11 starts forkserver / spawn workers on demand, inside submit(): one
                # started while a dead worker is breaking the pool can be handed a queue the pool
                # is closing, which kills the fork server (every later pool then fails). All
                # workers start with the first submit instead (as for fork), none later.
                if hasattr(self._procs, "_safe_to_dynamically_spawn_children"):
                    self._procs._safe_to_dynamically_spawn_children = False
            try:
                return self._procs.submit(fn, arg)
            except (BrokenProcessPool, OSError) as e:
                # broken by an input still in flight (starting a worker can then meet its closed
                # queue: OSError): decode_ahead sorts it out when this input reaches the head
                if not isinstance(e, BrokenProcessPool) and not getattr(self._procs, "_broken", False):
                    raise
                lost: cf.Future = cf.Future()
                lost.set_exception(BrokenProcessPool(str(e)))
                return lost
        if self._threads is None:
            self._threads = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="medhash-decode")
        return self._threads.submit(fn, arg)

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)
        if self._procs is not None:
            if getattr(self._procs, "_broken", False):
                _stop_broken_pool(self._procs)
            else:
                self._procs.shutdown(wait=True, cancel_futures=True)
        self._threads = self._procs = None

    def __enter__(self) -> "DecodePools":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stop_broken_pool(pool: cf.ProcessPoolExecutor, timeout: float = 10.0) -> None:
    """Shut down a pool a dead worker broke, without hanging.

    Its manager thread terminates the workers and joins them; but a worker that a submit()
    started while the pool was breaking can miss both and block that join, and so interpreter
    exit, for ever. DecodePools.submit stops CPython >= 3.11 from starting workers late;
    Python 3.10 still does, so such stragglers are killed until the manager thread is done.
    """
    manager = getattr(pool, "_executor_manager_thread", None)   # shutdown() forgets both
    workers = getattr(pool, "_processes", None) or {}
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + timeout
    while manager is not None and manager.is_alive() and time.monotonic() < deadline:
        for proc in list(workers.values()):
            if proc.is_alive():
                proc.kill()
        manager.join(0.05)


def process_context() -> Any:
    """forkserver where there is one, else spawn; never plain fork.

    The parent runs ONNX Runtime threads, and forking a threaded process can deadlock the
    child. The fork server is a fresh single-threaded interpreter that imports the decoders
    once; each worker forks from it instead of starting and importing from scratch (spawn).
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["numpy", "cv2", "pydicom", "medhash_sdk.readers", "medhash_sdk.encoder",
                                "medhash_sdk.pipeline"])
    return ctx


@dataclass(frozen=True)
class Decoded(Generic[T]):
    """One input after decoding: its value, or the exception that stopped it."""

    item: T
    value: Any = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def reason(self) -> str:
        """Why the input failed, in one line (empty when it did not)."""
        if self.error is None:
            return ""
        return getattr(self.error, "reason", None) or f"{type(self.error).__name__}: {self.error}"


def decode_ahead(items: Iterable[T], load: Callable[[Any], Any], *, workers: int | None = None,
                 pool: str | DecodePools = "thread", kind: Callable[[T], str] | None = None,
                 arg: Callable[[T], Any] | None = None, window: int | None = None) -> Iterator[Decoded[T]]:
    """Yield Decoded(item, load(arg(item))) for every item, in order, decoding ahead in a pool.

    workers: pool size (default: the cores this process may use); 1, or a single input,
    decodes inline without a pool. pool: a mode ("thread", "process", "auto") for pools that
    live as long as this generator, or a DecodePools to reuse (not closed here; its size
    wins). kind(item): "dicom" sends the item to the process pool in mode "auto". arg(item):
    what load receives (default the item itself; a picklable value for process pools).
    window: inputs in flight at most (default 4 x workers). A failing load() becomes
    Decoded.error; the caller decides whether to raise it or go on.

    A decode process that dies (a native decoder crashing on a damaged file, or the kernel's
    out-of-memory killer) breaks the whole process pool, and every input in flight with it.
    The pool is restarted and the input at the head is decoded again on its own: if its
    process dies again, that input is the one (ImageReadError for it, and the job goes on);
    otherwise the inputs behind it are sent again, until the one that kills is at the head.
    """
    arg = arg or (lambda item: item)
    kind = kind or (lambda item: "image")
    own = not isinstance(pool, DecodePools)
    if own:
        workers = available_cpus() if workers is None else check_int("workers", workers)
        check_choice("pool", pool, POOL_MODES)
        inline = workers == 1 or (isinstance(items, Sequence) and len(items) <= 1)
        if inline and pool != "process":
            for item in items:
                yield _run_inline(load, arg, item)
            return
    pools = DecodePools(workers or 1, pool) if own else pool   # type: ignore[arg-type]
    window = check_int("window", window) if window is not None else 4 * pools.workers
    stream = iter(items)
    pending: collections.deque[tuple[T, cf.Future]] = collections.deque()
    try:
        def refill() -> None:
            while len(pending) < window:
                nxt = next(stream, _END)
                if nxt is _END:
                    return
                pending.append((nxt, pools.submit(load, arg(nxt), kind(nxt))))

        refill()
        while pending:
            item, fut = pending.popleft()
            try:
                done = Decoded(item, fut.result())
            except BrokenProcessPool:
                done = _decode_alone(pools, load, arg, kind, item)
                # the others in flight in the broken pool were lost with it: send them again
                for i, (other, f) in enumerate(pending):
                    finished = f.done() and not f.cancelled() and f.exception() is None
                    if pools.in_processes(kind(other)) and not finished:
                        pending[i] = (other, pools.submit(load, arg(other), kind(other)))
            except Exception as e:  # noqa: BLE001 - the caller decides: raise it or list it
                done = Decoded(item, None, e)
            refill()   # keep the decoders busy while the caller runs the model
            yield done
    finally:
        for _, fut in pending:
            fut.cancel()
        if own:
            pools.close()


_END: Any = object()


def _decode_alone(pools: DecodePools, load: Callable[[Any], Any], arg: Callable[[Any], Any],
                  kind: Callable[[Any], str], item: Any) -> Decoded[Any]:
    """Decode one input in a fresh process pool with nothing else in flight (see decode_ahead)."""
    pools.restart_processes()
    try:
        return Decoded(item, pools.submit(load, arg(item), kind(item)).result())
    except BrokenProcessPool:
        pools.restart_processes()
    except Exception as e:  # noqa: BLE001 - as in decode_ahead
        return Decoded(item, None, e)
    # it, or the processes themselves? One that is given nothing to decode must live
    try:
        pools.submit(_alive, None, kind(item)).result()
    except BrokenProcessPool as e:
        pools.restart_processes()
        raise MedhashError("decode processes die even with nothing to decode (they cannot start here: "
                           "memory, or a main module they cannot import); use the thread pool (--pool thread)") from e
    return Decoded(item, None, ImageReadError(
        _input_name(arg(item)), "its decoder process died reading it (a native decoder crashed on the "
                                "file, or the process ran out of memory)"))


def _alive(_: Any) -> bool:
    """What a healthy decode process answers (_decode_alone)."""
    return True


def _input_name(a: Any) -> str:
    """A readable name for what load() received: a path, or "input #i" for Encoder's (i, item)."""
    if isinstance(a, tuple) and len(a) == 2 and isinstance(a[0], int):
        return _input_name(a[1]) if isinstance(a[1], (str, os.PathLike)) else f"input #{a[0]}"
    return os.fspath(a) if isinstance(a, (str, os.PathLike)) else type(a).__name__


def _run_inline(load: Callable[[Any], Any], arg: Callable[[Any], Any], item: Any) -> Decoded[Any]:
    try:
        return Decoded(item, load(arg(item)))
    except Exception as e:  # noqa: BLE001 - as in a pool
        return Decoded(item, None, e)


def raise_first_error(decoded: Iterable[Decoded[T]]) -> Iterator[Decoded[T]]:
    """Pass decoded inputs through, raising the first failure's own exception."""
    for d in decoded:
        if d.error is not None:
            raise d.error
        yield d


@dataclass
class GroupResult(Generic[K, T]):
    """What one group of inputs produced: codes of the readable ones, those inputs, the failures."""

    key: K
    codes: np.ndarray            # uint8 (n_ok, nbytes)
    items: list[T]               # readable inputs, same order as codes
    errors: list[tuple[T, str]]  # (input, reason)


def encode_groups(groups: Iterable[tuple[K, Sequence[T]]], load: Callable[[Any], np.ndarray],
                  infer: Callable[[np.ndarray], np.ndarray], *, batch_size: int, nbytes: int,
                  pools: DecodePools, arg: Callable[[T], Any] | None = None,
                  kind: Callable[[T], str] | None = None, window: int | None = None,
                  on_item: Callable[[bool], None] | None = None) -> Iterator[GroupResult[K, T]]:
    """Encode groups of inputs in order, listing unreadable inputs instead of stopping.

    load: input -> float32 (C, S, S); infer: float32 (n, C, S, S) -> packed codes (n, nbytes).
    Batches never cross a group's boundary and are formed from the group's readable inputs
    in order, so a group's codes do not depend on the groups before it (what makes a resumed
    bulk job equal an uninterrupted one). on_item(ok) is called once per input.
    """
    batch_size = check_int("batch_size", batch_size)
    window = window or 2 * batch_size + 2 * pools.workers
    flat = ((key, j, len(items), it) for key, items in groups for j, it in enumerate(items))
    decoded = decode_ahead(flat, load, pool=pools, window=window,
                           arg=(lambda t: arg(t[3])) if arg else (lambda t: t[3]),
                           kind=(lambda t: kind(t[3])) if kind else None)
    batch: list[np.ndarray] = []
    ok_items: list[T] = []
    codes: list[np.ndarray] = []
    errors: list[tuple[T, str]] = []

    def flush() -> None:
        if batch:
            codes.append(np.asarray(infer(np.stack(batch)), dtype=np.uint8))
            batch.clear()

    for d in decoded:
        key, j, n, it = d.item
        if d.ok:
            batch.append(d.value)
            ok_items.append(it)
            if len(batch) == batch_size:
                flush()
        else:
            errors.append((it, d.reason))
        if on_item is not None:
            on_item(d.ok)
        if j == n - 1:  # the group's last input
            flush()
            out = np.concatenate(codes) if codes else np.zeros((0, nbytes), dtype=np.uint8)
            yield GroupResult(key, out, list(ok_items), list(errors))
            ok_items.clear()
            codes.clear()
            errors.clear()


def progress_bar(total: int, *, initial: int = 0, show: bool | None = None, desc: str = "encode") -> Any:
    """A tqdm bar counting images; show=None shows it on a terminal for more than one input."""
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty() or total <= 1) if show is None else not show
    return tqdm(total=total, initial=initial, unit="img", desc=desc, disable=disable, dynamic_ncols=True)


def counting(bar: Any) -> Callable[[bool], None]:
    """An on_item(ok) callback that advances `bar` and shows the number of failed inputs."""
    failed = 0

    def on_item(ok: bool) -> None:
        nonlocal failed
        if not ok:
            failed += 1
            bar.set_postfix(failed=failed, refresh=False)
        bar.update(1)

    return on_item
