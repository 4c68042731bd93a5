"""Bearer tokens: `medhash token create` prints one once; the database keeps its SHA-256 only.

A token is 32 random bytes (secrets.token_urlsafe) behind the prefix ``mh_``: high entropy, so
a plain SHA-256 is enough to make the stored value useless to whoever reads the database (a
slow password hash protects guessable secrets, which these are not). Roles: ``read`` (search,
get, thumbnails, metrics) and ``write`` (also add, replace, delete, STOW-RS).
"""
from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from .db import Database

ROLES = ("read", "write")
PREFIX = "mh_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class Token:
    name: str
    role: str

    @property
    def can_write(self) -> bool:
        return self.role == "write"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise ValueError(f"token name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-', "
                         "starting with a letter or digit")
    return name


def create(db: Database, role: str, name: str | None = None) -> tuple[str, str]:
    """A new token of this role -> (name, token). The token is returned once, stored hashed."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    token = PREFIX + secrets.token_urlsafe(32)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with db.transaction() as con:
        if name is None:
            n = con.execute("SELECT COUNT(*) FROM tokens").fetchone()[0]
            name = f"{role}-{n + 1}"
            while con.execute("SELECT 1 FROM tokens WHERE name = ?", (name,)).fetchone():
                n += 1
                name = f"{role}-{n + 1}"
        check_name(name)
        try:
            con.execute("INSERT INTO tokens VALUES (?, ?, ?, ?)", (name, role, digest(token), now))
        except sqlite3.IntegrityError:
            raise ValueError(f"a token named {name!r} exists already: pick another --name "
                             f"(or `medhash token revoke --name {name}` first)") from None
    return name, token


def revoke(db: Database, name: str) -> bool:
    with db.transaction() as con:
        return con.execute("DELETE FROM tokens WHERE name = ?", (name,)).rowcount > 0


def listing(db: Database) -> list[tuple[str, str, str]]:
    """(name, role, created) of every token; the tokens themselves are not kept."""
    return [tuple(r) for r in db.writer.execute("SELECT name, role, created FROM tokens ORDER BY created, name")]


class TokenCache:
    """Token -> Token lookups for every request, from the database with a short cache: a token
    created on a running service works at once, a revoked one stops within `ttl` seconds."""

    def __init__(self, db: Database, ttl: float = 2.0):
        self.db, self.ttl = db, float(ttl)
        self._lock = threading.Lock()
        self._by_hash: dict[str, Token] = {}
        self._loaded = 0.0

    def _reload(self) -> None:
        rows = self.db.reader().execute("SELECT hash, name, role FROM tokens").fetchall()
        self._by_hash = {h: Token(n, r) for h, n, r in rows}
        self._loaded = time.monotonic()

    def lookup(self, token: str) -> Token | None:
        h = digest(token)
        with self._lock:
            if time.monotonic() - self._loaded > self.ttl:
                self._reload()
            found = self._by_hash.get(h)
        if found is None:   # created a moment ago? one indexed lookup (hash is UNIQUE)
            row = self.db.reader().execute("SELECT name, role FROM tokens WHERE hash = ?", (h,)).fetchone()
            if row is not None:
                found = Token(*row)
                with self._lock:
                    self._by_hash[h] = found
        return found
