"""`medhash index build`: merge the shards of finished encode jobs into one Index file and its
sources table (id, path and label columns of every code; see medhash_sdk.batch.shards)."""
from __future__ import annotations

import csv
import os
from typing import Any, Sequence

from ..atomic import atomic_open
from ..exceptions import ModelMismatchError
from ..index import Index
from .shards import MANIFEST, ShardDir, ShardDirError, sources_path


def build_index(dirs: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], out: str | os.PathLike[str], *,
                fingerprint: str | None = None, sort_by_code: bool = False) -> tuple[int, str]:
    """Merge the shards of finished encode jobs into one Index file, plus its sources table.

    sort_by_code: store the rows in code order (Index.sort_by_code), for an archive searched
    with multi-index tables; otherwise rows follow the directories and their shards.

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
    index = Index(nbits=nbits, fingerprint=fp)
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
                shard = Index.load(sd.shard_path(i, "idx"), fingerprint=fp)
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
    if sort_by_code:
        index.sort_by_code()
    index.save(out)
    return len(index), os.fspath(out)


