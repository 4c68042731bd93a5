"""Index: exact Hamming search over packed binary codes, with ids, masks and safe files.

    idx = Index(nbits=64, fingerprint=enc.fingerprint)
    ids = idx.add(codes)                          # auto int64 ids, or ids=[...] (int64 or str)
    res = idx.search(query, k=10, deny=[own_id])  # SearchResult(ids, distances)
    idx.save("chest.mhi"); idx = Index.load("chest.mhi"); view = Index.view("chest.mhi")

Storage: the codes live in one contiguous uint8 array (n, nbits // 8) with spare capacity
(amortised appends); ids in flat numpy arrays (see _ids.py), never one Python object per
row. Row order is insertion order, and remove() compacts the rows keeping that order, so
equal distances always rank the earlier-added item first. The scan itself is the compiled
engine medhash_sdk._hamming (GIL released); medhash_sdk.codes.brute_force_search is its spec.

Threads: any number of threads may search at once; add()/remove() take an exclusive lock
(a reader-writer lock, writers preferred), so a search sees the index before or after a
write, never halfway.
"""
from __future__ import annotations

import mmap
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _index_file
from ._ids import DROP_IN_PLACE_MAX, INT64, STR, Growable, IntIds, StrIds, classify_ids, repeated
from ._rwlock import RWLock
from ._system import available_cpus
from .codes import check_nbits, code_order
from .exceptions import IndexFileError, ModelMismatchError
from .validation import check_int

_THREADS_HINT = " (0 means every core this process may use)"

__all__ = ["Index", "MultiIndexInfo", "SearchResult"]

_IdStore = IntIds | StrIds


def _engine() -> Any:
    try:
        from . import _hamming
    except ImportError as e:  # pragma: no cover - depends on the build
        raise ImportError(
            "medhash_sdk._hamming, the compiled search engine, is not built: install the package "
            "with `pip install .` (or `pip install -e . --no-build-isolation` in a checkout)") from e
    return _hamming


@dataclass(frozen=True)
class SearchResult:
    """Result of Index.search.

    ids: for a 1-D query, shape (k,); for a batch of nq queries, shape (nq, k). int64 for an
        index with int ids, an object array of str for string ids. Nearest first; equal
        distances keep insertion order.
    distances: int32 Hamming distances, same shape.
    When fewer than k rows qualify (small index, or a mask), the tail is padded with id -1
    (int ids) or None (str ids) and distance -1.
    Unpacks as a pair: ``ids, distances = idx.search(q)``.
    """

    ids: np.ndarray
    distances: np.ndarray

    def __iter__(self) -> Any:
        return iter((self.ids, self.distances))


@dataclass(frozen=True)
class MultiIndexInfo:
    """What Index.build_multi_index() built.

    substrings: how many groups of bits a code is cut into; widths: their sizes in bits.
    rows: rows the tables cover (rows added later are scanned until the next rebuild).
    memory_bytes: size of the tables. build_seconds: time the build took.
    copied_codes: whether each table holds its own copy of the codes (build_multi_index).
    """

    substrings: int
    widths: tuple[int, ...]
    rows: int
    memory_bytes: int
    build_seconds: float
    copied_codes: bool = False


def _check_fingerprint_arg(fingerprint: Any) -> str | None:
    if fingerprint is None:
        return None
    if not isinstance(fingerprint, str):
        raise TypeError(f"fingerprint must be a str (e.g. Encoder.fingerprint) or None, got {type(fingerprint).__name__}")
    if len(fingerprint.encode("utf-8")) > _index_file.MAX_FINGERPRINT_BYTES:
        raise ValueError(f"fingerprint must be at most {_index_file.MAX_FINGERPRINT_BYTES} bytes of UTF-8")
    return fingerprint


