"""The shard folder format of a bulk job: manifest, shards, errors list, sources table.

Output directory of `medhash encode`:
    manifest.json           model fingerprint, nbits, shard size, input digest, counts
    shard-000000.idx        the shard's codes and ids, in the Index file format (it carries the
                            model fingerprint)
    shard-000000.json       per-shard sidecar: ids, absolute paths, label values, failed inputs
    errors.csv              every input that failed and why (written when the run ends)
Every file is written to a temporary name, fsynced and renamed (medhash_sdk.atomic), sidecar
first, .idx last: a shard exists when its .idx does, so a run killed at any moment and started
again with the same inputs skips finished shards and recomputes the others. A manifest
naming another model, shard size or input list is refused (ModelMismatchError /
ShardDirError). An index built from shards has a sources table beside it
(`codes.idx.sources.csv`: id, path and label columns of every code).

Patient data: nothing here reads DICOM patient fields; error lists name inputs by the path
the user gave.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from typing import Any, Iterable

import numpy as np

from .. import __version__
from ..atomic import atomic_write
from ..exceptions import MedhashError, ModelMismatchError
from ..index import Index
from ..inputs import Inputs, Item
from ..pipeline import GroupResult

MANIFEST = "manifest.json"
ERRORS = "errors.csv"
FORMAT = "medhash-shards/1"


class ShardDirError(MedhashError):
    """An output directory holds another job's shards, or a damaged manifest."""


def _write_json(path: str, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode())


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

        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ShardDirError(f"{self.path}: is a file; the output of medhash encode is a folder")
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
            with Index.view(idx) as index:
                return index.fingerprint == fingerprint and len(index) == len(meta["ids"])
        except (MedhashError, OSError, ValueError, KeyError):
            return False  # damaged (should not happen with atomic writes): recompute it

    def write_shard(self, r: GroupResult[int, Item], *, fingerprint: str, nbits: int) -> None:
        """Sidecar first, then the .idx file (the completion mark), each atomically."""
        meta = {
            "shard": r.key,
            "ids": [it.id for it in r.items],
            "paths": [os.path.abspath(it.path) for it in r.items],  # for explain / sources
            "labels": [list(it.labels) for it in r.items],
            "errors": [{"id": it.id, "input": it.path, "reason": reason} for it, reason in r.errors],
        }
        _write_json(self.shard_path(r.key, "json"), meta)
        index = Index(nbits=nbits, fingerprint=fingerprint)
        if len(r.items):
            index.add(np.ascontiguousarray(r.codes, dtype=np.uint8), ids=[it.id for it in r.items])
        index.save(self.shard_path(r.key, "idx"))

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


SOURCES_SUFFIX = ".sources.csv"


def sources_path(index_path: str | os.PathLike[str]) -> str:
    """The table beside an index built from shards: id, path and label columns of every code."""
    return os.fspath(index_path) + SOURCES_SUFFIX


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
