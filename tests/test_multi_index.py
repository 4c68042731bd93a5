"""Multi-index hashing (Index.build_multi_index): the same answers as the exact scan, always.

brute_force_search (medhash_sdk.codes) is the reference: rows by distance, ties by insertion
order, allow/deny masks, -1 padding. Each case runs twice: with the give-up switched off (every
query answered from the tables, however long it takes) and switched to "give up at once" (every
query falls back to the scan), so both paths meet ties, masks and k > n. The main cases run
again with copy_codes=True (each table reads its own copy of the codes).
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest

from medhash_sdk import Index, MultiIndexInfo
from medhash_sdk import _hamming as H
from medhash_sdk import _ids
from medhash_sdk.codes import brute_force_search


@contextmanager
def patience(value: float):
    before = H.set_multi_index_patience(value)
    try:
        yield
    finally:
        H.set_multi_index_patience(before)


ALWAYS_TABLES, ALWAYS_SCAN = 1e6, 0.0


def clustered(rng: np.random.Generator, n: int, nbytes: int, centres: int = 20, flip: float = 0.04) -> np.ndarray:
    """Codes in tight clusters (near neighbours, like learned codes) with exact duplicates."""
    base = rng.integers(0, 256, size=(centres, nbytes), dtype=np.uint8)
    bits = np.unpackbits(base[rng.integers(0, centres, size=n)], axis=1)
    bits ^= (rng.random(bits.shape) < flip).astype(np.uint8)
    codes = np.packbits(bits, axis=1)
    codes[1::7] = codes[0]  # many exact ties
    return codes


def check_equal(idx: Index, queries: np.ndarray, k: int, *, allow=None, threads: int = 1) -> None:
    mask = None if allow is None else np.asarray(allow, dtype=bool)
    want_rows, want_d = brute_force_search(np.atleast_2d(queries), idx.codes, k, allow=mask)
    if queries.ndim == 1:
        want_rows, want_d = want_rows[0], want_d[0]
    got = idx.search(queries, k=k, threads=threads, allow=allow)
    ids = idx.ids
    want_ids = np.where(want_rows >= 0, ids[np.maximum(want_rows, 0)], -1)
    np.testing.assert_array_equal(got.distances, want_d)
    np.testing.assert_array_equal(got.ids, want_ids)


@pytest.mark.parametrize("copy", [False, True], ids=["rows", "copied"])
@pytest.mark.parametrize("mode", [ALWAYS_TABLES, ALWAYS_SCAN], ids=["tables", "scan"])
@pytest.mark.parametrize("nbits", [8, 16, 24, 64, 72, 128, 256])
def test_same_as_scan_every_k(nbits, mode, copy):
    """Every k up to beyond n, far queries included. The tables use 8-bit substrings here, so
    that a query the tables must answer alone (k >= n walks every bucket) stays cheap."""
    rng = np.random.default_rng(nbits)
    codes = clustered(rng, 1500, nbits // 8)
    idx = Index(nbits)
    idx.add(codes)
    info = idx.build_multi_index(max(2, nbits // 8) if nbits > 8 else 1, copy_codes=copy)
    assert isinstance(info, MultiIndexInfo) and sum(info.widths) == nbits and info.rows == 1500
    assert info.copied_codes is copy
    queries = np.concatenate([codes[:3], clustered(rng, 6, nbits // 8), rng.integers(0, 256, (3, nbits // 8), dtype=np.uint8)])
    with patience(mode):
        for k in (1, 2, 7, 10, 100, 1499, 1500, 2000):
            check_equal(idx, queries, k)
            check_equal(idx, queries[0], k)  # one query, 1-D


@pytest.mark.parametrize("nbits", [16, 64, 72, 128, 256])
def test_default_substrings_near_queries(nbits):
    """The substrings chosen from the size, answered from the tables alone."""
    rng = np.random.default_rng(nbits + 1)
    codes = clustered(rng, 3000, nbits // 8, flip=0.02)
    idx = Index(nbits)
    idx.add(codes)
    info = idx.build_multi_index()
    assert info.memory_bytes <= (nbits // 8 + 8) * 3000 + 4 * 2 ** 12 * info.substrings
    with patience(ALWAYS_TABLES):
        for k in (1, 10, 50):
            check_equal(idx, codes[::300], k)


@pytest.mark.parametrize("mode", [ALWAYS_TABLES, ALWAYS_SCAN], ids=["tables", "scan"])
@pytest.mark.parametrize("substrings", [1, 2, 3, 4, 5, 8])
def test_every_substring_count(substrings, mode):
    rng = np.random.default_rng(substrings)
    codes = clustered(rng, 800, 8)
    idx = Index(64)
    idx.add(codes)
    assert idx.build_multi_index(substrings).substrings == substrings if substrings > 1 else True
    with patience(mode):
        for k in (1, 10, 300):
            check_equal(idx, codes[::97], k)


def test_too_wide_substrings_refused():
    idx = Index(64)
    idx.add(np.zeros((10, 8), np.uint8))
    with pytest.raises(ValueError, match="between 2 and 64"):
        idx.build_multi_index(1)  # 64-bit substrings: at most 32 bits each
    with pytest.raises(ValueError, match="between 2 and 64"):
        idx.build_multi_index(65)
    with pytest.raises(TypeError):
        idx.build_multi_index("3")
    with pytest.raises(TypeError, match="copy_codes must be True or False"):
        idx.build_multi_index(copy_codes=1)


@pytest.mark.parametrize("copy", [False, True], ids=["rows", "copied"])
@pytest.mark.parametrize("mode", [ALWAYS_TABLES, ALWAYS_SCAN], ids=["tables", "scan"])
def test_masks(mode, copy):
    rng = np.random.default_rng(7)
    codes = clustered(rng, 2000, 8)
    idx = Index(64)
    idx.add(codes)
    idx.build_multi_index(8, copy_codes=copy)  # 8-bit substrings: an empty mask walks every bucket, cheaply
    queries = codes[:5]
    with patience(mode):
        for allow in (rng.random(2000) < 0.5, rng.random(2000) < 0.003, np.zeros(2000, bool)):
            for k in (1, 10, 50):
                check_equal(idx, queries, k, allow=allow)
        deny = idx.ids[:300]
        got = idx.search(queries, k=10, deny=deny)
        keep = np.ones(2000, bool)
        keep[:300] = False
        want_rows, want_d = brute_force_search(queries, codes, 10, allow=keep)
        np.testing.assert_array_equal(got.distances, want_d)
        np.testing.assert_array_equal(got.ids, want_rows)


@pytest.mark.parametrize("copy", [False, True], ids=["rows", "copied"])
@pytest.mark.parametrize("mode", [ALWAYS_TABLES, ALWAYS_SCAN], ids=["tables", "scan"])
def test_follows_add_and_remove(mode, copy):
    """Rows added after the build are scanned (the tables are rebuilt once they cover less than
    8/9 of the rows); remove() of many rows drops the tables and the next search rebuilds them,
    copies of the codes included when asked for."""
    rng = np.random.default_rng(3)
    codes = clustered(rng, 3000, 8)
    idx = Index(64)
    idx.add(codes[:1000])
    idx.build_multi_index(copy_codes=copy)
    with patience(mode):
        idx.add(codes[1000:1100])  # tail of 100 rows: scanned beside the tables
        check_equal(idx, codes[::50], 10)
        assert idx.multi_index.rows == 1000
        idx.add(codes[1100:3000])  # far beyond 1/8: rebuilt at the next search
        check_equal(idx, codes[::50], 10)
        assert idx.multi_index.rows == 3000
        idx.remove(idx.ids[::3])
        assert idx.multi_index is None  # dropped: row numbers moved
        check_equal(idx, codes[::50], 25)
        assert idx.multi_index.rows == len(idx) == 2000
        assert idx.multi_index.copied_codes is copy
        idx.add(codes[:5], ids=[10_000 + i for i in range(5)])  # the same codes again: ties
        check_equal(idx, codes[:5], 30)


@pytest.mark.parametrize("copy", [False, True], ids=["rows", "copied"])
@pytest.mark.parametrize("nbits", [16, 64, 128, 256])
def test_few_removed_rows_leave_the_tables_in_place(nbits, copy):
    """remove() of up to DROP_IN_PLACE_MAX rows takes them out of the tables (no rebuild): rows
    the tables cover, rows of the scanned tail, the first and last row, rows sharing buckets
    with others (clustered codes, many ties); every answer stays the scan's."""
    rng = np.random.default_rng(nbits)
    codes = clustered(rng, 2500, nbits // 8)
    idx = Index(nbits)
    idx.add(codes[:2300])
    idx.build_multi_index(substrings=max(2, nbits // 16), copy_codes=copy)
    idx.add(codes[2300:])   # a tail the tables do not cover
    for gone in ([0], [5, 6, 7], [2299, 2300, 2400], [-1], list(range(40, 48)), [1, 1000, 2000]):
        tables = idx._multi
        covered = idx.multi_index.rows
        rows = [g % len(idx) for g in gone]
        idx.remove(idx.ids[rows])
        assert idx._multi is tables  # kept, not rebuilt
        assert idx.multi_index.rows == covered - sum(1 for r in rows if r < covered)
        with patience(ALWAYS_TABLES):
            check_equal(idx, codes[::97], 10)
            check_equal(idx, codes[::251], len(idx) + 3)
    idx.remove(idx.ids[:_ids.DROP_IN_PLACE_MAX + 1])
    assert idx.multi_index is None  # many rows: dropped, rebuilt at the next search
    with patience(ALWAYS_TABLES):
        check_equal(idx, codes[::97], 10)


def test_remove_rows_checks_its_arguments():
    idx = Index(64)
    idx.add(clustered(np.random.default_rng(0), 300, 8))
    idx.build_multi_index()
    tables = idx._multi
    for rows, err in (([3, 2], ValueError), ([-1], ValueError), ([300], ValueError), ([[1]], TypeError)):
        with pytest.raises(err):
            tables.remove_rows(idx.codes, np.array(rows, dtype=np.int64))
    with pytest.raises(ValueError, match="codes"):
        tables.remove_rows(idx.codes[:, :4], np.array([1]))
    assert tables.rows == 300


def test_string_ids_and_threads():
    rng = np.random.default_rng(4)
    codes = clustered(rng, 1200, 16)
    idx = Index(128)
    idx.add(codes, ids=[f"uid-{i}" for i in range(1200)])
    idx.build_multi_index(threads=2)
    with patience(ALWAYS_TABLES):
        for threads in (1, 2, 3):
            check_equal(idx, codes[::37], 10, threads=threads)


def test_empty_and_tiny_indexes():
    idx = Index(64)
    idx.build_multi_index()
    res = idx.search(np.zeros(8, np.uint8), k=3)
    assert res.ids.tolist() == [-1, -1, -1]
    idx.add(np.arange(16, dtype=np.uint8).reshape(2, 8))
    with patience(ALWAYS_TABLES):
        check_equal(idx, np.arange(16, dtype=np.uint8).reshape(2, 8), 5)


def test_drop_and_view(tmp_path):
    rng = np.random.default_rng(5)
    codes = clustered(rng, 500, 8)
    idx = Index(64)
    idx.add(codes)
    idx.save(tmp_path / "a.mhi")
    with Index.view(tmp_path / "a.mhi") as view:  # tables live in memory: a view can have them
        assert view.multi_index is None
        view.build_multi_index()
        with patience(ALWAYS_TABLES):
            check_equal(view, codes[:4], 10)
    idx.build_multi_index()
    idx.drop_multi_index()
    assert idx.multi_index is None
    check_equal(idx, codes[:4], 10)


def test_uniform_codes_fall_back_to_the_scan():
    """On codes without near neighbours the tables lose; with the default patience every
    answer is still exact and the index pauses the tables after a query that lost."""
    rng = np.random.default_rng(6)
    codes = rng.integers(0, 256, size=(20_000, 8), dtype=np.uint8)
    idx = Index(64)
    idx.add(codes)
    idx.build_multi_index()
    for _ in range(5):
        check_equal(idx, rng.integers(0, 256, size=(3, 8), dtype=np.uint8), 10)


def test_tables_memory_within_the_codes_and_ids():
    """At 64 bits the tables cost at most the codes plus int64 ids (16 bytes a row)."""
    rng = np.random.default_rng(8)
    idx = Index(64)
    idx.add(rng.integers(0, 256, size=(200_000, 8), dtype=np.uint8))
    info = idx.build_multi_index()
    assert info.memory_bytes <= 16 * 200_000, info
    copied = idx.build_multi_index(copy_codes=True)  # and each table's copy: 8 bytes a row more
    assert copied.memory_bytes == info.memory_bytes + 8 * 200_000 * info.substrings


def test_concurrent_searches_while_the_tables_are_rebuilt():
    """After remove(), the first search rebuilds the tables; searches that come meanwhile scan.
    Every answer is the exact one."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(9)
    codes = clustered(rng, 60_000, 8)
    idx = Index(64)
    idx.add(codes)
    idx.build_multi_index()
    idx.remove(idx.ids[::5])
    queries = codes[:64]
    want = brute_force_search(queries, idx.codes, 10)[1]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: idx.search(queries[i], k=10, threads=1).distances, range(64)))
    np.testing.assert_array_equal(np.stack(got), want)
    assert idx.multi_index is not None and idx.multi_index.rows == len(idx)


@pytest.mark.parametrize("copy", [False, True], ids=["rows", "copied"])
@pytest.mark.parametrize("mode", [ALWAYS_TABLES, ALWAYS_SCAN], ids=["tables", "scan"])
def test_sort_by_code_rebuilds_the_tables(mode, copy):
    """After Index.sort_by_code() the next search rebuilds the tables over the new row order;
    answers stay the scan's (ties now by the sorted order), masks and later adds included."""
    rng = np.random.default_rng(12)
    codes = clustered(rng, 3000, 8)
    idx = Index(64)
    idx.add(codes, ids=rng.permutation(3000) + 100)
    idx.build_multi_index(copy_codes=copy)
    idx.sort_by_code()
    assert idx.multi_index is None  # dropped: row numbers moved
    with patience(mode):
        check_equal(idx, codes[::50], 10)
        assert idx.multi_index.rows == 3000 and idx.multi_index.copied_codes is copy
        check_equal(idx, codes[::97], 100, allow=np.arange(3000) % 4 != 1)
        idx.add(codes[:20], ids=np.arange(20))  # equal codes again, after the sorted rows
        check_equal(idx, codes[:20], 40)
