"""The data folder and its SQLite database: the service's source of truth.

    DATA_DIR/
      medhash.sqlite3 (+ -wal, -shm)   items, item images, tokens, meta
      snapshots/index-SEQ-DELETES.mhi  Index snapshots for fast starts (medhash_sdk.index format)
      audit.jsonl                      append-only audit log

WAL journal with synchronous=FULL: a COMMIT returns only after the WAL is fsynced, so a write
that was answered survives a crash or a power cut. Items keep their insertion order in
``seq`` (AUTOINCREMENT: never reused, even after deletes), which is also the row order of the
in-memory Index. ``meta.deletes`` counts every removal; a snapshot is valid for the database
when it names the same count (see catalog.py).

Patient identifiers are never stored: ``patient_hash`` is HMAC-SHA256(salt, patient id) with a
random per-folder salt, used only to exclude a query's own patient from its results.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..exceptions import MedhashError

SCHEMA_VERSION = "1"
DB_NAME = "medhash.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    code BLOB NOT NULL,
    metadata TEXT NOT NULL,
    modality TEXT,
    view_position TEXT,
    study_date INTEGER,
    patient_hash TEXT,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    seq INTEGER PRIMARY KEY,
    thumbnail BLOB NOT NULL,
    attention BLOB NOT NULL,
    att_h INTEGER NOT NULL,
    att_w INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('read', 'write')),
    hash TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL
);
"""


class DataFolderError(MedhashError):
    """The data folder cannot be used (another model, a newer schema, not a data folder)."""


