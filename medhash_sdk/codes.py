"""Packed binary codes: packing, unpacking and the numpy Hamming search that specifies the engine.

Layout: bit i of a code is (logit_i > 0), packed in numpy.packbits order (big-endian within
each byte), so a code of nbits bits is nbits // 8 bytes. The numpy search below is the
reference the compiled engine is tested against: same distances, same tie rule (equal
distances keep database row order), same padding (-1) when fewer than k rows qualify.
"""
from __future__ import annotations

import numpy as np

# popcount of every byte value, for the reference distance
_POPCOUNT8 = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1).astype(np.int32)


def check_nbits(nbits: int) -> int:
    """Return nbits as int, or raise ValueError unless it is a positive multiple of 8."""
    if isinstance(nbits, bool) or not isinstance(nbits, (int, np.integer)):
        raise TypeError(f"nbits must be an int, got {type(nbits).__name__}")
    nbits = int(nbits)
    if nbits <= 0 or nbits % 8:
        raise ValueError(f"nbits must be a positive multiple of 8 (e.g. 32, 64, 256), got {nbits}")
    return nbits


def pack_codes(logits: np.ndarray) -> np.ndarray:
    """Sign-binarise code logits (n, nbits) and pack them: uint8 (n, nbits // 8)."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (n, nbits), got shape {logits.shape}")
    check_nbits(logits.shape[1])
    return np.packbits(logits > 0, axis=1)


def unpack_codes(codes: np.ndarray, nbits: int | None = None) -> np.ndarray:
    """Unpack uint8 (n, nbytes) codes to a 0/1 uint8 array (n, nbits)."""
    codes = np.asarray(codes, dtype=np.uint8)
    bits = np.unpackbits(codes, axis=-1)
    return bits if nbits is None else bits[..., :nbits]


def hamming_distances(queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """All Hamming distances, int32 (nq, n), between packed queries (nq, B) and codes (n, B)."""
    q = np.atleast_2d(np.asarray(queries, dtype=np.uint8))
    c = np.atleast_2d(np.asarray(codes, dtype=np.uint8))
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} bytes a code but codes have {c.shape[1]}")
    out = np.zeros((q.shape[0], c.shape[0]), dtype=np.int32)
    for b in range(q.shape[1]):  # one byte column at a time keeps memory at O(nq * n)
        out += _POPCOUNT8[np.bitwise_xor(q[:, b, None], c[None, :, b])]
    return out


def brute_force_search(queries: np.ndarray, codes: np.ndarray, k: int,
                       allow: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reference exact search: (rows int64 (nq, k), distances int32 (nq, k)).

    Rows are sorted by distance, ties by row number (insertion order). Rows where allow is
    False are skipped. When fewer than k rows qualify, the tail is row -1, distance -1.
    """
    d = hamming_distances(queries, codes)
    nq, n = d.shape
    rows = np.full((nq, k), -1, dtype=np.int64)
    dist = np.full((nq, k), -1, dtype=np.int32)
    candidates = np.arange(n) if allow is None else np.flatnonzero(np.asarray(allow, dtype=bool))
    for i in range(nq):
        di = d[i, candidates]
        order = np.argsort(di, kind="stable")[:k]
        rows[i, : order.size] = candidates[order]
        dist[i, : order.size] = di[order]
    return rows, dist


def code_order(codes: np.ndarray) -> np.ndarray:
    """Stable order (int64 (n,)) of packed codes (n, nbytes) by their bytes, the first byte
    most significant: equal codes keep their relative order, and codes that share leading
    bytes end up next to each other (Index.sort_by_code)."""
    c = np.asarray(codes, dtype=np.uint8)
    if c.ndim != 2:
        raise ValueError(f"codes must be 2-D (n, nbytes), got shape {c.shape}")
    n, nbytes = c.shape
    words = -(-nbytes // 8)
    if nbytes % 8:
        padded = np.zeros((n, words * 8), dtype=np.uint8)
        padded[:, :nbytes] = c
        c = padded
    keys = np.ascontiguousarray(c).view(">u8")  # (n, words): byte 0 is the most significant
    if words == 1:
        return np.argsort(keys[:, 0], kind="stable").astype(np.int64, copy=False)
    return np.lexsort(keys.T[::-1]).astype(np.int64, copy=False)  # last key primary: reversed