class Index:
    """Exact nearest-neighbour search by Hamming distance over packed binary codes.

    Index(nbits=64, fingerprint=None)
        nbits: bits a code (a positive multiple of 8; a code is nbits // 8 bytes).
        fingerprint: the model that made the codes (Encoder.fingerprint). add(), search() and
            Index.load()/view() take fingerprint= too and raise ModelMismatchError when it
            differs, so codes of two models are never mixed.

    Ids are int64 (>= 0) or str (accession numbers, UIDs), fixed by the first add() that
    brings ids (id_type is None before). Duplicates are refused. Bad arguments raise
    ValueError/TypeError; bad files raise medhash_sdk.exceptions.IndexFileError.
    """

    def __init__(self, nbits: int = 64, fingerprint: str | None = None):
        self._nbits = check_nbits(nbits)
        self._nbytes = self._nbits // 8
        self._fingerprint = _check_fingerprint_arg(fingerprint)
        self._codes = Growable.empty(np.uint8, (self._nbytes,))
        self._ids: _IdStore | None = None
        self._next_id = 0
        self._lock = RWLock()
        self._mm: mmap.mmap | None = None
        self._header: _index_file.Header | None = None
        self._path: str | None = None
        self._version = 0  # bumped by every add()/remove(): tells a stale HNSW graph
        self._approx: tuple[Any, int] | None = None  # (ApproximateHammingIndex, _version)
        # multi-index hashing: wanted (substrings or None, copy_codes) once build_multi_index() was called;
        # the tables themselves (a few removed rows leave them in place; more drop them, and the
        # next search rebuilds them)
        self._multi_wanted: tuple[int | None, bool] | None = None
        self._multi: Any = None
        self._multi_build = threading.Lock()

    # ------------------------------------------------------------------ properties

    @property
    def nbits(self) -> int:
        return self._nbits

    @property
    def fingerprint(self) -> str | None:
        return self._fingerprint

    @property
    def id_type(self) -> str | None:
        """'int64' or 'str'; None until the first add() (an empty index takes either)."""
        return None if self._ids is None else self._ids.kind

    @property
    def read_only(self) -> bool:
        """True for Index.view(): add() and remove() raise; use Index.load() to modify."""
        return self._mm is not None

    @property
    def ids(self) -> np.ndarray:
        """All ids in row (insertion) order: a copy, int64 or an object array of str."""
        with self._lock.read():
            if self._ids is None:
                return np.empty(0, dtype=np.int64)
            return self._ids.all()

    @property
    def codes(self) -> np.ndarray:
        """All codes in row (insertion) order, uint8 (n, nbits // 8): a copy, aligned with `ids`."""
        with self._lock.read():
            return self._codes.data[: self._codes.n].copy()

    def __len__(self) -> int:
        return self._codes.n

    def __contains__(self, id_: Any) -> bool:
        with self._lock.read():
            if self._ids is None or not len(self._ids):
                return False
            try:
                prepared = self._ids.prepare(id_)
            except (TypeError, ValueError):
                return False
            return bool(self._ids.size(prepared) == 1 and self._ids.rows(prepared)[0] >= 0)

    def __repr__(self) -> str:
        kind = f"view of {self._path!r}" if self.read_only else "in memory"
        return (f"Index(nbits={self._nbits}, n={len(self)}, id_type={self.id_type!r}, "
                f"fingerprint={self._fingerprint!r}, {kind})")

    # ------------------------------------------------------------------ checks

    def check_fingerprint(self, fingerprint: str | None) -> None:
        """Raise ModelMismatchError unless fingerprint is the one this index was built for."""
        if fingerprint != self._fingerprint:
            raise ModelMismatchError(
                f"these codes come from model {fingerprint!r} but the index holds codes of model "
                f"{self._fingerprint!r}; encode with the index's model or build a new index")

    def _as_codes(self, codes: Any, what: str) -> tuple[np.ndarray, bool]:
        """(uint8 C-contiguous (n, nbytes), was it 1-D) or TypeError/ValueError."""
        a = codes if isinstance(codes, np.ndarray) else np.asarray(codes)
        if a.dtype != np.uint8:
            hint = (" (bits? pack them: np.packbits(bits, axis=-1))" if a.dtype == bool else
                    " (logits? binarise and pack them: medhash_sdk.codes.pack_codes(logits))"
                    if a.dtype.kind == "f" else "")
            raise TypeError(f"{what} must be packed codes of dtype uint8, got {a.dtype}{hint}")
        if a.ndim not in (1, 2):
            raise ValueError(f"{what} must be one code (nbytes,) or a batch (n, nbytes), got shape {a.shape}")
        if a.shape[-1] != self._nbytes:
            raise ValueError(
                f"{what} have {a.shape[-1]} bytes ({a.shape[-1] * 8} bits) a code but this index holds "
                f"{self._nbits}-bit codes ({self._nbytes} bytes): use codes of the index's model or "
                f"Index(nbits={a.shape[-1] * 8})")
        one = a.ndim == 1
        return np.ascontiguousarray(a.reshape(1, -1) if one else a), one

    def _check_writable(self) -> None:
        if self._mm is not None:
            raise ValueError(f"this Index is a read-only view of {self._path!r}; use Index.load(path) "
                             f"for an index you can add to or remove from")

    def _new_store(self, kind: str) -> _IdStore:
        return IntIds() if kind == INT64 else StrIds()

    # ------------------------------------------------------------------ add / remove

    def add(self, codes: Any, ids: Any = None, *, fingerprint: str | None = None) -> np.ndarray:
        """Append codes; return their ids (int64 array, or an object array of str).

        codes: uint8 (n, nbits // 8), or one code (nbits // 8,).
        ids: None for automatic int64 ids (one more than the largest id ever added, counting
            up), or n ids: int64 (>= 0) or str, all of one kind, none already in the index.
        fingerprint: the model that made these codes; ModelMismatchError if it is not the
            index's (an index created without one adopts it while empty).
        Nothing is added if anything is wrong.
        """
        self._check_writable()
        fingerprint = _check_fingerprint_arg(fingerprint)
        c, _ = self._as_codes(codes, "codes")
        m = len(c)
        with self._lock.write():
            adopt = fingerprint is not None and self._fingerprint is None and len(self) == 0
            if fingerprint is not None and not adopt:
                self.check_fingerprint(fingerprint)
            store = self._ids
            if ids is None:
                if store is not None and store.kind == STR and len(store):
                    raise ValueError("this index uses str ids: pass ids=[...] with one string a code")
                if store is None or store.kind != INT64:
                    store = IntIds()
                prepared: Any = np.arange(self._next_id, self._next_id + m, dtype=np.int64)
            else:
                kind = classify_ids(ids)
                if store is None or (not len(store) and store.kind != kind):
                    store = self._new_store(kind)
                prepared = store.prepare(ids)
                count = store.size(prepared)
                if count != m:
                    raise ValueError(f"got {m} codes but {count} ids: pass one id a code")
                dup = store.duplicates_within(prepared)
                if dup:
                    raise ValueError(f"duplicate ids in this call, e.g. {dup}: ids must be unique")
                if len(store):
                    rows = store.rows(prepared)
                    present = np.flatnonzero(rows >= 0)
                    if present.size:
                        shown = store.take(rows[present[:5]]).tolist()
                        raise ValueError(f"{present.size} ids are already in the index, e.g. {shown}: "
                                         f"remove() them first or use new ids")
            n_old = self._codes.n
            self._codes.append(c)
            try:
                store.append(prepared)
            except BaseException:
                self._codes.n = n_old
                raise
            self._ids = store
            self._version += 1
            if adopt:
                self._fingerprint = fingerprint
            if store.kind == INT64 and m:
                self._next_id = max(self._next_id, int(prepared.max()) + 1)
            return store.as_array(prepared)

    def remove(self, ids: Any) -> int:
        """Remove these ids (int64 or str, like the index's); return how many were removed.

        Raises KeyError, removing nothing, if any id is not in the index. The remaining rows
        keep their order, so ties still rank by insertion order. Costs O(len(index)): a few ids
        move the rows after them down in place (milliseconds at 10M rows), many are one pass
        that gathers what is kept.
        """
        self._check_writable()
        with self._lock.write():
            store = self._ids
            if store is None or not len(store):
                if np.size(np.asarray(ids, dtype=object)) == 0:
                    return 0
                raise KeyError("the index is empty: no ids to remove")
            prepared = store.prepare(ids)
            rows = store.rows(prepared)
            missing = np.flatnonzero(rows < 0)
            if missing.size:
                items = prepared if store.kind == INT64 else prepared[0]
                shown = [items[int(i)] for i in missing[:5]]
                shown = [int(x) for x in shown] if store.kind == INT64 else shown
                raise KeyError(f"{missing.size} ids are not in the index, e.g. {shown}; nothing was removed")
            drop = np.unique(rows)   # sorted; an id listed twice is removed once
            if len(drop):
                self._drop_from_multi_index(drop)
                self._codes.drop(drop)
                store.drop(drop)
                self._version += 1
            return len(drop)

    def sort_by_code(self) -> None:
        """Reorder the rows by code (medhash_sdk.codes.code_order), so that near codes sit
        next to each other in memory, as PostgreSQL's CLUSTER orders a table by an index.

        What for: multi-index searches (build_multi_index) read the rows they check one at a
        time from all over the codes; with near codes stored together those reads share cache
        lines. On 10M 64-bit codes grown from real ones, k = 100 took about 0.65x the time
        (README, multi-index benchmark). The scan's speed does not change.
        What changes: the row order, and with it the tie rule's "insertion order": from now
        on equal distances rank in code order (equal codes keep their earlier order), like
        Index.ids and Index.codes. Ids, codes and the distances of a search do not change;
        rows added later go after the sorted ones. Multi-index tables are rebuilt at the next
        search. Costs a sort and a copy of the codes and ids (2 s at 10M rows, and 1.5 s more at
        the next id lookup, which rebuilds the id -> row map).
        """
        self._check_writable()
        with self._lock.write():
            n = len(self)
            if n < 2 or self._ids is None:
                return
            order = code_order(self._codes.data)
            if np.array_equal(order, np.arange(n)):
                return
            self._codes = Growable(self._codes.data[order])
            self._ids.reorder(order)
            self._version += 1
            self._multi = None  # still wanted: the next search rebuilds the tables

    def get_codes(self, ids: Any) -> np.ndarray:
        """Codes of these ids, uint8 (m, nbytes) (a copy); KeyError if one is absent."""
        with self._lock.read():
            if self._ids is None:
                raise KeyError("the index is empty")
            prepared = self._ids.prepare(ids)
            rows = self._ids.rows(prepared)
            if np.any(rows < 0):
                raise KeyError(f"{int(np.count_nonzero(rows < 0))} ids are not in the index")
            return self._codes.data[rows].copy()

    # ------------------------------------------------------------------ search

    def _mask(self, allow: Any, deny: Any) -> np.ndarray | None:
        """uint8 (n,) of rows to scan, or None for all. Caller holds the lock."""
        if allow is not None and deny is not None:
            raise ValueError("pass allow= or deny=, not both")
        spec = allow if allow is not None else deny
        if spec is None:
            return None
        n = len(self)
        if isinstance(spec, (list, tuple)) and spec and all(isinstance(x, (bool, np.bool_)) for x in spec):
            spec = np.asarray(spec, dtype=bool)
        if isinstance(spec, np.ndarray) and spec.dtype == bool:
            if spec.shape != (n,):
                raise ValueError(f"a boolean mask needs one entry per row of the index, shape ({n},), "
                                 f"got {spec.shape}; or pass a list of ids")
            keep = spec if allow is not None else ~spec
            return np.ascontiguousarray(keep).view(np.uint8)
        if self._ids is None or n == 0:
            return np.zeros(n, dtype=np.uint8)
        prepared = self._ids.prepare(spec)
        rows = self._ids.rows(prepared)
        rows = rows[rows >= 0]
        if allow is not None:
            mask = np.zeros(n, dtype=np.uint8)
            mask[rows] = 1
        else:
            mask = np.ones(n, dtype=np.uint8)
            mask[rows] = 0
        return mask

    def search(self, queries: Any, k: int = 10, threads: int = 0, *, allow: Any = None, deny: Any = None,
               fingerprint: str | None = None, approximate: bool = False) -> SearchResult:
        """The k nearest codes by Hamming distance, exactly (equal to a brute-force scan).

        queries: uint8 one code (nbytes,) -> results of shape (k,); or (nq, nbytes) -> (nq, k).
        k: >= 1, any size; fewer than k qualifying rows pad with -1 / None, distance -1.
        threads: cores for the scan; 0 means the cores this process may use (affinity and
            cgroup quota).
        allow / deny (one of them): which rows the scan may return, applied inside the scan
            (the engine skips the rows; nothing is over-fetched), the same for every query of
            the batch. Either ids (a list/array of the index's ids; ids not in the index are
            ignored), e.g. deny=ids_of_the_same_patient, or a boolean array with one entry per
            current row, in the order of Index.ids (True = allowed for allow=, True =
            excluded for deny=).
        fingerprint: the model that made the queries; ModelMismatchError if not the index's.
        approximate: walk the HNSW graph of build_approximate() instead of scanning every
            code (faster on large clustered collections, may miss neighbours; distances are
            still exact). No allow/deny with it.
        Ties: equal distances rank in insertion order (kept through remove()).
        """
        if fingerprint is not None:
            self.check_fingerprint(_check_fingerprint_arg(fingerprint))
        q, one = self._as_codes(queries, "queries")
        k = check_int("k", k)
        threads = check_int("threads", threads, minimum=0, hint=_THREADS_HINT) or available_cpus()
        with self._lock.read():
            if approximate:
                rows, dist = self._approximate(q, k, threads, allow, deny)
            else:
                rows, dist = self._scan(q, k, threads, self._mask(allow, deny))
            if self._ids is None:
                ids = rows
            else:
                ids = self._ids.take(rows)
        if one:
            ids, dist = ids[0], dist[0]
        return SearchResult(ids, dist)

    def _scan(self, q: np.ndarray, k: int, threads: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The exact engine over the current rows, padded to k. Caller holds the lock."""
        nq, kk = len(q), min(k, len(self))
        if not (kk and nq):
            return np.full((nq, k), -1, dtype=np.int64), np.full((nq, k), -1, dtype=np.int32)
        rows, dist = _engine().search(self._codes.data, q, kk, threads, mask, self._current_multi(threads))
        if kk < k:
            rows = np.concatenate([rows, np.full((nq, k - kk), -1, np.int64)], axis=1)
            dist = np.concatenate([dist, np.full((nq, k - kk), -1, np.int32)], axis=1)
        return rows, dist

    # ------------------------------------------------------------------ multi-index hashing

    def build_multi_index(self, substrings: int | None = None, *, threads: int = 0,
                          copy_codes: bool = False) -> MultiIndexInfo:
        """Build multi-index hashing tables (Norouzi et al. 2014) so that search() reads only
        the rows near each query instead of every row. Results stay exactly those of the scan,
        ties and allow/deny included.

        substrings: how many groups of bits (each <= 32 bits) a code is cut into; None
        chooses at most log2(len(index)) bits each. threads: cores for the build (0: all).
        search() uses the tables for a query when they find its answer with less work than a
        scan would take, else scans: on codes without near neighbours (e.g. uniform random)
        the tables are tried now and then and cost little. Rows added later are scanned
        until the tables no longer cover 8/9 of the rows, then rebuilt at the next search;
        remove() of up to 8 rows takes them out of the tables in place; more drop the tables
        and the next search rebuilds them. They live in memory only:
        after Index.load()/view(), call build_multi_index() again. Costs about
        4 * substrings + 4 bytes a row. Rows stored in code order (sort_by_code(), which
        changes the tie order) make the tables 1.5-2.3x faster on learned codes.

        copy_codes: each table also keeps a copy of the codes in its own order, so a query
        reads the codes it checks in sequence rather than one random read each: about 1.6x
        faster on 10M 64-bit learned codes (3-5x at 100M), for (nbytes + 4) * substrings + 4
        bytes a row (at 64 bits: 2.4x the codes plus int64 ids instead of 0.9x; README,
        multi-index benchmark).
        """
        if substrings is not None:
            substrings = check_int("substrings", substrings)
        if not isinstance(copy_codes, bool):
            raise TypeError(f"copy_codes must be True or False, got {type(copy_codes).__name__}")
        threads = check_int("threads", threads, minimum=0, hint=_THREADS_HINT) or available_cpus()
        with self._lock.read():  # the engine refuses codes over 2048 bits, saying why
            t0 = time.perf_counter()
            with self._multi_build:
                multi = _engine().build_multi_index(self._codes.data, substrings, threads, copy_codes)
                self._multi, self._multi_wanted = multi, (substrings, copy_codes)
            return self._multi_info(multi, time.perf_counter() - t0)

    @staticmethod
    def _multi_info(multi: Any, seconds: float) -> MultiIndexInfo:
        return MultiIndexInfo(multi.substrings, tuple(multi.widths), multi.rows, multi.memory_bytes, seconds,
                              multi.copied_codes)

    def drop_multi_index(self) -> None:
        """Forget the multi-index tables: search() scans every row again."""
        with self._multi_build:
            self._multi, self._multi_wanted = None, None

    @property
    def multi_index(self) -> MultiIndexInfo | None:
        """The tables search() uses now (None when build_multi_index() was not called)."""
        multi = self._multi
        return None if multi is None else self._multi_info(multi, 0.0)

    def _drop_from_multi_index(self, rows: np.ndarray) -> None:
        """Before the codes lose rows (sorted, unique): a few leave the multi-index tables in
        place (their row numbers shift like the codes'); more drop the tables, and the next
        search rebuilds them. Caller holds the write lock."""
        if self._multi is None:
            return
        if len(rows) > DROP_IN_PLACE_MAX:
            self._multi = None
            return
        try:
            self._multi.remove_rows(self._codes.data, rows)
        except RuntimeError:   # tables out of step with the codes (never expected): rebuild them
            self._multi = None

    @staticmethod
    def _multi_stale(multi: Any, n: int) -> bool:
        """Dropped (by remove()), or the rows added since the build are over 1/8 of those it covers."""
        return multi is None or n - multi.rows > multi.rows // 8

    def _current_multi(self, threads: int) -> Any:
        """The tables for a search, rebuilt first when remove() dropped them or when too many
        rows were added since; while another search rebuilds them, None (scan). Caller holds
        the read lock."""
        if self._multi_wanted is None:
            return None
        multi = self._multi
        n = len(self)
        if not self._multi_stale(multi, n):
            return multi
        if not self._multi_build.acquire(blocking=False):
            return multi if multi is not None and multi.rows <= n else None  # another search rebuilds: scan
        try:
            wanted, multi = self._multi_wanted, self._multi
            if wanted is None:
                return None
            if self._multi_stale(multi, n):
                multi = _engine().build_multi_index(self._codes.data, wanted[0], threads, wanted[1])
                self._multi = multi
            return multi
        finally:
            self._multi_build.release()

    def build_approximate(self, *, connectivity: int = 16, expansion_add: int = 128,
                          expansion_search: int = 64, threads: int = 0) -> None:
        """Build an HNSW graph (medhash_sdk.approx, usearch) over the current codes, for
        search(approximate=True). It pays off past ~10M clustered codes; on uniform codes the
        exact scan is faster. Kept in memory only (not saved); any later add() or remove()
        makes it stale, and search(approximate=True) then asks for a rebuild.
        """
        from .approx import ApproximateHammingIndex

        threads = check_int("threads", threads, minimum=0, hint=_THREADS_HINT) or available_cpus()
        ann = ApproximateHammingIndex(self._nbits, connectivity=connectivity, expansion_add=expansion_add,
                                      expansion_search=expansion_search)
        with self._lock.read():
            ann.add(self._codes.data, np.arange(len(self), dtype=np.int64), threads=threads)
            self._approx = (ann, self._version)

    def _approximate(self, q: np.ndarray, k: int, threads: int, allow: Any, deny: Any) -> tuple[np.ndarray, np.ndarray]:
        if allow is not None or deny is not None:
            raise ValueError("allow=/deny= need the exact scan: drop approximate=True (an HNSW walk "
                             "cannot apply a mask without over-fetching)")
        approx = self._approx
        if approx is None or approx[1] != self._version:
            raise ValueError("approximate=True needs build_approximate() after the last add()/remove()")
        rows, dist = approx[0].search(q, k, threads=threads)
        return rows, dist

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to path atomically (temp file, fsync, rename, fsync of the directory).

        A crash or kill during save() leaves the previous file at path whole. The file
        records the format version, nbits, count, id type, fingerprint and a checksum of
        every byte (see medhash_sdk/_index_file.py).
        """
        with self._lock.read():
            store = self._ids or IntIds()
            if isinstance(store, IntIds):
                ids, blob, hashes = store.col.data, None, None
            else:
                ids, blob, hashes = store.offsets.data, store.blob.data, store.hashes.data
            _index_file.write(path, nbits=self._nbits, id_type=store.kind, next_id=self._next_id,
                              fingerprint=self._fingerprint, codes=self._codes.data, ids=ids,
                              blob=blob, hashes=hashes)

    @classmethod
    def _from_contents(cls, c: _index_file.Contents) -> Index:
        idx = cls(c.header.nbits, c.fingerprint)
        idx._codes = Growable(c.codes)
        if c.header.id_type == INT64:
            idx._ids = IntIds(c.ids)
        else:
            assert c.blob is not None and c.hashes is not None
            idx._ids = StrIds(c.blob, c.ids, c.hashes)
        idx._next_id = c.header.next_id
        return idx

    @staticmethod
    def _expect(fingerprint: str | None, found: str | None, path: Any) -> None:
        if fingerprint is not None and fingerprint != found:
            raise ModelMismatchError(
                f"{os.fspath(path)!r} holds codes of model {found!r}, not {fingerprint!r}: "
                f"it was built with another model")

    @classmethod
    def load(cls, path: str | os.PathLike, *, fingerprint: str | None = None) -> Index:
        """Read an index file into memory, checking every byte against its checksum.

        Raises IndexFileError if the file is truncated, damaged, not an index, or of a format
        version this SDK cannot read (the message says how to upgrade); ModelMismatchError if
        fingerprint is given and the file was built for another model; OSError (e.g.
        FileNotFoundError) if it cannot be opened.
        """
        fingerprint = _check_fingerprint_arg(fingerprint)
        c = _index_file.read(path)
        cls._expect(fingerprint, c.fingerprint, path)
        idx = cls._from_contents(c)
        if isinstance(idx._ids, IntIds):  # auto ids must never collide, whatever the header says
            idx._next_id = max(idx._next_id, idx._ids.max_id() + 1)
        return idx

    @classmethod
    def view(cls, path: str | os.PathLike, *, fingerprint: str | None = None) -> Index:
        """Open an index file read-only by memory-mapping it: instant, whatever its size.

        Only the header and the sizes are checked (header CRC, sizes and offsets against the
        file's length), so nothing is read beyond the file; the codes and ids are NOT checked
        against the checksum, since that would read everything. Call verify() for that. A
        damaged payload can therefore give wrong answers until verify() is run, but never a
        crash. add() and remove() raise on a view; use load() to modify an index. The file
        must not be truncated in place while mapped (save() never does: it renames).
        Use `with Index.view(p) as idx:` or close() to unmap it.
        """
        fingerprint = _check_fingerprint_arg(fingerprint)
        c, mm = _index_file.map_file(path)
        try:
            cls._expect(fingerprint, c.fingerprint, path)
            idx = cls._from_contents(c)
        except BaseException:
            del c
            mm.close()
            raise
        idx._mm, idx._header, idx._path = mm, c.header, os.fspath(path)
        return idx

    def verify(self) -> None:
        """Check everything: for a view, the checksum of every byte of the mapped file (what
        load() checks) and the ids; for an in-memory index, the consistency of its arrays.

        Raises IndexFileError when something is wrong; returns None otherwise.
        """
        with self._lock.read():
            if self._mm is not None:
                assert self._header is not None
                _index_file.verify_mapping(self._mm, self._header)
            if self._codes.data.shape != (len(self), self._nbytes):
                raise IndexFileError("the codes array has the wrong shape")
            store = self._ids
            if store is None:
                return
            if len(store) != len(self):
                raise IndexFileError(f"{len(store)} ids for {len(self)} codes")
            if isinstance(store, IntIds):
                keys = store.keys()
                if len(keys) and int(keys.min()) < 0:
                    raise IndexFileError("the index holds negative ids")
                if len(repeated(keys)):
                    raise IndexFileError("the index holds duplicate ids")
            else:
                problem = store.check()
                if problem:
                    raise IndexFileError(problem)
                from ._ids import hash_bytes
                off, blob = store.offsets.data, store.blob.data
                enc = [blob[int(off[i]) : int(off[i + 1])].tobytes() for i in range(len(store))]
                if not np.array_equal(hash_bytes(enc), store.keys()):
                    raise IndexFileError("string id hashes do not match the ids")
                if len(set(enc)) != len(enc):
                    raise IndexFileError("the index holds duplicate ids")

    def close(self) -> None:
        """Unmap a view (no-op for an in-memory index). The index is empty afterwards."""
        with self._lock.write():
            mm = self._mm
            if mm is None:
                return
            self._codes = Growable.empty(np.uint8, (self._nbytes,))
            self._ids = None
            try:
                mm.close()
            except BufferError:
                pass  # arrays handed out earlier still use the mapping; it closes when they go

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
