"""The in-memory search side: an Index (str ids, the model's fingerprint) and, aligned with its
rows, the filter columns (modality, view position, study date, patient hash, seq).

Rebuilt from the database at start-up: the newest snapshot (an Index file named
``index-SEQ-DELETES.mhi``) is used when the database has had no delete since it was written
(``meta.deletes`` equals DELETES) and holds exactly its rows up to SEQ; rows added after SEQ
are then appended. Otherwise every code is read from the database. Either way the rows are in
``seq`` order, the order a fresh Index built from the database has.

Filters become one boolean mask over the rows, handed to Index.search(allow=...): they are
applied inside the scan, so k results come back whenever k rows qualify.
"""
from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .._ids import Growable
from .._rwlock import RWLock
from ..exceptions import IndexFileError
from ..index import Index
from .db import Database
from .groups import take_group

log = logging.getLogger("medhash.serve")

SNAPSHOT_DIR = "snapshots"
_SNAPSHOT = re.compile(r"^index-(\d+)-(\d+)\.mhi$")


@dataclass
class Filters:
    """Which stored items a search may return (None: no condition)."""

    modality: list[str] | None = None
    view_position: list[str] | None = None
    study_date_from: int | None = None     # YYYYMMDD, inclusive
    study_date_to: int | None = None
    exclude_patient: str | None = None     # patient hash whose items are skipped
    exclude_seq: int | None = None         # the query item itself: its database seq ...
    exclude_id: str | None = None          # ... and its id

    def any(self) -> bool:
        return any(v is not None for v in (self.modality, self.view_position, self.study_date_from,
                                           self.study_date_to, self.exclude_patient, self.exclude_seq))


def norm_term(value: Any) -> str | None:
    """Upper-case, stripped text of a DICOM code string (None for empty)."""
    if value is None:
        return None
    s = str(value).strip().upper()
    return s or None


def patient_key(h: str | None) -> int:
    """The patient hash as the uint64 kept in memory (0: unknown)."""
    return 0 if not h else (int(h[:16], 16) or 1)


class _Columns:
    """Numpy columns aligned with the Index rows, grown and shrunk like the Index's own arrays
    (medhash_sdk._ids.Growable: removing a few rows moves the later ones down in place)."""

    DTYPES = {"seq": np.int64, "modality": np.uint16, "view": np.uint16, "date": np.int32, "patient": np.uint64}

    def __init__(self) -> None:
        self.cols = {k: Growable.empty(t) for k, t in self.DTYPES.items()}

    @property
    def n(self) -> int:
        return self.cols["seq"].n

    def append(self, cols: dict[str, np.ndarray]) -> None:
        for k, g in self.cols.items():
            g.append(np.asarray(cols[k], dtype=self.DTYPES[k]))

    def drop(self, rows: np.ndarray) -> None:
        """Remove rows (sorted, unique), keeping the order of the others."""
        for g in self.cols.values():
            g.drop(rows)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.cols[name].data


