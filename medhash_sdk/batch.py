"""Bulk encoding: many image files -> resumable shards of codes, decoding overlapped with inference.

    from medhash_sdk.batch import encode_to_shards
    summary = encode_to_shards(["/data/cxr"], "out/", model="model.onnx")

Pipeline: the inputs (see medhash_sdk.inputs) are split into fixed shards, shard i holding
inputs[i*S:(i+1)*S]. Decode workers read and preprocess images ahead of the model through a
bounded window of futures (so memory stays bounded whatever the input size) while the
calling thread runs inference (ONNX Runtime releases the GIL, so both proceed at once).

Decode pools, per input kind: images (PNG/JPEG/TIFF) are decoded in threads, since OpenCV
releases the GIL; DICOM files in processes, since pydicom's pure-Python parsing holds it.
A run without DICOM starts no process at all.

Batches never cross shard boundaries and are formed from each shard's readable inputs in
order, so a shard's codes do not depend on which shards ran before: a resumed run gives the
same codes as an uninterrupted one.

Output directory:
    manifest.json           model fingerprint, nbits, shard size, input digest, counts
    shard-000000.idx        the shard's codes and ids, in the Index file format (it carries the
                            model fingerprint)
    shard-000000.json       per-shard sidecar: ids, absolute paths, label values, failed inputs
    errors.csv              every input that failed and why (written when the run ends)
Every file is written to a temporary name, fsynced and renamed, sidecar first, .idx last: a
shard exists when its .idx does. A run killed at any moment and started again with the same
inputs skips finished shards and recomputes the others. A manifest naming another model,
shard size or input list is refused (ModelMismatchError / ShardDirError).

Patient data: nothing here reads DICOM patient fields; logs and error lists name inputs by
the path the user gave.
"""
from __future__ import annotations

import collections
import contextlib
import concurrent.futures as cf
import concurrent.futures.process
import csv
import io
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from . import __version__
from ._atomic import atomic_open, atomic_write
from ._system import available_cpus
from .exceptions import MedhashError, ModelMismatchError
from .inputs import Inputs, Item, discover

MANIFEST = "manifest.json"
ERRORS = "errors.csv"
FORMAT = "medhash-shards/1"
DEFAULT_SHARD_SIZE = 8192


class ShardDirError(MedhashError):
    """An output directory holds another job's shards, or a damaged manifest."""


def _write_json(path: str, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode())


# --------------------------------------------------------------------------- shard directory

@dataclass
class ShardResult:
    """What one shard produced: codes of the readable inputs, those inputs, the failures."""

    shard: int
    codes: np.ndarray            # uint8 (n_ok, nbits // 8)
    items: list[Item]            # readable inputs, same order as codes
    errors: list[tuple[Item, str]]


