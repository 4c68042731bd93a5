"""ApproximateHammingIndex (usearch HNSW over bits): recall, exact distances, files, errors."""
from __future__ import annotations

import numpy as np
import pytest

from medhash_sdk.approx import ApproximateHammingIndex
from medhash_sdk.codes import brute_force_search, hamming_distances
from medhash_sdk.exceptions import IndexFileError


def clustered_codes(rng, n, nbytes, centres=20, flip=0.1):
    """Codes near a few centres: each bit of a centre flipped with probability flip."""
    c = rng.integers(0, 2, (centres, nbytes * 8), dtype=np.uint8)
    bits = c[rng.integers(0, centres, n)] ^ (rng.random((n, nbytes * 8)) < flip)
    return np.ascontiguousarray(np.packbits(bits, axis=1))


@pytest.fixture(scope="module")
def built():
    rng = np.random.default_rng(0)
    codes = clustered_codes(rng, 4000, 8)
    index = ApproximateHammingIndex(64, expansion_search=128)
    index.add(codes, threads=1)
    queries = clustered_codes(np.random.default_rng(1), 50, 8)
    return index, codes, queries


def test_recall_and_exact_distances(built):
    index, codes, queries = built
    rows, dists = index.search(queries, 10, threads=1)
    assert rows.dtype == np.int64 and dists.dtype == np.int32 and rows.shape == (50, 10)
    # distances are the exact Hamming distances of the rows returned
    exact = hamming_distances(queries, codes)
    np.testing.assert_array_equal(dists, np.take_along_axis(exact, rows, axis=1))
    # sorted by (distance, row)
    assert (np.diff(dists, axis=1) >= 0).all()
    tie = np.diff(dists, axis=1) == 0
    assert (np.diff(rows, axis=1)[tie] > 0).all()
    # recall@10 against the exact top-10 distance: a row counts if it is within the true
    # 10th distance (ties make the exact row set ambiguous)
    _, true_d = brute_force_search(queries, codes, 10)
    recall = (dists <= true_d[:, -1:]).mean()
    assert recall >= 0.9, recall


def test_explicit_rows_padding_and_single_query():
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 256, (30, 4), dtype=np.uint8)
    index = ApproximateHammingIndex(32)
    rows = np.arange(30, dtype=np.int64) * 7 + 5
    assert (index.add(codes, rows) == rows).all()
    assert len(index) == 30
    got_rows, got_d = index.search(codes[3], 40)  # 1-D query, k > n
    assert got_rows.shape == (1, 40)
    assert (got_rows[0, 30:] == -1).all() and (got_d[0, 30:] == -1).all()
    assert sorted(got_rows[0, :30]) == sorted(rows)
    assert got_rows[0, 0] == rows[3] and got_d[0, 0] == 0
    # continuing numbering when rows=None
    more = index.add(codes[:2], np.array([1000, 1001]))
    assert list(more) == [1000, 1001]


def test_empty_index_returns_padding():
    index = ApproximateHammingIndex(64)
    rows, dists = index.search(np.zeros((2, 8), np.uint8), 3)
    assert (rows == -1).all() and (dists == -1).all()


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda ix: ix.add(np.zeros((3, 8), np.float32)), TypeError),
        (lambda ix: ix.add(np.zeros((3, 4), np.uint8)), ValueError),
        (lambda ix: ix.add(np.zeros((3, 8), np.uint8), np.array([1, 2])), ValueError),
        (lambda ix: ix.add(np.zeros((2, 8), np.uint8), np.array([1, 1])), ValueError),
        (lambda ix: ix.add(np.zeros((2, 8), np.uint8), np.array([-1, 2])), ValueError),
        (lambda ix: ix.add(np.zeros((2, 8), np.uint8), np.array([0.5, 2.0])), TypeError),
        (lambda ix: ix.add(np.zeros((1, 8), np.uint8), np.array([0])), ValueError),  # taken
        (lambda ix: ix.search(np.zeros((1, 8), np.uint8), 0), ValueError),
        (lambda ix: ix.search(np.zeros((1, 8), np.uint8), 2.5), TypeError),
        (lambda ix: ix.search(np.zeros((1, 16), np.uint8), 1), ValueError),
        (lambda ix: ix.search([0] * 8, 1), TypeError),
        (lambda ix: setattr(ix, "expansion_search", 0), ValueError),
    ],
)
def test_bad_arguments(call, error):
    index = ApproximateHammingIndex(64)
    index.add(np.zeros((1, 8), np.uint8))
    with pytest.raises(error):
        call(index)


def test_bad_nbits():
    with pytest.raises(ValueError, match="multiple of 8"):
        ApproximateHammingIndex(60)


def test_save_load_view_round_trip(built, tmp_path):
    index, _, queries = built
    path = tmp_path / "hnsw.usearch"
    index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["hnsw.usearch"]  # no temporary left
    want = index.search(queries, 10, threads=1)
    for view in (False, True):
        loaded = ApproximateHammingIndex.load(path, view=view)
        assert loaded.nbits == 64 and len(loaded) == len(index)
        loaded.expansion_search = index.expansion_search
        got = loaded.search(queries, 10, threads=1)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_damaged_files_raise_domain_error(built, tmp_path):
    index, _, _ = built
    good = tmp_path / "good.usearch"
    index.save(good)
    data = good.read_bytes()
    cases = {"garbage": b"not an index" * 10, "truncated": data[: len(data) // 2], "empty": b""}
    for name, blob in cases.items():
        path = tmp_path / f"{name}.usearch"
        path.write_bytes(blob)
        with pytest.raises(IndexFileError):
            ApproximateHammingIndex.load(path)
    with pytest.raises(IndexFileError):
        ApproximateHammingIndex.load(tmp_path / "missing.usearch")


def test_other_metric_file_is_refused(tmp_path):
    from usearch.index import Index

    other = Index(ndim=8, metric="cos", dtype="f32")
    other.add(np.arange(3), np.random.default_rng(0).random((3, 8), dtype=np.float32))
    path = tmp_path / "cos.usearch"
    other.save(str(path))
    with pytest.raises(IndexFileError, match="not Hamming"):
        ApproximateHammingIndex.load(path)
