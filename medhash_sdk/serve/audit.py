"""The audit log: one JSON object a line, appended, never rewritten.

    {"time": "2026-12-01T10:00:00.123+00:00", "token": "ris", "role": "read", "client": "10.0.0.5",
     "method": "POST", "route": "/v1/search", "status": 200, "ms": 12.5,
     "query": ["1.2.840...."], "returned": ["1.2.840....", ...]}

``query`` holds the item ids / UIDs a request named or stored (or the upload's file name for
a search by image), ``returned`` the ids it answered with. No patient names, birth dates or
ids are ever written (the service does not keep them). Each line is one write(2) on a file
opened with O_APPEND; the file is fsynced within a second of a write (not per line: a search
must not wait for a disk flush).
"""
from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

AUDIT_NAME = "audit.jsonl"


class AuditLog:
    def __init__(self, path: str | os.PathLike[str], fsync_interval: float = 1.0):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._lock = threading.Lock()
        self._dirty = False
        self._stop = threading.Event()
        self._interval = float(fsync_interval)
        self._syncer = threading.Thread(target=self._sync_loop, name="medhash-audit-fsync", daemon=True)
        self._syncer.start()

    def write(self, record: dict[str, Any]) -> None:
        rec = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
        rec.update(record)
        line = (json.dumps(rec, ensure_ascii=False, separators=(",", ":"), default=str) + "\n").encode("utf-8")
        with self._lock:
            os.write(self._fd, line)
            self._dirty = True

    def _sync_loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            self._dirty = False
            os.fsync(self._fd)

    def close(self) -> None:
        self._stop.set()
        self._syncer.join(5)
        self.flush()
        os.close(self._fd)