class ShardDir:
    """The output directory of a bulk job: manifest, shard files, errors list."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Hold an exclusive lock on the directory for this process's life (or until unlock()).

        Two jobs writing one directory would overwrite each other's shards; the second one is
        refused. The OS drops the lock when the process dies, so a killed run never blocks.
        Stale temporary files of a killed run are removed once the lock is held.
        """
        import fcntl

        os.makedirs(self.path, exist_ok=True)
        fd = os.open(os.path.join(self.path, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ShardDirError(f"{self.path}: another medhash encode is writing to this directory") from None
        self._lock_fd = fd
        for name in os.listdir(self.path):
            if name.startswith((".shard-", f".{MANIFEST}.", f".{ERRORS}.")) and name.endswith(".tmp"):
                try:
                    os.unlink(os.path.join(self.path, name))
                except OSError:
                    pass

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def shard_path(self, i: int, ext: str) -> str:
        return os.path.join(self.path, f"shard-{i:06d}.{ext}")

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.path, MANIFEST)

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            with open(self.manifest_path, encoding="utf-8") as f:
                m = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ShardDirError(f"{self.manifest_path}: unreadable manifest ({e}); "
                                "remove the directory to start over") from e
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise ShardDirError(f"{self.manifest_path}: not a medhash shard manifest "
                                f"(format {m.get('format') if isinstance(m, dict) else None!r}, expected {FORMAT})")
        return m

    def start(self, *, fingerprint: str, nbits: int, shard_size: int, inputs: Inputs) -> dict[str, Any]:
        """Create the manifest, or check that an existing one describes the same job (lock() first)."""
        n = len(inputs)
        want = {
            "format": FORMAT,
            "model_fingerprint": fingerprint,
            "nbits": int(nbits),
            "shard_size": int(shard_size),
            "n_inputs": n,
            "n_shards": (n + shard_size - 1) // shard_size,
            "inputs_digest": inputs.digest(),
            "label_columns": list(inputs.label_columns),
        }
        have = self.read_manifest()
        if have is not None:
            if have.get("model_fingerprint") != fingerprint:
                raise ModelMismatchError(
                    f"{self.path} holds codes of model {str(have.get('model_fingerprint'))[:16]}..., "
                    f"not of this model ({fingerprint[:16]}...); codes of two models cannot be mixed: "
                    "use another --out directory, or the model that started this job")
            for key, what in (("shard_size", "shard size"), ("n_inputs", "number of inputs"),
                              ("inputs_digest", "list of inputs (ids, order or labels)"),
                              ("label_columns", "label columns"), ("nbits", "nbits")):
                if have.get(key) != want[key]:
                    raise ShardDirError(
                        f"{self.path} holds another job: its {what} differs "
                        f"({have.get(key)!r} there, {want[key]!r} now); resume with the same INPUTs "
                        "and --shard-size, or use another --out directory")
            return have
        want.update(status="running", sdk_version=__version__, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        _write_json(self.manifest_path, want)
        return want

    def is_done(self, i: int, fingerprint: str) -> bool:
        """True when shard i is complete: sidecar and .idx present, .idx header from this model."""
        idx, side = self.shard_path(i, "idx"), self.shard_path(i, "json")
        if not (os.path.exists(idx) and os.path.exists(side)):
            return False
        try:
            with open(side, encoding="utf-8") as f:
                meta = json.load(f)
            with _index_cls().view(idx) as index:
                return index.fingerprint == fingerprint and len(index) == len(meta["ids"])
        except (MedhashError, OSError, ValueError, KeyError):
            return False  # damaged (should not happen with atomic writes): recompute it

    def write_shard(self, r: ShardResult, *, fingerprint: str, nbits: int) -> None:
        """Sidecar first, then the .idx file (the completion mark), each atomically."""
        meta = {
            "shard": r.shard,
            "ids": [it.id for it in r.items],
            "paths": [os.path.abspath(it.path) for it in r.items],  # for explain / sources
            "labels": [list(it.labels) for it in r.items],
            "errors": [{"id": it.id, "input": it.path, "reason": reason} for it, reason in r.errors],
        }
        _write_json(self.shard_path(r.shard, "json"), meta)
        index = _index_cls()(nbits=nbits, fingerprint=fingerprint)
        if len(r.items):
            index.add(np.ascontiguousarray(r.codes, dtype=np.uint8), ids=[it.id for it in r.items])
        index.save(self.shard_path(r.shard, "idx"))

    def read_meta(self, i: int) -> dict[str, Any]:
        with open(self.shard_path(i, "json"), encoding="utf-8") as f:
            return json.load(f)

    def finish(self, manifest: dict[str, Any]) -> tuple[int, int]:
        """Write errors.csv from every shard's sidecar and mark the manifest complete."""
        n_ok = n_failed = 0
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["input", "id", "reason"])
        for i in range(manifest["n_shards"]):
            meta = self.read_meta(i)
            n_ok += len(meta["ids"])
            for e in meta["errors"]:
                w.writerow([e["input"], e["id"], e["reason"]])
                n_failed += 1
        atomic_write(os.path.join(self.path, ERRORS), buf.getvalue().encode())
        manifest.update(status="complete", n_encoded=n_ok, n_failed=n_failed)
        _write_json(self.manifest_path, manifest)
        return n_ok, n_failed


def _index_cls() -> Any:
    from .index import Index  # lazy: the compiled engine is only needed when shards are written

    return Index


# --------------------------------------------------------------------------- decoding

class DecodePools:
    """Threads for images (OpenCV releases the GIL), processes for DICOM (pydicom does not).

    ``mode``: "auto" (per input kind, as above), "thread" or "process" (every input).
    Each pool has ``workers`` workers and is created on first use.
    """

    def __init__(self, loader: Callable[[str], np.ndarray], workers: int, mode: str = "auto"):
        if mode not in ("auto", "thread", "process"):
            raise ValueError(f"pool must be 'auto', 'thread' or 'process', got {mode!r}")
        if int(workers) < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.loader, self.workers, self.mode = loader, int(workers), mode
        self._threads: cf.ThreadPoolExecutor | None = None
        self._procs: cf.ProcessPoolExecutor | None = None

    def _pool(self, kind: str) -> cf.Executor:
        use_procs = self.mode == "process" or (self.mode == "auto" and kind == "dicom")
        if use_procs:
            if self._procs is None:
                self._procs = cf.ProcessPoolExecutor(self.workers, mp_context=_process_context())
            return self._procs
        if self._threads is None:
            self._threads = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="medhash-decode")
        return self._threads

    def submit(self, item: Item) -> cf.Future:
        return self._pool(item.kind).submit(_load_one, self.loader, item.path)

    def close(self) -> None:
        for p in (self._threads, self._procs):
            if p is not None:
                p.shutdown(wait=True, cancel_futures=True)
        self._threads = self._procs = None

    def __enter__(self) -> "DecodePools":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _process_context() -> Any:
    """forkserver where there is one, else spawn; never plain fork.

    The parent runs ONNX Runtime threads, and forking a threaded process can deadlock the
    child. The fork server is a fresh single-threaded interpreter that imports the decoders
    once; each worker forks from it, instead of starting and importing from scratch (spawn).
    """
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" not in methods:
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["numpy", "cv2", "pydicom", "medhash_sdk.readers", "medhash_sdk.encoder",
                                "medhash_sdk.batch"])
    return ctx


