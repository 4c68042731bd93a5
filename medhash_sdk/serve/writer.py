"""Every write goes through one thread that commits in groups (group commit).

A request hands its write to the queue and waits on a future. The writer takes everything
queued (up to ``max_group``), runs it in one SQLite transaction, COMMITs (the WAL is fsynced:
synchronous=FULL), and only then applies the changes to the in-memory catalog and resolves
the futures. So a client is answered only after its write is durable, and 32 concurrent
writers cost one fsync per group instead of 32. The catalog changes in commit order: its rows
stay in seq order, the order of a fresh Index built from the database.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from .catalog import Catalog
from .db import Database
from .groups import take_group

log = logging.getLogger("medhash.serve")


class Conflict(Exception):
    """The id is stored already (HTTP 409)."""


class NotFound(KeyError):
    """No item with this id (HTTP 404)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class StorageError(Exception):
    """The database refused the write (disk full, I/O error): nothing was stored (HTTP 503)."""


@dataclass
class NewItem:
    """One item to store: its code and what is kept about it."""

    id: str
    code: bytes
    metadata: dict[str, Any]
    modality: str | None = None
    view_position: str | None = None
    study_date: int | None = None
    patient_hash: str | None = None
    thumbnail: bytes | None = None
    attention: bytes | None = None      # float16 (att_h, att_w)
    att_h: int = 0
    att_w: int = 0


ADD, PUT, KEEP, DELETE = "add", "put", "keep", "delete"


@dataclass
class _Op:
    kind: str                 # add (409 if present), put (replace), keep (present: leave it), delete
    item_id: str
    item: NewItem | None = None
    future: Future = field(default_factory=Future)


class Writer:
    def __init__(self, db: Database, catalog: Catalog, *, max_group: int = 256,
                 on_commit: Callable[[int, float], None] | None = None):
        self.db, self.catalog = db, catalog
        self.max_group = int(max_group)
        self.on_commit = on_commit          # (ops in the group, seconds) -> None, for metrics
        self.changes = 0                    # writes applied since start (for snapshots)
        self.broken: str | None = None      # set if memory and database ever disagree
        self._q: queue.Queue[_Op | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="medhash-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ API (any thread)
    def submit(self, kind: str, item_id: str, item: NewItem | None = None) -> Future:
        if self.broken or not self._thread.is_alive():
            raise StorageError(f"the writer has stopped{': ' + self.broken if self.broken else ''}")
        op = _Op(kind, item_id, item)
        self._q.put(op)
        return op.future

    def close(self, timeout: float = 30.0) -> None:
        self._q.put(None)
        self._thread.join(timeout)

    # ------------------------------------------------------------ the writer thread
    def _loop(self) -> None:
        while True:
            ops, stop = take_group(self._q, self.max_group)
            if not ops:
                return
            self._commit(ops)
            if stop:
                return

    def _commit(self, ops: list[_Op]) -> None:
        t0 = time.perf_counter()
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        outcome: list[tuple[_Op, Any]] = []
        effects: list[tuple[str, Any]] = []     # ("add", row) / ("remove", (id, seq)) in order
        try:
            with self.db.transaction() as con:
                deletes = int(self.db.read_meta(con, "deletes") or 0)
                d0 = deletes
                for op in ops:
                    old = con.execute("SELECT seq FROM items WHERE id = ?", (op.item_id,)).fetchone()
                    if op.kind == DELETE:
                        if old is None:
                            outcome.append((op, NotFound(f"no item {op.item_id!r}")))
                            continue
                        self._delete(con, old[0])
                        deletes += 1
                        effects.append(("remove", (op.item_id, old[0])))
                        outcome.append((op, "deleted"))
                        continue
                    if old is not None:
                        if op.kind == ADD:
                            outcome.append((op, Conflict(f"item {op.item_id!r} exists already: "
                                                         f"PUT /v1/items/{{id}} replaces it")))
                            continue
                        if op.kind == KEEP:
                            outcome.append((op, "exists"))
                            continue
                        self._delete(con, old[0])
                        deletes += 1
                        effects.append(("remove", (op.item_id, old[0])))
                    assert op.item is not None
                    row = self._insert(con, op.item, now)
                    effects.append(("add", row))
                    outcome.append((op, "replaced" if old is not None else "created"))
                if deletes != d0:
                    self.db.set_meta(con, "deletes", str(deletes))
        except Exception as e:  # noqa: BLE001 - the database refused: nobody's write is stored
            log.error("database write failed, %d writes refused: %s", len(ops), e)
            err = StorageError(f"the database could not store the write ({type(e).__name__}: {e})")
            for op in ops:
                op.future.set_exception(err)
            return
        # durable now: apply to the catalog in commit order, then answer
        try:
            with self.catalog.lock.write():
                pending: list[tuple[Any, ...]] = []
                for kind, x in effects:
                    if kind == "add":
                        pending.append(x)
                        continue
                    self.catalog.append(pending)
                    pending = []
                    self.catalog.remove([x[0]], [x[1]])
                self.catalog.append(pending)
                self.catalog.deletes = deletes
        except Exception as e:  # pragma: no cover - a bug: memory no longer matches the database
            log.critical("the in-memory index no longer matches the database; restart the service",
                         exc_info=True)
            self.broken = f"in-memory index out of step with the database ({type(e).__name__}: {e})"
            for op, _ in outcome:
                op.future.set_exception(StorageError(f"stored, but {self.broken}: restart the service"))
            raise
        self.changes += len(effects)
        for op, res in outcome:
            if isinstance(res, BaseException):
                op.future.set_exception(res)
            else:
                op.future.set_result(res)
        if self.on_commit is not None:
            self.on_commit(len(ops), time.perf_counter() - t0)

    @staticmethod
    def _delete(con: Any, seq: int) -> None:
        con.execute("DELETE FROM images WHERE seq = ?", (seq,))
        con.execute("DELETE FROM items WHERE seq = ?", (seq,))

    @staticmethod
    def _insert(con: Any, it: NewItem, now: str) -> tuple[Any, ...]:
        cur = con.execute(
            "INSERT INTO items (id, code, metadata, modality, view_position, study_date, patient_hash, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (it.id, it.code, json.dumps(it.metadata, ensure_ascii=False, sort_keys=True), it.modality,
             it.view_position, it.study_date, it.patient_hash, now))
        seq = int(cur.lastrowid)
        if it.thumbnail is not None and it.attention is not None:
            con.execute("INSERT INTO images VALUES (?, ?, ?, ?, ?)",
                        (seq, it.thumbnail, it.attention, it.att_h, it.att_w))
        return (seq, it.id, it.code, it.modality, it.view_position, it.study_date, it.patient_hash)
