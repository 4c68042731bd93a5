"""Id storage for Index: flat numpy arrays, no per-id Python objects, no dict.

- int64 ids: one int64 array (8 bytes an id).
- string ids: UTF-8 bytes of all ids in one blob, int64 offsets (n + 1), and a 64-bit
  BLAKE2b hash of each id (the key the id -> row map sorts on; equal hashes are resolved by
  comparing the bytes, so a collision never returns a wrong row).
- id -> row map (_SortedRows): row numbers sorted by key, searched with np.searchsorted.
  It is built on first use (a search without id masks never needs it) and then kept up to
  date: appends go to a small sorted run merged into the big one when it passes 1/8 of it,
  so many small add() calls cost amortised O(added), not a re-sort each time.
- remove: a few rows (DROP_IN_PLACE_MAX) leave every array in place (the rows after each move
  down, and the map's row numbers above each drop by one); more are one masked gather.

All classes here assume the caller (Index) holds its lock; none of them locks.
"""
from __future__ import annotations

import ctypes
import hashlib
import threading
from typing import Any

import numpy as np

INT64 = "int64"
STR = "str"
_INT64_MAX = np.iinfo(np.int64).max
MERGE_MIN = 65536  # the small sorted run merges into the big one past max(MERGE_MIN, n / 8)
# Removing up to this many rows at once moves the runs between them down in place (and renumbers
# the id -> row map one removed row at a time); more: one masked gather of everything kept.
# One row out of 10M int64 ids and 64-bit codes: 230 ms with the gather, ~ms with the moves.
DROP_IN_PLACE_MAX = 8


def _checked_runs(starts: np.ndarray, stops: np.ndarray, n: int) -> None:
    """ValueError unless [starts[i], stops[i]) are sorted, disjoint, non-empty ranges within [0, n):
    drop_ranges moves memory by raw address, so its input is checked, never trusted."""
    if len(starts) != len(stops) or (len(starts) and (starts[0] < 0 or stops[-1] > n or np.any(stops <= starts)
                                                       or np.any(starts[1:] < stops[:-1]))):
        raise ValueError("internal: ranges to drop must be sorted, disjoint and within the buffer")


def drop_ranges(buf: np.ndarray, n: int, starts: np.ndarray, stops: np.ndarray) -> int:
    """Remove rows [starts[i], stops[i]) from the first n rows of buf (C-contiguous, writeable), in
    place, keeping the order of the rest; return the new row count. The runs between the ranges
    move down with memmove: no second buffer, and only the rows after the first range move."""
    starts = np.asarray(starts, dtype=np.int64)
    stops = np.asarray(stops, dtype=np.int64)
    _checked_runs(starts, stops, n)
    if not len(starts):
        return n
    if not (buf.flags.c_contiguous and buf.flags.writeable) or len(buf) < n:
        raise ValueError("internal: drop_ranges needs a writeable C-contiguous buffer")
    row_bytes = buf.strides[0] if buf.ndim else buf.itemsize
    base = buf.ctypes.data
    dst = int(starts[0])
    ends = np.append(starts[1:], n).tolist()
    for stop, end in zip(stops.tolist(), ends):
        count = end - stop
        if count > 0:
            ctypes.memmove(base + dst * row_bytes, base + stop * row_bytes, count * row_bytes)
            dst += count
    return dst