def _load_one(loader: Callable[[str], np.ndarray], path: str) -> tuple[np.ndarray | None, str]:
    """Decode + preprocess one input; a failure becomes its reason (the run goes on)."""
    try:
        return loader(path), ""
    except MedhashError as e:
        reason = getattr(e, "reason", None) or str(e)
        return None, reason
    except Exception as e:  # a bulk job lists every unreadable input instead of stopping
        return None, f"{type(e).__name__}: {e}"


# --------------------------------------------------------------------------- the pipeline

def encode_shards(shards: Iterable[tuple[int, Sequence[Item]]], pools: DecodePools,
                  infer: Callable[[np.ndarray], np.ndarray], *, batch_size: int, nbytes: int,
                  window: int | None = None, on_item: Callable[[bool], None] | None = None,
                  ) -> Iterator[ShardResult]:
    """Encode shards in order, decoding up to ``window`` inputs ahead of the model.

    Yields one ShardResult per shard, in the order given. ``infer`` maps a float32 batch
    (n, C, S, S) to packed codes (n, nbytes). ``on_item(ok)`` is called once per input.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    window = window or 2 * batch_size + 2 * pools.workers
    stream = ((i, j, len(items), it) for i, items in shards for j, it in enumerate(items))
    pending: collections.deque[tuple[int, int, int, Item, cf.Future]] = collections.deque()
    exhausted = False

    def refill() -> None:
        nonlocal exhausted
        while not exhausted and len(pending) < window:
            nxt = next(stream, None)
            if nxt is None:
                exhausted = True
                return
            i, j, n, it = nxt
            pending.append((i, j, n, it, pools.submit(it)))

    batch: list[np.ndarray] = []
    ok_items: list[Item] = []
    codes: list[np.ndarray] = []
    errors: list[tuple[Item, str]] = []

    def flush() -> None:
        if batch:
            codes.append(np.asarray(infer(np.stack(batch)), dtype=np.uint8))
            batch.clear()

    refill()
    while pending:
        i, j, n, it, fut = pending.popleft()
        try:
            arr, reason = fut.result()
        except cf.process.BrokenProcessPool as e:
            raise MedhashError(
                f"a decode process died while reading {it.path} or a neighbour (a crash in a native decoder, "
                "or out of memory); finished shards are kept: run the same command again to resume, or use "
                "--pool thread") from e
        refill()  # keep the decoders busy while the model runs below
        if arr is None:
            errors.append((it, reason))
        else:
            batch.append(arr)
            ok_items.append(it)
            if len(batch) == batch_size:
                flush()
        if on_item is not None:
            on_item(arr is not None)
        if j == n - 1:  # last input of shard i
            flush()
            out = np.concatenate(codes) if codes else np.zeros((0, nbytes), dtype=np.uint8)
            yield ShardResult(i, out, list(ok_items), list(errors))
            ok_items.clear()
            codes.clear()
            errors.clear()


@dataclass
class EncodeSummary:
    """The outcome of a bulk job (resumed shards included)."""

    out: str
    n_inputs: int
    n_encoded: int
    n_failed: int
    n_shards: int
    n_resumed: int       # shards found finished and skipped
    seconds: float
    errors_path: str

    def __str__(self) -> str:
        s = (f"{self.n_encoded} of {self.n_inputs} inputs encoded into {self.n_shards} shards in {self.out} "
             f"({self.seconds:.1f} s")
        s += f"; {self.n_resumed} shards were already done)" if self.n_resumed else ")"
        if self.n_failed:
            s += f"; {self.n_failed} inputs failed, listed in {self.errors_path}"
        return s


def shard_slices(n: int, shard_size: int) -> list[range]:
    """Fixed shard numbering: shard i holds inputs[i*S:(i+1)*S]."""
    return [range(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def _open_encoder(model: Any, providers: Any) -> Any:
    from .encoder import Encoder

    if isinstance(model, Encoder):
        return model
    return Encoder(model, providers=providers)


@dataclass
class Job:
    """A bulk job opened on its output directory: which shards are left to do."""

    inputs: Inputs
    shard_dir: ShardDir
    manifest: dict[str, Any]
    fingerprint: str
    nbits: int
    slices: list[range]
    todo: list[int]
    t0: float

    def shard_items(self, i: int) -> list[Item]:
        return [self.inputs.items[k] for k in self.slices[i]]

    @property
    def done_inputs(self) -> int:
        return len(self.inputs) - sum(len(self.slices[i]) for i in self.todo)

    def write(self, r: ShardResult) -> None:
        self.shard_dir.write_shard(r, fingerprint=self.fingerprint, nbits=self.nbits)

    def finish(self) -> EncodeSummary:
        missing = [i for i in self.todo if not self.shard_dir.is_done(i, self.fingerprint)]
        if missing:
            raise ShardDirError(f"{self.shard_dir.path}: shards {missing[:10]} were not written; run the "
                                "same command again to finish them")
        n_ok, n_failed = self.shard_dir.finish(self.manifest)
        return EncodeSummary(self.shard_dir.path, len(self.inputs), n_ok, n_failed, len(self.slices),
                             len(self.slices) - len(self.todo), time.perf_counter() - self.t0,
                             os.path.join(self.shard_dir.path, ERRORS))


@contextlib.contextmanager
def open_job(inputs: Sequence[str | os.PathLike[str]] | Inputs, out: str | os.PathLike[str], *,
             fingerprint: str, nbits: int, shard_size: int = DEFAULT_SHARD_SIZE,
             path_column: str | None = None, id_column: str | None = None,
             label_columns: Sequence[str] | None = None) -> Iterator[Job]:
    """Discover the inputs, lock ``out``, create or check its manifest, find the shards left."""
    t0 = time.perf_counter()
    if isinstance(shard_size, bool) or int(shard_size) < 1:
        raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
    shard_size = int(shard_size)
    if not isinstance(inputs, Inputs):
        inputs = discover(inputs, path_column=path_column, id_column=id_column, label_columns=label_columns)
    sd = ShardDir(out)
    sd.lock()
    try:
        manifest = sd.start(fingerprint=fingerprint, nbits=nbits, shard_size=shard_size, inputs=inputs)
        slices = shard_slices(len(inputs), shard_size)
        todo = [i for i in range(len(slices)) if not sd.is_done(i, fingerprint)]
        yield Job(inputs, sd, manifest, fingerprint, int(nbits), slices, todo, t0)
    finally:
        sd.unlock()


def encode_to_shards(inputs: Sequence[str | os.PathLike[str]] | Inputs, out: str | os.PathLike[str], *,
                     model: Any = None, providers: Any = "auto", batch_size: int = 64,
                     workers: int | None = None, shard_size: int = DEFAULT_SHARD_SIZE, pool: str = "auto",
                     show_progress_bar: bool | None = None, path_column: str | None = None,
                     id_column: str | None = None, label_columns: Sequence[str] | None = None,
                     ) -> EncodeSummary:
    """Encode every input into shards under ``out``; resume where a previous run stopped.

    inputs: INPUTs as for `medhash encode` (directories, files, path lists, CSV files).
    model: a model path, an Encoder, or None for the bundled model. workers: decode workers
    (default: the cores this process may use). pool: "auto" (threads for images, processes
    for DICOM), "thread" or "process". show_progress_bar: None shows it on a terminal.
    Failed inputs do not stop the run: see summary.n_failed and errors.csv.
    """
    batch_size = _positive_int("batch_size", batch_size)
    workers = available_cpus() if workers is None else _positive_int("workers", workers)
    enc = _open_encoder(model, providers)
    with open_job(inputs, out, fingerprint=enc.fingerprint, nbits=enc.nbits, shard_size=shard_size,
                  path_column=path_column, id_column=id_column, label_columns=label_columns) as job:
        loader, infer = decode_and_infer(enc)
        bar = _progress(len(job.inputs), job.done_inputs, show_progress_bar)
        try:
            with DecodePools(loader, workers, pool) as pools:
                shards = ((i, job.shard_items(i)) for i in job.todo)
                for r in encode_shards(shards, pools, infer, batch_size=batch_size, nbytes=enc.nbits // 8,
                                       on_item=_bar_callback(bar)):
                    job.write(r)
        finally:
            bar.close()
        return job.finish()


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _bar_callback(bar: Any) -> Callable[[bool], None]:
    failed = 0

    def on_item(ok: bool) -> None:
        nonlocal failed
        if not ok:
            failed += 1
            bar.set_postfix(failed=failed, refresh=False)
        bar.update(1)

    return on_item


def decode_and_infer(enc: Any) -> tuple[Callable[[str], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """The Encoder's own decode+preprocess step (picklable) and its batch -> codes step."""
    return enc.loader(), enc.encode_preprocessed


