"""The compiled engine (medhash_sdk._hamming) against the numpy spec, on every SIMD path.

brute_force_search in medhash_sdk.codes is the reference: same rows, same distances, ties by
smaller row number (insertion order), -1 padding, rows outside the allow mask skipped.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medhash_sdk import _hamming as H
from medhash_sdk.codes import brute_force_search

LEVELS = H.simd_levels()
NBYTES = [1, 2, 4, 8, 16, 24, 32, 40, 64, 128]


@pytest.fixture
def level_guard():
    """Restore the SIMD level a test changed."""
    before = H.simd_level()
    yield
    H.set_simd_level(before)


@contextmanager
def forced_level(level):
    """Run the block on one SIMD path, then restore the previous one."""
    before = H.set_simd_level(level)
    try:
        yield
    finally:
        H.set_simd_level(before)


@contextmanager
def split_small_inputs():
    """Let a single query be split across threads even for tiny inputs (normally >= 4 MiB a
    thread), so the split-and-merge path meets ties, masks and k > n at every size."""
    before = H.set_split_bytes(1)
    try:
        yield
    finally:
        H.set_split_bytes(before)


def make_codes(rng, n, nbytes, distinct):
    """n codes; distinct=None: uniform bytes, else drawn from that many codes (many ties)."""
    if distinct is None:
        return rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    pool = rng.integers(0, 256, (distinct, nbytes), dtype=np.uint8)
    return np.ascontiguousarray(pool[rng.integers(0, distinct, n)])


def assert_same(got, want):
    rows, dists = got
    assert rows.dtype == np.int64 and dists.dtype == np.int32
    np.testing.assert_array_equal(dists, want[1])
    np.testing.assert_array_equal(rows, want[0])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 3000),
    nbytes=st.sampled_from(NBYTES),
    nq=st.integers(1, 4),
    k_extra=st.integers(0, 5),
    k_frac=st.floats(0, 1),
    distinct=st.sampled_from([None, 1, 2, 5, 40]),
    mask=st.sampled_from([None, "half", "sparse", "none_allowed", "all_allowed"]),
    level=st.sampled_from(LEVELS),
    threads=st.sampled_from([1, 2, 3]),
)
def test_matches_reference(seed, n, nbytes, nq, k_extra, k_frac, distinct, mask,
                           level, threads):
    rng = np.random.default_rng(seed)
    codes = make_codes(rng, n, nbytes, distinct)
    # queries partly copied from the codes, so distance 0 and exact ties occur
    queries = make_codes(rng, nq, nbytes, None)
    if n:
        queries[::2] = codes[rng.integers(0, n, queries[::2].shape[0])]
    k = max(1, int(k_frac * n) + k_extra)
    allow = {
        None: None,
        "half": rng.random(n) < 0.5,
        "sparse": (rng.random(n) < 0.02).astype(np.uint8),
        "none_allowed": np.zeros(n, dtype=bool),
        "all_allowed": np.ones(n, dtype=np.uint8),
    }[mask]
    with forced_level(level), split_small_inputs():
        got = H.search(codes, queries, k, threads, allow)
    assert_same(got, brute_force_search(queries, codes, k, allow))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    nbytes=st.sampled_from([4, 8, 32, 128]),
    k=st.integers(1, 400),
    level=st.sampled_from(LEVELS),
)
def test_descending_staircase_keeps_ties_at_threshold(seed, nbytes, k, level):
    """Worst case for the candidate buffer: every row is closer than the ones before it.

    Rows come in plateaus of equal distance, falling step by step, so thousands of rows are
    accepted (the buffer is compacted many times) and rows tied at the current threshold must
    survive each compaction. Many prefixes of the rows are searched, so the search often ends
    just after a compaction, when those tied rows decide the answer.
    """
    rng = np.random.default_rng(seed)
    nbits = nbytes * 8
    dist = np.repeat(np.arange(nbits, -1, -1), rng.integers(1, 2 * k + 2, nbits + 1))[:6000]
    bits = np.arange(nbits)[None, :] < dist[:, None]
    codes = np.ascontiguousarray(np.packbits(bits[:, rng.permutation(nbits)], axis=1))
    queries = np.zeros((2, nbytes), np.uint8)
    queries[1] = codes[len(codes) // 2]
    allow = rng.random(len(codes)) < 0.9
    for m in np.unique(rng.integers(1, len(codes) + 1, 25)):
        mask = allow[:m] if m % 2 else None
        with forced_level(level):
            got = H.search(codes[:m], queries, k, 1, mask)
        assert_same(got, brute_force_search(queries, codes[:m], k, mask))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("nbytes", [8, 16, 32, 64, 24])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_large_rows_split_across_threads(level_guard, level, nbytes, threads):
    """Enough rows that a single query is split by row range and the parts are merged."""
    rng = np.random.default_rng(nbytes * 10 + threads)
    n = 50_000
    codes = make_codes(rng, n, nbytes, 30)  # heavy ties across the part boundaries
    codes[rng.integers(0, n, 500)] = make_codes(rng, 500, nbytes, None)
    queries = codes[[0, 49_999]].copy()
    allow = rng.random(n) < 0.7
    H.set_simd_level(level)
    with split_small_inputs():
        for k in (1, 10, 1000, 40_000, 60_000):
            for m in (None, allow):
                for q in (queries[:1], queries):  # one query (row split) and two (row split too)
                    assert_same(H.search(codes, q, k, threads, m), brute_force_search(q, codes, k, m))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("nbytes", [16, 32, 64])
def test_streaming_scan_over_a_mebibyte(level_guard, level, nbytes):
    """Over 1 MiB of codes in one scan the vector kernels prefetch ahead (a separate loop)."""
    rng = np.random.default_rng(nbytes)
    n = (1 << 20) // nbytes + 4_099  # a whole number of groups plus a ragged tail
    codes = make_codes(rng, n, nbytes, 3_000)
    queries = codes[[5, n - 1]].copy()
    allow = rng.random(n) < 0.6
    H.set_simd_level(level)
    for k in (1, 100, 5_000):
        for m in (None, allow):
            assert_same(H.search(codes, queries[:1], k, 1, m), brute_force_search(queries[:1], codes, k, m))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("nbytes", [8, 16, 32])
def test_many_results_with_a_sampled_threshold(level_guard, level, nbytes):
    """One query with k >= 128 over >= 128 k rows starts its scan with a threshold taken from
    a sample of the rows (hamming.h, sampled_limit): answers, ties and masks stay exact."""
    rng = np.random.default_rng(nbytes + 7)
    n = 200_037  # not a whole number of 64-row groups: the last rows take the kernels' tail paths
    H.set_simd_level(level)
    for distinct in (None, 3_000):
        codes = make_codes(rng, n, nbytes, distinct)
        query = codes[[12_345]].copy()
        for k in (128, 300, 1_000, 1_500):
            for m in (None, rng.random(n) < 0.5, rng.random(n) < 0.02):
                want = brute_force_search(query, codes, k, m)
                assert_same(H.search(codes, query, k, 1, m), want)
                with split_small_inputs():      # two row ranges, each with its own sample, merged
                    assert_same(H.search(codes, query, k, 2, m), want)


@pytest.mark.parametrize("level", LEVELS)
def test_sampled_threshold_too_low_searches_again(level_guard, level):
    """Rows laid out so that the sample sees only near rows: one row at distance 1 at the start
    of each of the 64 sampled blocks, every other row far. The sample's kSeedRank-th distance
    (kSeedRank <= 64) is 1, so only 64 rows pass that threshold, fewer than k = 128: the engine
    must search again without it, or the answer would end in -1 padding instead of the 64
    nearest far rows."""
    rng = np.random.default_rng(3)
    n, k = 64 * 4096, 128
    query = np.zeros((1, 8), np.uint8)
    codes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    codes[np.unpackbits(codes, axis=1).sum(1) < 16] = 0xFF      # every other row far (>= 16 bits)
    near = np.arange(64) * (n // 64)
    codes[near] = 0
    codes[near, 0] = 1                                          # distance 1
    H.set_simd_level(level)
    want = brute_force_search(query, codes, k)
    assert (want[1][0] == 1).sum() == 64 and (want[1][0] >= 16).sum() == 64
    assert_same(H.search(codes, query, k, 1, None), want)


@pytest.mark.parametrize("level", LEVELS)
def test_many_results_reach_into_the_last_rows(level_guard, level):
    """134 rows at distance 1 (the first of each sampled block and 70 more spread out) and 5 at
    distance 0 among the last rows, which fill no whole group of 64; every other row far. The
    5 come first in the answer, then the first 123 at distance 1: the rows past the last whole
    group must be gathered too, or the answer (still k rows long) would be wrong."""
    rng = np.random.default_rng(5)
    n, k = 64 * 4096 + 37, 128
    query = np.zeros((1, 8), np.uint8)
    codes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    codes[np.unpackbits(codes, axis=1).sum(1) < 16] = 0xFF      # every other row far (>= 16 bits)
    near = np.concatenate([np.arange(64) * 4096, 1_000 + np.arange(70) * 3_001])
    codes[near] = 0
    codes[near, 0] = 1                                          # distance 1
    last = n - 5 + np.arange(5)
    codes[last] = 0                                             # distance 0, in the last partial group
    H.set_simd_level(level)
    want = brute_force_search(query, codes, k)
    assert want[0][0][:5].tolist() == last.tolist() and (want[1][0] == 1).sum() == k - 5
    assert_same(H.search(codes, query, k, 1, None), want)


@pytest.mark.parametrize("level", LEVELS)
def test_sampled_threshold_too_high_falls_back(level_guard, level):
    """The opposite layout: the sampled rows (the first 256 of each of the 64 blocks) are all
    far, every other row near, so the sample's limit lets nearly every row through, more than
    the engine gathers for its counting pass (4k + 1024): it must fall back to the scan with
    its top-k and still give the exact answer, ties by row."""
    rng = np.random.default_rng(4)
    n, k = 64 * 4096, 128
    query = np.zeros((1, 8), np.uint8)
    codes = np.zeros((n, 8), np.uint8)
    codes[:, 0] = rng.integers(0, 8, n).astype(np.uint8)          # near: distance 0-3
    sampled = (np.arange(n) % 4096) < 256
    codes[sampled] = 0xFF                                           # far: distance 64
    H.set_simd_level(level)
    want = brute_force_search(query, codes, k)
    assert want[1][0].max() <= 3
    assert_same(H.search(codes, query, k, 1, None), want)


def test_default_split_on_large_input():
    """Over 4 MiB of codes a single query is split across threads by default."""
    rng = np.random.default_rng(11)
    codes = make_codes(rng, 700_000, 8, 50)
    q = codes[[123_456]].copy()
    want = brute_force_search(q, codes, 500)
    for threads in (1, 2, 3):
        assert_same(H.search(codes, q, 500, threads), want)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("nbytes", [8, 16, 32, 64])
def test_batch_blocks(threads, nbytes):
    """Batches larger than a query block, with chunked row scans (at 16-64 bytes on AVX-512:
    transposed chunks), a last chunk whose rows are not a multiple of 8, ties and a mask."""
    rng = np.random.default_rng(threads)
    n = 10_003
    codes = make_codes(rng, n, nbytes, 200)
    queries = make_codes(rng, 75, nbytes, None)
    queries[::3] = codes[rng.integers(0, n, 25)]
    allow = rng.random(n) < 0.7
    cases = [(k, None) for k in (1, 100)] + [(10, allow)]
    wants = [brute_force_search(queries, codes, k, mask) for k, mask in cases]
    for level in LEVELS:
        with forced_level(level):
            for (k, mask), want in zip(cases, wants):
                assert_same(H.search(codes, queries, k, threads, mask), want)


def test_empty_inputs():
    codes = np.zeros((0, 8), np.uint8)
    rows, dists = H.search(codes, np.zeros((2, 8), np.uint8), 3)
    assert rows.shape == (2, 3) and (rows == -1).all() and (dists == -1).all()
    rows, dists = H.search(np.zeros((5, 8), np.uint8), np.zeros((0, 8), np.uint8), 4)
    assert rows.shape == (0, 4) and dists.shape == (0, 4)


def test_readonly_and_memmap_codes(tmp_path):
    rng = np.random.default_rng(0)
    codes = make_codes(rng, 1000, 8, None)
    path = tmp_path / "codes.bin"
    codes.tofile(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r", shape=codes.shape)
    q = codes[:3].copy()
    q.setflags(write=False)
    assert_same(H.search(mm, q, 7), brute_force_search(q, codes, 7))


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda c, q: H.search(c.astype(np.float32), q, 1), TypeError, "uint8"),
        (lambda c, q: H.search(c.tolist(), q, 1), TypeError, "np.asarray"),
        (lambda c, q: H.search(c, q.astype(np.int8), 1), TypeError, "uint8"),
        (lambda c, q: H.search(c, q[0], 1), ValueError, "[None, :]"),
        (lambda c, q: H.search(c.reshape(-1), q, 1), ValueError, "2-D"),
        (lambda c, q: H.search(c[:, ::2], q[:, ::2], 1), ValueError, "ascontiguousarray"),
        (lambda c, q: H.search(np.asfortranarray(c), q, 1), ValueError, "C-contiguous"),
        (lambda c, q: H.search(c, np.zeros((2, 4), np.uint8), 1), ValueError, "same model"),
        (lambda c, q: H.search(c[:, :0], q[:, :0], 1), ValueError, "nbytes >= 1"),
        (lambda c, q: H.search(c, q, 0), ValueError, "k must be >= 1"),
        (lambda c, q: H.search(c, q, -3), ValueError, "k must be >= 1"),
        (lambda c, q: H.search(c, q, 2.0), TypeError, "k must be an int"),
        (lambda c, q: H.search(c, q, True), TypeError, "k must be an int"),
        (lambda c, q: H.search(c, q, np.bool_(True)), TypeError, "k must be an int"),
        (lambda c, q: H.search(c, q, None), TypeError, "k must be an int"),
        (lambda c, q: H.search(c, q, 2**70), ValueError, "too large"),
        (lambda c, q: H.search(c, q, 1, 0), ValueError, "threads must be >= 1"),
        (lambda c, q: H.search(c, q, 1, "2"), TypeError, "threads must be an int"),
        (lambda c, q: H.search(c, q, 1, 1, [True] * 10), TypeError, "allow"),
        (lambda c, q: H.search(c, q, 1, 1, np.ones(9, bool)), ValueError, "shape (10,)"),
        (lambda c, q: H.search(c, q, 1, 1, np.ones((10, 1), bool)), ValueError, "shape (10,)"),
        (lambda c, q: H.search(c, q, 1, 1, np.ones(10, np.int64)), TypeError, "bool or uint8"),
        (lambda c, q: H.search(c, q, 1, 1, np.ones(20, bool)[::2]), ValueError, "contiguous"),
        (lambda c, q: H.search(c, q, 2**40, 1), ValueError, "too large"),
    ],
)
def test_bad_arguments_raise(call, error, words):
    codes = np.zeros((10, 8), np.uint8)
    queries = np.zeros((2, 8), np.uint8)
    with pytest.raises(error) as info:
        call(codes, queries)
    assert words in str(info.value)


def test_numpy_integer_k_and_threads():
    codes = np.arange(80, dtype=np.uint8).reshape(10, 8)
    got = H.search(codes, codes[:2], np.int64(3), np.int32(2))
    assert_same(got, brute_force_search(codes[:2], codes, 3))


def test_set_simd_level_rejects_unknown(level_guard):
    with pytest.raises(ValueError, match="unknown SIMD level"):
        H.set_simd_level("sse9")
    with pytest.raises(ValueError, match="min_bytes must be >= 1"):
        H.set_split_bytes(0)
    previous = H.set_simd_level("portable")
    assert H.simd_level() == "portable"
    assert H.set_simd_level(previous) == "portable"


def test_concurrent_searches_give_serial_answers():
    rng = np.random.default_rng(7)
    codes = make_codes(rng, 200_000, 8, 1000)
    queries = [make_codes(rng, nq, 8, None) for nq in (1, 1, 5, 40, 1, 3, 64, 1)]
    masks = [None, rng.random(200_000) < 0.5] * 4
    ks = [10, 100, 1, 1000, 5, 10, 20, 3000]
    threads = [1, 2, 1, 2, 3, 1, 2, 1]
    serial = [H.search(codes, q, k, t, m) for q, k, t, m in zip(queries, ks, threads, masks)]
    results: dict[int, list] = {}
    barrier = threading.Barrier(len(queries))

    def worker(i):
        barrier.wait()
        results[i] = [H.search(codes, queries[i], ks[i], threads[i], masks[i]) for _ in range(5)]

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(len(queries))]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    for i, want in enumerate(serial):
        for got in results[i]:
            assert_same(got, want)


def _run_python(code, **env):
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize("level", LEVELS)
def test_env_var_forces_level(level):
    code = (
        "import numpy as np\n"
        "from medhash_sdk import _hamming as H\n"
        "from medhash_sdk.codes import brute_force_search\n"
        "rng = np.random.default_rng(3)\n"
        "c = rng.integers(0, 256, (5000, 32), dtype=np.uint8)\n"
        "q = rng.integers(0, 256, (3, 32), dtype=np.uint8)\n"
        "r = H.search(c, q, 50)\n"
        "e = brute_force_search(q, c, 50)\n"
        "assert (r[0] == e[0]).all() and (r[1] == e[1]).all()\n"
        "print(H.simd_level())\n"
    )
    proc = _run_python(code, MEDHASH_SIMD=level)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == level


def test_env_var_unknown_level_warns():
    proc = _run_python("from medhash_sdk import _hamming as H; print(H.simd_level())",
                       MEDHASH_SIMD="sse9", PYTHONWARNINGS="always")
    assert proc.returncode == 0, proc.stderr
    assert "not a SIMD level" in proc.stderr
    assert proc.stdout.strip() == LEVELS[-1]