def drop_rows(buf: np.ndarray, n: int, rows: np.ndarray) -> int:
    """Remove rows (sorted, unique) from the first n rows of buf in place, keeping the order of
    the rest; return the new count. A few rows: drop_ranges; many: one masked gather."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) <= DROP_IN_PLACE_MAX:
        return drop_ranges(buf, n, rows, rows + 1)
    keep = np.ones(n, dtype=bool)
    keep[rows] = False
    return keep_masked(buf, n, keep)


def keep_masked(buf: np.ndarray, n: int, keep: np.ndarray) -> int:
    """Keep the rows of the first n of buf where keep (bool, n) is True, in order, at the start
    of buf (one gather into a new array, copied back); return how many."""
    kept = buf[:n][keep]
    buf[: len(kept)] = kept
    return len(kept)


class Growable:
    """One contiguous numpy buffer with spare capacity: appends are amortised O(1).

    Spare capacity is allocated with np.empty and never touched, so the OS does not make it
    resident until rows are written there.
    """

    __slots__ = ("buf", "n")

    def __init__(self, buf: np.ndarray, n: int | None = None):
        self.buf = buf
        self.n = len(buf) if n is None else n

    @classmethod
    def empty(cls, dtype: Any, row_shape: tuple[int, ...] = ()) -> Growable:
        return cls(np.empty((0, *row_shape), dtype=dtype), 0)

    @property
    def data(self) -> np.ndarray:
        return self.buf[: self.n]

    def append(self, rows: np.ndarray) -> None:
        m = len(rows)
        need = self.n + m
        if need > len(self.buf) or not self.buf.flags.writeable:
            cap = max(need, len(self.buf) + len(self.buf) // 2, 16)
            new = np.empty((cap, *self.buf.shape[1:]), dtype=self.buf.dtype)
            new[: self.n] = self.buf[: self.n]
            self.buf = new
        self.buf[self.n : need] = rows
        self.n = need

    def drop(self, rows: np.ndarray) -> None:
        """Remove rows (sorted, unique), keeping the order of the others (in place)."""
        self.n = drop_rows(self.buf, self.n, rows)


def _searchsorted(keys: np.ndarray, run: np.ndarray, q: np.ndarray, side: Any) -> np.ndarray:
    """np.searchsorted(keys, q, side, sorter=run); for many queries one gather of the sorted
    keys (a temporary copy) beats len(q) random indirect probes."""
    if len(q) * 16 >= len(run):
        return np.searchsorted(keys[run], q, side=side)
    return np.searchsorted(keys, q, side=side, sorter=run)


class _SortedRows:
    """Rows ordered by key: a big sorted run over rows [0, n_main) and a small one after it."""

    __slots__ = ("main", "n_main", "delta")

    def __init__(self, keys: np.ndarray):
        self.main = np.argsort(keys, kind="stable").astype(np.int64, copy=False)
        self.n_main = len(keys)
        self.delta = np.empty(0, dtype=np.int64)  # rows - n_main, sorted by key

    def extend(self, keys: np.ndarray, n_old: int) -> None:
        """Rows [n_old, len(keys)) were appended to keys."""
        n = len(keys)
        if n == n_old:
            return
        new = np.argsort(keys[n_old:n], kind="stable").astype(np.int64) + (n_old - self.n_main)
        pos = _searchsorted(keys[self.n_main : n_old], self.delta, keys[new + self.n_main], "right")
        self.delta = np.insert(self.delta, pos, new)
        if len(self.delta) > max(MERGE_MIN, self.n_main // 8):
            rows = self.delta + self.n_main
            pos = _searchsorted(keys[: self.n_main], self.main, keys[rows], "right")
            self.main = np.insert(self.main, pos, rows)
            self.n_main = n
            self.delta = np.empty(0, dtype=np.int64)

    def candidates(self, keys: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All (query index, row) pairs whose key equals q[query index]."""
        if len(q) > 1024:  # sorted probes walk the sorted keys in order: cache-friendly
            order = np.argsort(q, kind="stable")
            qi, rows = self._candidates(keys, q[order])
            return order[qi], rows
        return self._candidates(keys, q)

    def _candidates(self, keys: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        qs, rs = [], []
        for run, lo, hi in ((self.main, 0, self.n_main), (self.delta, self.n_main, len(keys))):
            if len(run) == 0:
                continue
            sub = keys[lo:hi]
            if len(q) * 16 >= len(run):  # gather the sorted keys once for both sides
                sub = sub[run]
                left = np.searchsorted(sub, q, side="left")
                right = np.searchsorted(sub, q, side="right")
            else:
                left = _searchsorted(sub, run, q, "left")
                right = _searchsorted(sub, run, q, "right")
            cnt = right - left
            total = int(cnt.sum())
            if total == 0:
                continue
            qi = np.repeat(np.arange(len(q)), cnt)
            start = np.repeat(left - (np.cumsum(cnt) - cnt), cnt)
            qs.append(qi)
            rs.append(run[start + np.arange(total)] + lo)
        if not qs:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(qs), np.concatenate(rs)

    def drop(self, rows: np.ndarray, keys: np.ndarray) -> None:
        """Rows (sorted, unique) are being removed and the rest compacted in order; keys: the key
        of every row before the removal. A few rows: their entries leave the big run in place and
        the rows above each removed one are renumbered (a pass per removed row); many: one
        gather of everything kept."""
        n_old = len(keys)
        delta = self.delta + self.n_main
        if len(rows) > DROP_IN_PLACE_MAX:
            keep = np.ones(n_old, dtype=bool)
            keep[rows] = False
            newrow = np.cumsum(keep, dtype=np.int64) - 1
            main = self.main[keep[self.main]]
            delta = delta[keep[delta]]
            self.n_main = int(np.count_nonzero(keep[: self.n_main]))
            self.main = newrow[main]
            self.delta = newrow[delta] - self.n_main
            return
        in_main = rows[rows < self.n_main]
        if len(in_main):
            # each row's place in the big run: the first entry with its key, then past equal keys
            pos = np.searchsorted(keys[: self.n_main], keys[in_main], side="left", sorter=self.main)
            for i, row in enumerate(in_main.tolist()):
                while self.main[pos[i]] != row:
                    pos[i] += 1
            self.main = self.main[: drop_rows(self.main, len(self.main), np.sort(pos))]
        delta = delta[~np.isin(delta, rows)]
        for row in rows[::-1].tolist():   # from the top: a row above several removed ones moves once for each
            np.subtract(self.main, 1, out=self.main, where=self.main > row)
            delta -= delta > row
        self.n_main -= len(in_main)
        self.delta = delta - self.n_main

    def has_duplicate_keys(self, keys: np.ndarray) -> bool:
        """True when two rows share a key (run only on a freshly built map)."""
        s = keys[self.main]
        return bool(len(s) > 1 and np.any(s[1:] == s[:-1]))


def repeated(a: np.ndarray) -> np.ndarray:
    """Values that occur more than once in a, sorted (a sort, not numpy's slower hash unique)."""
    s = np.sort(a)
    return np.unique(s[1:][s[1:] == s[:-1]]) if len(s) > 1 else s[:0]


def classify_ids(ids: Any) -> str:
    """'int64' or 'str' for user ids (a scalar, a sequence or an array)."""
    if isinstance(ids, str):
        return STR
    if isinstance(ids, (bytes, bytearray)):
        raise TypeError("ids must be int64 or str; decode bytes ids to str first")
    if isinstance(ids, np.ndarray):
        if ids.dtype.kind in "US":
            if ids.dtype.kind == "S":
                raise TypeError("ids must be int64 or str; decode bytes ids to str first (ids.astype(str))")
            return STR
        if ids.dtype.kind in "iu":
            return INT64
        if ids.dtype.kind == "O":
            first = next(iter(ids.ravel()), None)
            return STR if isinstance(first, str) else INT64
        raise TypeError(f"ids must be int64 or str, got an array of {ids.dtype}")
    if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
        return INT64
    try:
        first = next(iter(ids), None)
    except TypeError:
        raise TypeError(f"ids must be int64 or str (or a sequence of them), got {type(ids).__name__}") from None
    if isinstance(first, str):
        return STR
    if isinstance(first, (bytes, bytearray)):
        raise TypeError("ids must be int64 or str; decode bytes ids to str first")
    if first is None or (isinstance(first, (int, np.integer)) and not isinstance(first, bool)):
        return INT64
    raise TypeError(f"ids must be int64 or str, got {type(first).__name__} ids")


def as_int_ids(ids: Any) -> np.ndarray:
    """User ids -> int64 1-D array; TypeError/ValueError with a fix-it message."""
    a = np.asarray(ids)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.size == 0:
        return np.empty(0, dtype=np.int64)
    if a.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {a.shape}")
    if a.dtype == object:
        if not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in a):
            raise TypeError("ids must all be int64 or all be str, not a mix")
        try:
            a = a.astype(np.int64)
        except OverflowError:
            raise ValueError("int ids must fit in int64 (0 .. 2**63 - 1)") from None
    if a.dtype == bool or a.dtype.kind not in "iu":
        raise TypeError(f"ids must be integers (int64) or str, got {a.dtype}")
    if a.dtype.kind == "u" and a.max() > _INT64_MAX:
        raise ValueError("int ids must fit in int64 (0 .. 2**63 - 1)")
    a = a.astype(np.int64, copy=False)
    if a.min() < 0:
        raise ValueError("int ids must be >= 0 (-1 marks padding in search results)")
    return a