class Catalog:
    """Index + filter columns under one reader-writer lock (searches share it, writes own it)."""

    def __init__(self, nbits: int, fingerprint: str):
        self.nbits, self.fingerprint = int(nbits), fingerprint
        self.index = Index(nbits=self.nbits, fingerprint=fingerprint)
        self.cols = _Columns()
        self._vocab: dict[str, int] = {}
        self.lock = RWLock()
        self.max_seq = 0          # largest seq applied
        self.deletes = 0          # meta.deletes as of the last applied write

    def __len__(self) -> int:
        return len(self.index)

    # ------------------------------------------------------------ values -> column codes
    def _term(self, value: Any) -> int:
        t = norm_term(value)
        if t is None:
            return 0
        code = self._vocab.get(t)
        if code is None:
            code = len(self._vocab) + 1
            if code > np.iinfo(np.uint16).max:
                raise ValueError("more than 65,535 distinct modality / view position values")
            self._vocab[t] = code
        return code

    def _columns(self, rows: list[tuple[Any, ...]]) -> dict[str, np.ndarray]:
        """rows of (seq, id, code, modality, view_position, study_date, patient_hash)."""
        return {"seq": np.fromiter((r[0] for r in rows), np.int64, len(rows)),
                "modality": np.fromiter((self._term(r[3]) for r in rows), np.uint16, len(rows)),
                "view": np.fromiter((self._term(r[4]) for r in rows), np.uint16, len(rows)),
                "date": np.fromiter((int(r[5] or 0) for r in rows), np.int32, len(rows)),
                "patient": np.fromiter((patient_key(r[6]) for r in rows), np.uint64, len(rows))}

    # ------------------------------------------------------------ writes (writer thread only)
    def append(self, rows: list[tuple[Any, ...]], codes: np.ndarray | None = None) -> None:
        """Append rows (seq, id, code bytes, modality, view_position, study_date, patient_hash)
        in seq order. Caller holds the write lock (or is the only thread, at start-up)."""
        if not rows:
            return
        if codes is None:
            codes = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.uint8).reshape(len(rows), -1)
        self.index.add(codes, ids=[r[1] for r in rows], fingerprint=self.fingerprint)
        self.cols.append(self._columns(rows))
        self.max_seq = max(self.max_seq, int(rows[-1][0]))

    def remove(self, ids: list[str], seqs: list[int]) -> None:
        """Remove stored items by id and seq (caller holds the write lock)."""
        if not ids:
            return
        self.index.remove(ids)
        self.cols.drop(np.flatnonzero(np.isin(self.cols["seq"], np.asarray(seqs, dtype=np.int64))))

    # ------------------------------------------------------------ reads (caller holds the read lock)
    def mask(self, f: Filters) -> np.ndarray | None:
        """Boolean (n,) of the rows a search may return, or None for all."""
        if not f.any():
            return None
        n = self.cols.n
        m = np.ones(n, dtype=bool)
        if f.modality is not None:
            codes = [self._vocab.get(t, -1) for t in (norm_term(v) for v in f.modality) if t]
            col = self.cols["modality"]
            m &= np.isin(col, np.asarray([c for c in codes if c >= 0], dtype=np.uint16))
        if f.view_position is not None:
            codes = [self._vocab.get(t, -1) for t in (norm_term(v) for v in f.view_position) if t]
            m &= np.isin(self.cols["view"], np.asarray([c for c in codes if c >= 0], dtype=np.uint16))
        if f.study_date_from is not None or f.study_date_to is not None:
            d = self.cols["date"]
            m &= d > 0
            if f.study_date_from is not None:
                m &= d >= f.study_date_from
            if f.study_date_to is not None:
                m &= d <= f.study_date_to
        if f.exclude_patient is not None:
            m &= self.cols["patient"] != np.uint64(patient_key(f.exclude_patient))
        if f.exclude_seq is not None:
            seqs = self.cols["seq"]
            row = int(np.searchsorted(seqs, f.exclude_seq))   # rows are in seq order
            if row < n and seqs[row] == f.exclude_seq:
                m[row] = False
        return m

    @staticmethod
    def plain(f: Filters) -> bool:
        """True when a search needs no mask: no filter, or only the query item left out."""
        return not replace(f, exclude_seq=None, exclude_id=None).any() and (
            f.exclude_seq is None or f.exclude_id is not None)

    def search(self, code: np.ndarray, k: int, f: Filters, threads: int = 1) -> list[tuple[str, int]]:
        """The k nearest stored items passing the filters: [(id, distance)], nearest first."""
        if self.plain(f):
            return self.search_plain(np.asarray(code)[None, :], [k], [f.exclude_id], threads)[0]
        with self.lock.read():
            mask = self.mask(f)
            res = self.index.search(code, k=k, threads=threads, allow=mask)
        return [(str(i), int(d)) for i, d in zip(res.ids, res.distances) if d >= 0]

    def search_plain(self, codes: np.ndarray, ks: list[int], exclude: list[str | None],
                     threads: int = 1) -> list[list[tuple[str, int]]]:
        """Unmasked searches in one scan. A query that leaves out its own item asks for one more:
        the top k + 1 without it are the top k of the rest (ties keep insertion order either way),
        and the top K's first k are the top k, so one K serves every query of the batch."""
        big = max(k + (x is not None) for k, x in zip(ks, exclude))
        with self.lock.read():
            res = self.index.search(codes, k=big, threads=threads)
        out = []
        for row_ids, row_d, k, x in zip(res.ids, res.distances, ks, exclude):
            hits = [(str(i), int(d)) for i, d in zip(row_ids, row_d) if d >= 0 and i != x]
            out.append(hits[:k])
        return out

    def code_of(self, item_id: str) -> np.ndarray | None:
        with self.lock.read():
            if item_id not in self.index:
                return None
            return self.index.get_codes([item_id])[0]

    # ------------------------------------------------------------ start-up and snapshots
    @classmethod
    def rebuild(cls, db: Database, nbits: int, fingerprint: str) -> Catalog:
        """The catalog of the database's items, from the newest usable snapshot plus the rows after it."""
        t0 = time.perf_counter()
        cat = cls(nbits, fingerprint)
        deletes = int(db.meta("deletes") or 0)
        cat.deletes = deletes
        snap = cat._usable_snapshot(db, deletes)
        if snap is not None:
            path, seq = snap
            cat.index = Index.load(path, fingerprint=fingerprint)
            for rows in db.iter_items(0, codes=False):
                rows = [r for r in rows if r[0] <= seq]
                if rows:
                    cat.cols.append(cat._columns(rows))
            cat.max_seq = seq
            for rows in db.iter_items(seq):
                cat.append(rows)
            newer = len(cat) - int(np.searchsorted(cat.cols["seq"], seq, side="right"))
            how = f"snapshot {path.name} + {newer} newer rows"
        else:
            for rows in db.iter_items(0):
                cat.append(rows)
            how = "database"
        if len(cat.index) != cat.cols.n:
            raise IndexFileError(f"catalog rebuild: {len(cat.index)} codes but {cat.cols.n} rows")
        log.info("catalog: %d items from the %s in %.2f s", len(cat), how, time.perf_counter() - t0)
        return cat

    def _usable_snapshot(self, db: Database, deletes: int) -> tuple[Path, int] | None:
        folder = db.folder / SNAPSHOT_DIR
        found = []
        for p in folder.glob("index-*.mhi") if folder.is_dir() else []:
            m = _SNAPSHOT.match(p.name)
            if m:
                found.append((int(m.group(1)), int(m.group(2)), p))
        for seq, dels, p in sorted(found, reverse=True):
            if dels != deletes:
                continue
            con = db.writer
            n = con.execute("SELECT COUNT(*) FROM items WHERE seq <= ?", (seq,)).fetchone()[0]
            try:
                with Index.view(p, fingerprint=self.fingerprint) as v:
                    ok = len(v) == n
                    if ok and n:
                        first, last = con.execute("SELECT (SELECT id FROM items ORDER BY seq LIMIT 1), "
                                                  "(SELECT id FROM items WHERE seq <= ? ORDER BY seq DESC LIMIT 1)",
                                                  (seq,)).fetchone()
                        ids = v.ids
                        ok = ids[0] == first and ids[-1] == last
            except (IndexFileError, OSError) as e:
                log.warning("snapshot %s not used: %s", p.name, e)
                continue
            if ok:
                return p, seq
            log.warning("snapshot %s does not match the database; not used", p.name)
        return None

    def snapshot(self, folder: Path, keep: int = 2) -> Path:
        """Save the Index as a snapshot (atomic write), delete all but the newest `keep`."""
        d = folder / SNAPSHOT_DIR
        d.mkdir(exist_ok=True)
        with self.lock.read():
            path = d / f"index-{self.max_seq}-{self.deletes}.mhi"
            self.index.save(path)
        olds = sorted((p for p in d.glob("index-*.mhi") if _SNAPSHOT.match(p.name) and p != path),
                      key=lambda p: p.stat().st_mtime, reverse=True)
        for p in olds[max(0, keep - 1):]:
            try:
                os.unlink(p)
            except OSError:
                pass
        return path


