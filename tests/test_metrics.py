"""medhash_sdk.metrics against rankings computed by hand, ties included."""
import math

import numpy as np
import pytest

from medhash_sdk import metrics as M
from medhash_sdk.codes import hamming_distances


def test_ap_hand_computed():
    d = np.array([[0, 1, 2, 3]])
    rel = np.array([[1, 0, 1, 0]])
    # ranking 0,1,2,3 -> relevant at ranks 1 and 3: (1/1 + 2/3) / 2
    assert M.map_at_k(d, rel, k=4, seeds=None) == pytest.approx((1 + 2 / 3) / 2)
    assert M.map_at_k(d, rel, k=None, seeds=None) == pytest.approx((1 + 2 / 3) / 2)
    # only one relevant item inside the top 2: AP divides by 1, not by 2
    assert M.map_at_k(d, rel, k=2, seeds=None) == pytest.approx(1.0)
    assert M.precision_at_k(d, rel, k=2, seeds=None) == pytest.approx(0.5)


def test_reverse_order_and_no_relevant_query():
    d = np.array([[3, 2, 1, 0], [0, 1, 2, 3]])
    rel = np.array([[1, 0, 1, 0], [0, 0, 0, 0]])
    # query 0 ranks 3,2,1,0 -> relevant at ranks 2 and 4: (1/2 + 2/4) / 2 = 0.5; query 1 scores 0
    assert M.map_at_k(d, rel, k=None, seeds=None) == pytest.approx((0.5 + 0.0) / 2)
    assert M.ndcg_at_k(d, rel, k=4, seeds=None) == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)) / 2)


def test_ties_database_order_and_seeded_mean():
    d = np.array([[1, 1, 0]])
    rel = np.array([[1, 0, 0]])
    # database order: 2, 0, 1 -> relevant at rank 2 -> AP 1/2
    assert M.map_at_k(d, rel, k=None, seeds=None) == pytest.approx(0.5)
    # a shuffled tie order gives either 2,0,1 (AP 1/2) or 2,1,0 (AP 1/3)
    vals = [M.map_at_k(d, rel, k=None, seeds=s) for s in range(40)]
    assert set(np.round(vals, 6)) == {round(0.5, 6), round(1 / 3, 6)}
    assert M.map_at_k(d, rel, k=None, seeds=range(40)) == pytest.approx(np.mean(vals))
    # rows with different distances never swap, whatever the seed
    for s in range(10):
        assert M.rank(d, k=1, seed=s)[0, 0] == 2


def test_ndcg_hand_computed():
    d = np.array([[0, 1, 2]])
    g = np.array([[2, 0, 1]])
    dcg = 3 / math.log2(2) + 0 + 1 / math.log2(4)
    ideal = 3 / math.log2(2) + 1 / math.log2(3)
    assert M.ndcg_at_k(d, g, k=3, seeds=None) == pytest.approx(dcg / ideal)
    # ideal DCG@K is over the whole database, not only over what the ranking returned
    assert M.ndcg_at_k(d, g, k=1, seeds=None) == pytest.approx(1.0)
    d2 = np.array([[1, 0, 2]])
    assert M.ndcg_at_k(d2, g, k=1, seeds=None) == pytest.approx(0.0)


def test_shared_labels_and_report():
    q = np.array([[1, 0, 1], [0, 1, 0]])
    db = np.array([[1, 1, 1], [0, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(M.shared_labels(q, db), [[2, 1, 0], [1, 0, 1]])
    rep = M.retrieval_report(np.array([[0, 1, 2], [2, 1, 0]]), q, db, k=2, seeds=[None])
    assert rep["map@2"] == pytest.approx(1.0)
    assert rep["queries"] == 2 and rep["database"] == 3
    with pytest.raises(ValueError, match="label columns"):
        M.shared_labels(q, db[:, :2])


def test_hamming_matrix_matches_reference():
    rng = np.random.default_rng(0)
    q = rng.integers(0, 256, (7, 8), dtype=np.uint8)
    db = rng.integers(0, 256, (33, 8), dtype=np.uint8)
    np.testing.assert_array_equal(M.hamming_distance_matrix(q, db), hamming_distances(q, db))
    with pytest.raises(TypeError, match="uint8"):
        M.hamming_distance_matrix(q.astype(np.int64), db)


def test_bad_arguments():
    with pytest.raises(ValueError, match="same"):
        M.map_at_k(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="positive"):
        M.rank(np.zeros((1, 3)), k=0)