def as_str_ids(ids: Any) -> list[str]:
    """User ids -> list of non-empty str; TypeError/ValueError with a fix-it message."""
    if isinstance(ids, str):
        items = [ids]
    elif isinstance(ids, np.ndarray):
        if ids.ndim > 1:
            raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
        items = ids.tolist() if ids.ndim == 1 else [ids.item()]
    else:
        items = list(ids)
    for s in items:
        if not isinstance(s, str):
            raise TypeError(f"ids must all be str or all be int64, not a mix (found {type(s).__name__})")
        if not s:
            raise ValueError("string ids must not be empty")
    return items


def hash_bytes(encoded: list[bytes]) -> np.ndarray:
    """64-bit BLAKE2b of each id's UTF-8 bytes, little-endian uint64 (part of file format v1)."""
    if not encoded:
        return np.empty(0, dtype=np.uint64)
    digests = b"".join(hashlib.blake2b(b, digest_size=8).digest() for b in encoded)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def _encode(items: list[str]) -> list[bytes]:
    try:
        return [s.encode("utf-8") for s in items]
    except UnicodeEncodeError as e:
        raise ValueError(f"string ids must be valid Unicode (UTF-8 encodable): {e}") from None


class IntIds:
    """int64 ids in row order."""

    kind = INT64

    def __init__(self, ids: np.ndarray | None = None):
        self.col = Growable(np.empty(0, np.int64), 0) if ids is None else Growable(ids)
        self._map: _SortedRows | None = None
        self._map_lock = threading.Lock()

    def __len__(self) -> int:
        return self.col.n

    def keys(self) -> np.ndarray:
        return self.col.data

    def _sorted(self) -> _SortedRows:
        if self._map is None:
            with self._map_lock:  # readers may race to build it
                if self._map is None:
                    m = _SortedRows(self.keys())
                    if m.has_duplicate_keys(self.keys()):
                        from .exceptions import IndexFileError
                        raise IndexFileError("the index holds duplicate ids: the file is damaged")
                    self._map = m
        return self._map

    def prepare(self, ids: Any) -> Any:
        """User ids -> the opaque form rows()/append() take (here an int64 array)."""
        if classify_ids(ids) != INT64:
            raise TypeError("this index uses int64 ids; pass integers, not str")
        return as_int_ids(ids)

    @staticmethod
    def size(prepared: Any) -> int:
        return len(prepared)

    def rows(self, prepared: Any) -> np.ndarray:
        """Row of each id, -1 where absent."""
        out = np.full(len(prepared), -1, dtype=np.int64)
        if len(prepared) and self.col.n:
            qi, r = self._sorted().candidates(self.keys(), prepared)
            out[qi] = r
        return out

    def duplicates_within(self, prepared: Any) -> list[Any]:
        return repeated(prepared)[:5].tolist()

    def append(self, prepared: Any) -> None:
        n_old = self.col.n
        self.col.append(prepared)
        if self._map is not None:
            self._map.extend(self.keys(), n_old)

    def drop(self, rows: np.ndarray) -> None:
        """Remove rows (sorted, unique), keeping the order of the others."""
        if self._map is not None:
            self._map.drop(rows, self.keys())
        self.col.drop(rows)

    def reorder(self, order: np.ndarray) -> None:
        """Row i becomes the old row order[i] (a permutation of every row)."""
        self.col = Growable(self.col.data[order])
        self._map = None  # rebuilt at the next id lookup

    @staticmethod
    def as_array(prepared: Any) -> np.ndarray:
        """The prepared ids as the array add() returns (int64)."""
        return np.array(prepared, dtype=np.int64)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Ids of rows (any shape); -1 stays -1."""
        data = self.col.data
        if len(data) == 0:
            return np.full(rows.shape, -1, dtype=np.int64)
        out = data[np.maximum(rows, 0)]
        pad = rows < 0
        if np.any(out[~pad] < 0):  # only a damaged file (a view, unverified) holds these
            from .exceptions import IndexFileError
            raise IndexFileError("the index holds negative ids: the file is damaged (run verify())")
        out[pad] = -1
        return out

    def all(self) -> np.ndarray:
        return self.col.data.copy()

    def max_id(self) -> int:
        return int(self.col.data.max()) if self.col.n else -1


class StrIds:
    """String ids: one UTF-8 blob, int64 offsets (n + 1), uint64 hashes."""

    kind = STR

    def __init__(self, blob: np.ndarray | None = None, offsets: np.ndarray | None = None,
                 hashes: np.ndarray | None = None):
        if blob is None or offsets is None or hashes is None:
            self.blob = Growable(np.empty(0, np.uint8), 0)
            self.offsets = Growable(np.zeros(1, np.int64))
            self.hashes = Growable(np.empty(0, np.uint64), 0)
        else:
            self.blob, self.offsets, self.hashes = Growable(blob), Growable(offsets), Growable(hashes)
        self._map: _SortedRows | None = None
        self._map_lock = threading.Lock()

    def __len__(self) -> int:
        return self.hashes.n

    def keys(self) -> np.ndarray:
        return self.hashes.data

    def _sorted(self) -> _SortedRows:
        if self._map is None:
            with self._map_lock:
                if self._map is None:
                    self._map = _SortedRows(self.keys())
        return self._map

    def prepare(self, ids: Any) -> Any:
        if classify_ids(ids) != STR:
            raise TypeError("this index uses str ids; pass strings, not integers")
        items = as_str_ids(ids)
        enc = _encode(items)
        return items, enc, hash_bytes(enc)

    def _bytes_of(self, row: int) -> bytes:
        off = self.offsets.data
        return self.blob.data[int(off[row]) : int(off[row + 1])].tobytes()

    @staticmethod
    def size(prepared: Any) -> int:
        return len(prepared[0])

    def rows(self, prepared: Any) -> np.ndarray:
        _, enc, h = prepared
        out = np.full(len(enc), -1, dtype=np.int64)
        if len(enc) and len(self):
            qi, r = self._sorted().candidates(self.keys(), h)
            for i, row in zip(qi.tolist(), r.tolist()):
                if out[i] < 0 and self._bytes_of(row) == enc[i]:
                    out[i] = row
        return out

    def duplicates_within(self, prepared: Any) -> list[Any]:
        items = prepared[0]
        if len(set(items)) == len(items):
            return []
        seen: set[str] = set()
        dup = []
        for s in items:
            if s in seen and s not in dup:
                dup.append(s)
            seen.add(s)
        return dup[:5]

    def append(self, prepared: Any) -> None:
        _, enc, h = prepared
        n_old = len(self)
        base = int(self.offsets.data[-1])
        lengths = np.fromiter((len(b) for b in enc), dtype=np.int64, count=len(enc))
        self.blob.append(np.frombuffer(b"".join(enc), dtype=np.uint8))
        self.offsets.append(base + np.cumsum(lengths))
        self.hashes.append(h)
        if self._map is not None:
            self._map.extend(self.keys(), n_old)

    def drop(self, rows: np.ndarray) -> None:
        """Remove rows (sorted, unique), keeping the order of the others."""
        if self._map is not None:
            self._map.drop(rows, self.keys())
        off = self.offsets.data
        if len(rows) <= DROP_IN_PLACE_MAX:
            starts, stops = off[rows], off[rows + 1]
            self.blob.n = drop_ranges(self.blob.buf, self.blob.n, starts, stops)
            self.offsets.drop(rows + 1)   # each removed row's end; the later offsets shift down
            off = self.offsets.data
            for i, (row, length) in enumerate(zip(rows.tolist(), (stops - starts).tolist())):
                off[row - i + 1:] -= length
        else:
            keep = np.ones(len(self), dtype=bool)
            keep[rows] = False
            lengths = np.diff(off)
            self.blob.n = keep_masked(self.blob.buf, self.blob.n, np.repeat(keep, lengths))
            new_off = np.zeros(int(np.count_nonzero(keep)) + 1, dtype=np.int64)
            np.cumsum(lengths[keep], out=new_off[1:])
            self.offsets = Growable(new_off)
        self.hashes.drop(rows)

    def reorder(self, order: np.ndarray) -> None:
        """Row i becomes the old row order[i] (a permutation of every row)."""
        off = self.offsets.data
        lengths = np.diff(off)[order]
        new_off = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum(lengths, out=new_off[1:])
        # byte j of new row i is byte (j - new_off[i]) of old row order[i]
        shift = np.repeat(off[:-1][order] - new_off[:-1], lengths)
        self.blob = Growable(self.blob.data[shift + np.arange(int(new_off[-1]), dtype=np.int64)])
        self.offsets = Growable(new_off)
        self.hashes = Growable(self.hashes.data[order])
        self._map = None

    @staticmethod
    def as_array(prepared: Any) -> np.ndarray:
        """The prepared ids as the array add() returns (object array of str)."""
        out = np.empty(len(prepared[0]), dtype=object)
        out[:] = prepared[0]
        return out

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Ids of rows (any shape) as an object array of str; -1 becomes None."""
        out = np.empty(rows.shape, dtype=object)
        flat_out = out.reshape(-1)
        off = self.offsets.data
        blob = self.blob.data
        for i, r in enumerate(rows.reshape(-1).tolist()):
            if r >= 0:
                flat_out[i] = _decode(blob[int(off[r]) : int(off[r + 1])])
                if not flat_out[i]:
                    from .exceptions import IndexFileError
                    raise IndexFileError("the index holds an empty string id: the file is damaged (run verify())")
        return out

    def all(self) -> np.ndarray:
        return self.take(np.arange(len(self), dtype=np.int64))

    def check(self) -> str | None:
        """What is wrong with offsets/blob sizes, or None (O(n), no Python loop)."""
        off = self.offsets.data
        if len(off) != len(self) + 1:
            return "string id offsets and hashes disagree in length"
        if off[0] != 0 or off[-1] != self.blob.n:
            return "string id offsets do not span the id blob"
        if len(off) > 1 and np.any(np.diff(off) <= 0):
            return "string id offsets are not strictly increasing"
        from ._index_file import utf8_ids_valid
        if not utf8_ids_valid(self.blob.data, off):
            return "string ids are not valid UTF-8"
        return None


def _decode(b: np.ndarray) -> str:
    try:
        return b.tobytes().decode("utf-8")
    except UnicodeDecodeError:
        from .exceptions import IndexFileError
        raise IndexFileError("a string id is not valid UTF-8: the index file is damaged (run verify())") from None
