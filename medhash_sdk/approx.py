"""Approximate Hamming search: usearch's HNSW graph over packed binary codes.

For collections past ~10M codes, where one exact scan per query gets long. It pays off only
when the codes have structure (clusters, as real image codes do); on uniform random codes a
graph walk visits a large part of the collection and is slower than the exact scan, and its
recall drops. benchmarks/bench_search.py measures both against the exact engine.

usearch is imported lazily, so `import medhash_sdk` never needs it. Independent of index.py:
rows here are the caller's non-negative int64 keys (e.g. the exact Index's row numbers).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from medhash_sdk.atomic import atomic_path
from medhash_sdk.codes import check_nbits
from medhash_sdk.exceptions import IndexFileError
from medhash_sdk.validation import check_int

_INSTALL_HINT = "approximate search needs usearch: pip install 'usearch>=2.12'"


def _usearch_index_module() -> Any:
    try:
        import usearch.index as usearch_index
    except ImportError as exc:  # pragma: no cover - usearch is a base dependency
        raise ImportError(_INSTALL_HINT) from exc
    return usearch_index


def _check_codes(codes: Any, nbytes: int, what: str) -> np.ndarray:
    if not isinstance(codes, np.ndarray):
        raise TypeError(f"{what} must be a numpy uint8 array, got {type(codes).__name__}: "
                        f"pass np.asarray({what}, dtype=np.uint8)")
    if codes.dtype != np.uint8:
        raise TypeError(f"{what} must have dtype uint8 (packed bits), got {codes.dtype}: "
                        "pack bits with medhash_sdk.codes.pack_codes")
    if codes.ndim == 1:
        codes = codes[None, :]
    if codes.ndim != 2 or codes.shape[1] != nbytes:
        raise ValueError(f"{what} must have shape (n, {nbytes}) for {nbytes * 8}-bit codes, "
                         f"got {codes.shape}")
    return np.ascontiguousarray(codes)


class ApproximateHammingIndex:
    """HNSW (usearch) over nbits-bit packed codes; search returns rows and exact distances.

    connectivity (HNSW "M"), expansion_add (efConstruction) and expansion_search (ef) trade
    build time and speed for recall; expansion_search can be changed after building.
    """

    def __init__(self, nbits: int, *, connectivity: int = 16, expansion_add: int = 128,
                 expansion_search: int = 64) -> None:
        self.nbits = check_nbits(nbits)
        for name, value in (("connectivity", connectivity), ("expansion_add", expansion_add),
                            ("expansion_search", expansion_search)):
            check_int(name, value)
        usearch_index = _usearch_index_module()
        self._index = usearch_index.Index(
            ndim=self.nbits, metric="hamming", dtype="b1", connectivity=int(connectivity),
            expansion_add=int(expansion_add), expansion_search=int(expansion_search))

    @property
    def nbytes(self) -> int:
        return self.nbits // 8

    @property
    def expansion_search(self) -> int:
        return int(self._index.expansion_search)

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        self._index.expansion_search = check_int("expansion_search", value)

    def __len__(self) -> int:
        return len(self._index)

    def add(self, codes: np.ndarray, rows: np.ndarray | None = None, *, threads: int = 0) -> np.ndarray:
        """Insert codes (n, nbits // 8) under rows (n,) non-negative, unique int64 keys.

        rows=None numbers them on from the current size. Returns the rows used.
        threads=0 lets usearch use every core.
        """
        codes = _check_codes(codes, self.nbytes, "codes")
        n = codes.shape[0]
        if rows is None:
            start = len(self._index)
            rows = np.arange(start, start + n, dtype=np.int64)
        else:
            rows = np.asarray(rows)
            if rows.dtype.kind not in "iu":
                raise TypeError(f"rows must be integers, got dtype {rows.dtype}")
            if rows.shape != (n,):
                raise ValueError(f"rows must have shape ({n},), one per code, got {rows.shape}")
            if n and rows.min() < 0:
                raise ValueError("rows must be >= 0 (usearch keys are unsigned)")
            rows = rows.astype(np.int64)
            if np.unique(rows).size != n:
                raise ValueError("rows must be unique")
            if n and self._index.contains(rows.astype(np.uint64)).any():
                raise ValueError("some rows are already in the index: remove them first or use new rows")
        if n:
            self._index.add(rows.astype(np.uint64), codes, threads=int(threads))
        return rows

    def search(self, queries: np.ndarray, k: int = 10, *, threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Approximate k nearest rows: (rows int64 (nq, k), distances int32 (nq, k)).

        Distances are exact Hamming distances of the returned rows (usearch's b1 Hamming
        metric is an exact popcount); rows are sorted by (distance, row). Padded with row -1,
        distance -1 when the graph yields fewer than k rows. A 1-D query gives nq = 1.
        """
        k = check_int("k", k)
        queries = _check_codes(queries, self.nbytes, "queries")
        nq = queries.shape[0]
        rows = np.full((nq, k), -1, dtype=np.int64)
        dists = np.full((nq, k), -1, dtype=np.int32)
        if nq == 0 or len(self._index) == 0:
            return rows, dists
        matches = self._index.search(queries, int(k), threads=int(threads))
        if nq == 1:  # usearch returns a single Matches for one query
            keys = [np.asarray(matches.keys)]
            found = [np.asarray(matches.distances)]
        else:
            keys = [matches.keys[i, : matches.counts[i]] for i in range(nq)]
            found = [matches.distances[i, : matches.counts[i]] for i in range(nq)]
        for i in range(nq):
            r = keys[i].astype(np.int64)
            d = np.rint(found[i]).astype(np.int32)
            order = np.lexsort((r, d))
            rows[i, : r.size] = r[order]
            dists[i, : r.size] = d[order]
        return rows, dists

    def save(self, path: str | os.PathLike) -> None:
        """Write the graph and codes to path (a temporary file, fsynced, then renamed)."""
        with atomic_path(path) as tmp:
            self._index.save(tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, *, view: bool = False) -> "ApproximateHammingIndex":
        """Read an index saved by save(); view=True maps it from disk instead of reading it.

        Raises IndexFileError for a missing, damaged or non-Hamming file.
        """
        usearch_index = _usearch_index_module()
        path = os.fspath(path)
        try:
            meta = usearch_index.Index.metadata(path)
        except Exception as exc:  # usearch raises RuntimeError/ValueError on bad headers
            raise IndexFileError(f"{path}: not a usearch index ({exc})") from exc
        if not meta:
            raise IndexFileError(f"{path}: missing or not a usearch index")
        metric, scalar = meta.get("kind_metric"), meta.get("kind_scalar")
        if metric != usearch_index.MetricKind.Hamming or scalar != usearch_index.ScalarKind.B1:
            raise IndexFileError(f"{path}: a usearch index of {metric}/{scalar}, not Hamming over bits")
        nbits = int(meta["dimensions"])
        self = cls.__new__(cls)
        self.nbits = check_nbits(nbits)
        self._index = usearch_index.Index(ndim=nbits, metric="hamming", dtype="b1")
        try:
            if view:
                self._index.view(path)
            else:
                self._index.load(path)
        except Exception as exc:
            raise IndexFileError(f"{path}: could not read the usearch index ({exc})") from exc
        return self