def _progress(total: int, initial: int, show: bool | None) -> Any:
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if show is None else not show
    return tqdm(total=total, initial=initial, unit="img", desc="encode", disable=disable, dynamic_ncols=True)


# --------------------------------------------------------------------------- index build

SOURCES_SUFFIX = ".sources.csv"


def sources_path(index_path: str | os.PathLike[str]) -> str:
    """The table beside an index built from shards: id, path and label columns of every code."""
    return os.fspath(index_path) + SOURCES_SUFFIX


def build_index(dirs: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], out: str | os.PathLike[str], *,
                fingerprint: str | None = None) -> tuple[int, str]:
    """Merge the shards of finished encode jobs into one Index file, plus its sources table.

    Refuses (ShardDirError) a directory whose job is unfinished and (ModelMismatchError)
    shards of two models, or of another model than ``fingerprint`` when given. Writes
    ``out`` and ``out + '.sources.csv'`` (id, path, label columns), both atomically.
    Returns (number of codes, the index path).
    """
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    if not dirs:
        raise ValueError("give at least one directory written by `medhash encode`")
    jobs: list[tuple[ShardDir, dict[str, Any]]] = []
    for d in dirs:
        sd = ShardDir(d)
        m = sd.read_manifest()
        if m is None:
            raise ShardDirError(f"{sd.path}: no {MANIFEST}; give a directory written by `medhash encode --out`")
        if m.get("status") != "complete":
            raise ShardDirError(f"{sd.path}: the encode job is unfinished; run the same `medhash encode` "
                                "command again to finish it, then build the index")
        want = fingerprint if fingerprint is not None else jobs[0][1]["model_fingerprint"] if jobs else None
        if want is not None and m["model_fingerprint"] != want:
            raise ModelMismatchError(
                f"{sd.path} holds codes of model {m['model_fingerprint'][:16]}..., not of model {want[:16]}... "
                "(the model given or the first directory's); codes of two models cannot share an index")
        jobs.append((sd, m))
    fp, nbits = jobs[0][1]["model_fingerprint"], int(jobs[0][1]["nbits"])
    columns: list[str] = []
    for _, m in jobs:
        columns += [c for c in m["label_columns"] if c not in columns]
    index = _index_cls()(nbits=nbits, fingerprint=fp)
    with atomic_open(sources_path(out), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", *columns])
        for sd, m in jobs:
            where = [columns.index(c) for c in m["label_columns"]]
            for i in range(m["n_shards"]):
                meta = sd.read_meta(i)
                ids = meta["ids"]
                if not ids:
                    continue
                shard = _index_cls().load(sd.shard_path(i, "idx"), fingerprint=fp)
                if shard.ids.tolist() != ids:
                    raise ShardDirError(f"{sd.shard_path(i, 'idx')}: ids differ from its sidecar; "
                                        "delete both shard files and rerun the encode command")
                try:
                    index.add(shard.codes, ids=ids)
                except ValueError as e:  # an id of this shard is already in (from another directory)
                    raise ShardDirError(f"{sd.path}: {e}; ids must be unique across the directories of "
                                        "one index") from e
                for x, p, vals in zip(ids, meta["paths"], meta["labels"]):
                    row = [""] * len(columns)
                    for k, v in zip(where, vals):
                        row[k] = v
                    w.writerow([x, p, *row])
    index.save(out)
    return len(index), os.fspath(out)


def read_sources(index_path: str | os.PathLike[str], ids: Iterable[Any] | None = None,
                 ) -> tuple[list[str], dict[str, tuple[str, list[str]]]]:
    """Label columns and {id: (path, label values)} from an index's sources table.

    ids: only these (one streaming pass, so memory stays small for a huge index); None: all.
    Returns ([], {}) when the index has no sources table (built from codes alone).
    """
    p = sources_path(index_path)
    want = None if ids is None else {str(x) for x in ids}
    rows: dict[str, tuple[str, list[str]]] = {}
    try:
        f = open(p, newline="", encoding="utf-8")
    except FileNotFoundError:
        return [], {}
    with f:
        r = csv.reader(f)
        header = next(r, None)
        if not header or header[:2] != ["id", "path"]:
            raise ShardDirError(f"{p}: not a sources table (expected columns id, path, ...)")
        for row in r:
            if want is None or row[0] in want:
                rows[row[0]] = (row[1], row[2:])
    return header[2:], rows