class Scanner:
    """One thread that runs the queued searches: those without a mask together, as one batch
    of queries in one scan of the codes (the engine reads the codes once for all of them), the
    others one by one. Concurrent requests thus share scans the way uploads share model runs."""

    def __init__(self, catalog: Catalog, threads: int = 1, max_batch: int = 64, on_scan: Any = None):
        self.catalog, self.threads, self.max_batch = catalog, int(threads), int(max_batch)
        self.on_scan = on_scan
        self._q: queue.Queue[tuple[np.ndarray, int, Filters, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="medhash-scanner", daemon=True)
        self._thread.start()

    def submit(self, code: np.ndarray, k: int, f: Filters) -> Future:
        fut: Future = Future()
        self._q.put((np.asarray(code, dtype=np.uint8), int(k), f, fut))
        return fut

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(10)

    def _loop(self) -> None:
        while True:
            jobs, stop = take_group(self._q, self.max_batch)
            plain = [j for j in jobs if Catalog.plain(j[2])]
            if self.on_scan is not None:
                for size in ([len(plain)] if plain else []) + [1] * (len(jobs) - len(plain)):
                    self.on_scan(size)
            try:
                if plain:
                    found = self.catalog.search_plain(np.stack([j[0] for j in plain]), [j[1] for j in plain],
                                                      [j[2].exclude_id for j in plain], self.threads)
                    for j, hits in zip(plain, found):
                        j[3].set_result(hits)
            except Exception as e:  # noqa: BLE001 - hand the error to every waiting request
                for j in plain:
                    if not j[3].done():
                        j[3].set_exception(e)
            for code, k, f, fut in jobs:
                if fut.done():
                    continue
                try:
                    fut.set_result(self.catalog.search(code, k, f, self.threads))
                except Exception as e:  # noqa: BLE001
                    fut.set_exception(e)
            if stop:
                return


class LoopScanner:
    """Unmasked searches issued on the event loop, batched without leaving it: every search that
    arrives during one turn of the loop joins one scan, run by a callback scheduled with
    call_soon. No thread hand-off (each costs a futex and a wake-up write) for the common case,
    a search by a stored id; the engine call blocks the loop for one batched scan."""

    def __init__(self, catalog: Catalog, threads: int = 1, on_scan: Any = None):
        self.catalog, self.threads, self.on_scan = catalog, int(threads), on_scan
        self._pending: list[tuple[np.ndarray, int, str | None, Any]] = []

    async def search(self, code: np.ndarray, k: int, f: Filters) -> list[tuple[str, int]]:
        import asyncio

        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((np.asarray(code, dtype=np.uint8), int(k), f.exclude_id, fut))
        return await fut

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if self.on_scan is not None:
            self.on_scan(len(batch))
        try:
            found = self.catalog.search_plain(np.stack([b[0] for b in batch]), [b[1] for b in batch],
                                              [b[2] for b in batch], self.threads)
        except Exception as e:  # noqa: BLE001 - every waiting request gets the error
            for b in batch:
                if not b[3].done():
                    b[3].set_exception(e)
            return
        for b, hits in zip(batch, found):
            if not b[3].done():
                b[3].set_result(hits)
