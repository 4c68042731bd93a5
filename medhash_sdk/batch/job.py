"""A bulk job: many image files -> resumable shards of codes (`medhash encode`).

    from medhash_sdk.batch import encode_to_shards
    summary = encode_to_shards(["/data/cxr"], "out/", model="model.onnx")

The inputs (medhash_sdk.inputs) are split into fixed shards, shard i holding
inputs[i*S:(i+1)*S]; open_job() locks the output folder, creates or checks its manifest
(medhash_sdk.batch.shards) and finds the shards left to do; encode_to_shards() runs them
through the decode-ahead pipeline (medhash_sdk.pipeline.encode_groups: batches never cross a
shard, so a resumed run gives the same codes as an uninterrupted one) and writes each shard
as it finishes. The Ray path (medhash_sdk.distributed) opens the same job and writes the
same shards.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

from .._system import available_cpus
from ..inputs import Inputs, Item, discover
from ..pipeline import DecodePools, GroupResult, counting, encode_groups, progress_bar
from ..validation import check_int, check_optional_int
from .shards import ERRORS, ShardDir, ShardDirError

DEFAULT_SHARD_SIZE = 8192


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

    def progress_bar(self, show: bool | None) -> Any:
        """A bar over every input of the job, starting at those already done."""
        return progress_bar(len(self.inputs), initial=self.done_inputs, show=show)

    def write(self, r: GroupResult[int, Item]) -> None:
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
    shard_size = check_int("shard_size", shard_size)
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


def encode_shards(shards: Iterable[tuple[int, Sequence[Item]]], encoder: Any, pools: DecodePools, *,
                  batch_size: int, on_item: Callable[[bool], None] | None = None) -> Iterator[GroupResult[int, Item]]:
    """Encode (shard number, its inputs) pairs in order with the Encoder's own decode and inference
    steps (local runs and Ray actors alike)."""
    return encode_groups(shards, encoder.loader(), encoder.encode_preprocessed,
                         batch_size=batch_size, nbytes=encoder.nbits // 8, pools=pools,
                         arg=lambda it: it.path, kind=lambda it: it.kind, on_item=on_item)


def open_encoder(model: Any, providers: Any = "auto") -> Any:
    """An Encoder for a model path, the bundled model (None), or the Encoder itself."""
    from ..encoder import Encoder

    return model if isinstance(model, Encoder) else Encoder(model, providers=providers)


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
    batch_size = check_int("batch_size", batch_size)
    workers = check_optional_int("workers", workers) or available_cpus()
    enc = open_encoder(model, providers)
    with open_job(inputs, out, fingerprint=enc.fingerprint, nbits=enc.nbits, shard_size=shard_size,
                  path_column=path_column, id_column=id_column, label_columns=label_columns) as job:
        with job.progress_bar(show_progress_bar) as bar, DecodePools(workers, pool) as pools:
            for r in encode_shards(((i, job.shard_items(i)) for i in job.todo), enc, pools, batch_size=batch_size, on_item=counting(bar)):
                job.write(r)
        return job.finish()