@dataclass
class ItemRow:
    """One stored item as read back from the database."""

    seq: int
    id: str
    code: bytes
    metadata: str
    modality: str | None
    view_position: str | None
    study_date: int | None
    patient_hash: str | None
    created: str


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, synchronous=FULL."""
    if readonly:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                              check_same_thread=False, timeout=30)
    else:
        con = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA busy_timeout=30000")
    return con


class Database:
    """The data folder's database. One writer connection (used by one thread at a time: the
    writer thread, or start-up code), and one read-only connection per reading thread."""

    def __init__(self, folder: str | os.PathLike[str], *, create: bool = True):
        self.folder = Path(folder)
        if not self.folder.exists():
            if not create:
                raise DataFolderError(f"{self.folder} does not exist")
            self.folder.mkdir(parents=True)
        elif not self.folder.is_dir():
            raise DataFolderError(f"{self.folder} is not a folder")
        self.path = self.folder / DB_NAME
        if not self.path.exists() and any(p for p in self.folder.iterdir() if not p.name.startswith(".")):
            raise DataFolderError(f"{self.folder} is not empty and holds no {DB_NAME}: "
                                  "give an empty or new folder, or a medhash data folder")
        self.writer = connect(self.path)
        self.writer.executescript(SCHEMA)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        with self.transaction() as con:
            version = self.read_meta(con, "schema_version")
            if version is None:
                con.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
                con.execute("INSERT INTO meta VALUES ('salt', ?)", (secrets.token_hex(32),))
                con.execute("INSERT INTO meta VALUES ('deletes', '0')")
            elif version != SCHEMA_VERSION:
                raise DataFolderError(f"{self.path} has schema version {version}; this medhash-sdk "
                                      f"reads version {SCHEMA_VERSION}: upgrade medhash-sdk")
        self._salt = bytes.fromhex(self.meta("salt") or "")

    # ------------------------------------------------------------ connections
    def transaction(self) -> Any:
        """`with db.transaction() as con:` BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""
        return _Transaction(self.writer)

    def reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (WAL: readers never block the writer)."""
        con = getattr(self._local, "con", None)
        if con is None:
            con = connect(self.path, readonly=True)
            con.execute("PRAGMA query_only=1")
            self._local.con = con
            with self._readers_lock:
                self._readers.append(con)
        return con

    def close(self) -> None:
        with self._readers_lock:
            for con in self._readers:
                con.close()
            self._readers.clear()
        self.writer.close()

    # ------------------------------------------------------------ meta
    @staticmethod
    def read_meta(con: sqlite3.Connection, key: str) -> str | None:
        row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def meta(self, key: str) -> str | None:
        return self.read_meta(self.writer, key)

    def set_meta(self, con: sqlite3.Connection, key: str, value: str) -> None:
        con.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, value))

    def check_model(self, fingerprint: str, nbits: int, model_path: str) -> None:
        """Bind an empty folder to this model, or refuse a folder made with another one."""
        with self.transaction() as con:
            found = self.read_meta(con, "model_fingerprint")
            if found is None:
                self.set_meta(con, "model_fingerprint", fingerprint)
                self.set_meta(con, "nbits", str(nbits))
                self.set_meta(con, "model_path", model_path)
                return
        if found != fingerprint:
            raise DataFolderError(
                f"{self.folder} holds codes of model {found} ({self.meta('nbits')} bits, made with "
                f"{self.meta('model_path')}); the model given is {fingerprint} ({model_path}). Start with "
                f"--model {self.meta('model_path')}, or use another --data-dir for this model")

    # ------------------------------------------------------------ patients
    def patient_hash(self, patient_id: str | None) -> str | None:
        """Salted hash of a patient id (None for none); the id itself is never stored."""
        if patient_id is None or not str(patient_id).strip():
            return None
        return hmac.new(self._salt, str(patient_id).strip().encode("utf-8"), hashlib.sha256).hexdigest()

    # ------------------------------------------------------------ reads
    _COLUMNS = "seq, id, code, metadata, modality, view_position, study_date, patient_hash, created"

    def get(self, item_id: str) -> ItemRow | None:
        row = self.reader().execute(f"SELECT {self._COLUMNS} FROM items WHERE id = ?", (item_id,)).fetchone()
        return None if row is None else ItemRow(*row)

    def metadata_of(self, ids: list[str]) -> dict[str, str]:
        """id -> metadata JSON text, for the ids still stored."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        return dict(self.reader().execute(f"SELECT id, metadata FROM items WHERE id IN ({marks})", ids).fetchall())

    def image_of(self, item_id: str) -> tuple[bytes, bytes, int, int] | None:
        """(thumbnail JPEG, attention float16 bytes, att_h, att_w) of an item, if stored."""
        return self.reader().execute(
            "SELECT i.thumbnail, i.attention, i.att_h, i.att_w FROM images i JOIN items t ON t.seq = i.seq "
            "WHERE t.id = ?", (item_id,)).fetchone()

    def count(self) -> int:
        return int(self.reader().execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def iter_items(self, after_seq: int = 0, *, codes: bool = True, batch: int = 50_000,
                   con: sqlite3.Connection | None = None) -> Iterator[list[tuple[Any, ...]]]:
        """Rows (seq, id, code or None, modality, view_position, study_date, patient_hash) in seq
        order, in lists of up to `batch`."""
        con = con or self.writer
        code_col = "code" if codes else "NULL"
        cur = con.execute(f"SELECT seq, id, {code_col}, modality, view_position, study_date, patient_hash "
                          "FROM items WHERE seq > ? ORDER BY seq", (after_seq,))
        while True:
            rows = cur.fetchmany(batch)
            if not rows:
                return
            yield rows


class _Transaction:
    def __init__(self, con: sqlite3.Connection):
        self.con = con

    def __enter__(self) -> sqlite3.Connection:
        self.con.execute("BEGIN IMMEDIATE")
        return self.con

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            try:
                self.con.execute("COMMIT")   # the WAL is fsynced here (synchronous=FULL)
                return
            except BaseException:
                if self.con.in_transaction:
                    self.con.execute("ROLLBACK")
                raise
        if self.con.in_transaction:
            self.con.execute("ROLLBACK")
