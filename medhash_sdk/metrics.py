"""Retrieval metrics (numpy only): mAP@K, NDCG@K, precision@K over a Hamming (or any) ranking.

Definitions (docs/method.md, "Metrics"):

- relevance: a database item is relevant to a query when they share at least one label
  ("No Finding" is a label column of its own, so two normal images are relevant);
  graded relevance for NDCG is the number of shared labels.
- mAP@K: for each query, AP over the top K of the ranking = mean of precision@i over the
  ranks i <= K that hold a relevant item (i.e. divided by the number of relevant items inside
  the top K); a query with no relevant item in its top K scores 0. K=None means the whole
  database.
- NDCG@K: gain 2^rel - 1, discount log2(1 + rank), normalised by the ideal DCG@K of the whole
  database for that query; a query whose ideal DCG is 0 scores 0.
- precision@K: relevant items in the top K / min(K, database size).
- Ties (equal Hamming distances are common): broken by database position after a seeded
  shuffle of the database (seed None keeps database order); every function takes `seeds` and
  returns the mean over them, because tie order alone moves mAP by 1-2 points.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

_CHUNK = 256  # queries ranked at a time (bounds memory at _CHUNK * n)


def _labels2d(labels: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(labels)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, num_labels) 0/1 array, got shape {a.shape}")
    return (a > 0).astype(np.float32)


def shared_labels(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """Number of labels each query shares with each database item: int32 (nq, n)."""
    q = _labels2d(query_labels, "query_labels")
    d = _labels2d(db_labels, "db_labels")
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query_labels have {q.shape[1]} label columns but db_labels have {d.shape[1]}")
    return np.rint(q @ d.T).astype(np.int32)


def hamming_distance_matrix(query_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """Hamming distances int32 (nq, n) between packed uint8 codes (nq, B) and (n, B).

    Same values as medhash_sdk.codes.hamming_distances; computed as a float32 matrix product
    of the unpacked +-1 bits, which is exact for codes up to 2^24 bits and much faster.
    """
    q = np.atleast_2d(np.asarray(query_codes))
    d = np.atleast_2d(np.asarray(db_codes))
    if q.dtype != np.uint8 or d.dtype != np.uint8:
        raise TypeError(f"packed codes must be uint8, got {q.dtype} and {d.dtype}; pack logits with medhash_sdk.codes.pack_codes")
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query codes have {q.shape[1]} bytes but database codes have {d.shape[1]}")
    nbits = q.shape[1] * 8
    qb = np.unpackbits(q, axis=1).astype(np.float32) * 2 - 1
    db = np.unpackbits(d, axis=1).astype(np.float32) * 2 - 1
    return np.rint((nbits - qb @ db.T) / 2).astype(np.int32)


def cosine_distance_matrix(query: np.ndarray, db: np.ndarray) -> np.ndarray:
    """1 - cosine similarity, float64 (nq, n), between real-valued embeddings."""
    q = np.atleast_2d(np.asarray(query, dtype=np.float64))
    d = np.atleast_2d(np.asarray(db, dtype=np.float64))
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query has {q.shape[1]} dimensions but db has {d.shape[1]}")
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    return 1.0 - q @ d.T


def rank(distances: np.ndarray, k: int | None = None, seed: int | None = None) -> np.ndarray:
    """Database rows of each query's top k, int64 (nq, k), nearest first.

    Equal distances are ordered by database position after a shuffle seeded with `seed`
    (seed None: plain database order).
    """
    dist = np.atleast_2d(np.asarray(distances))
    nq, n = dist.shape
    k = n if k is None else int(k)
    if k <= 0:
        raise ValueError(f"k must be a positive int or None (whole database), got {k}")
    k = min(k, n)
    perm = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    out = np.empty((nq, k), dtype=np.int64)
    for s in range(0, nq, _CHUNK):
        block = dist[s:s + _CHUNK][:, perm]
        order = np.argsort(block, axis=1, kind="stable")[:, :k]
        out[s:s + _CHUNK] = perm[order]
    return out


def _check_pair(distances: np.ndarray, graded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.atleast_2d(np.asarray(distances))
    g = np.atleast_2d(np.asarray(graded))
    if d.shape != g.shape:
        raise ValueError(f"distances {d.shape} and relevance {g.shape} must have the same (nq, n) shape")
    if d.shape[1] == 0:
        raise ValueError("the database is empty")
    return d, g


def _seeds(seeds: int | None | Iterable[int | None]) -> list[int | None]:
    if seeds is None or isinstance(seeds, (int, np.integer)):
        return [seeds]
    out = list(seeds)
    if not out:
        raise ValueError("seeds must name at least one tie-breaking seed (or None for database order)")
    return out


def average_precision_at_k(ranked_relevant: np.ndarray) -> np.ndarray:
    """AP of each row of a ranked 0/1 relevance matrix (nq, k), as defined in the module docstring."""
    rel = np.asarray(ranked_relevant) > 0
    hits = np.cumsum(rel, axis=1)
    prec = hits / np.arange(1, rel.shape[1] + 1)
    total = hits[:, -1] if rel.shape[1] else np.zeros(rel.shape[0])
    return np.where(total > 0, (prec * rel).sum(axis=1) / np.maximum(total, 1), 0.0)


def map_at_k(distances: np.ndarray, relevance: np.ndarray, k: int | None = 100,
             seeds: int | None | Sequence[int | None] = (0, 1, 2)) -> float:
    """mAP@K; relevance (nq, n) > 0 marks relevant items (shared-label counts work as is)."""
    d, g = _check_pair(distances, relevance)
    vals = []
    for seed in _seeds(seeds):
        top = rank(d, k, seed)
        vals.append(average_precision_at_k(np.take_along_axis(g, top, axis=1) > 0).mean())
    return float(np.mean(vals))


def precision_at_k(distances: np.ndarray, relevance: np.ndarray, k: int | None = 100,
                   seeds: int | None | Sequence[int | None] = (0, 1, 2)) -> float:
    """Mean fraction of relevant items in the top min(K, n)."""
    d, g = _check_pair(distances, relevance)
    vals = []
    for seed in _seeds(seeds):
        top = rank(d, k, seed)
        vals.append((np.take_along_axis(g, top, axis=1) > 0).mean())
    return float(np.mean(vals))


def ndcg_at_k(distances: np.ndarray, graded: np.ndarray, k: int | None = 100,
              seeds: int | None | Sequence[int | None] = (0, 1, 2)) -> float:
    """NDCG@K with graded relevance (e.g. shared-label counts), gain 2^rel - 1."""
    d, g = _check_pair(distances, graded)
    g = g.astype(np.float64)
    kk = d.shape[1] if k is None else min(int(k), d.shape[1])
    discount = 1.0 / np.log2(np.arange(2, kk + 2))
    ideal = ((2.0 ** -np.sort(-g, axis=1)[:, :kk]) - 1.0) @ discount
    vals = []
    for seed in _seeds(seeds):
        top = rank(d, kk, seed)
        dcg = ((2.0 ** np.take_along_axis(g, top, axis=1)) - 1.0) @ discount
        vals.append(np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 0.0).mean())
    return float(np.mean(vals))


def retrieval_report(distances: np.ndarray, query_labels: np.ndarray, db_labels: np.ndarray,
                     k: int = 100, seeds: Sequence[int | None] = (0, 1, 2)) -> dict[str, float]:
    """The standard figures for one ranking: mAP@k, mAP@all, NDCG@k, precision@k.

    Keys: "map@{k}", "map@all", "ndcg@{k}", "precision@{k}", plus "queries" and "database".
    """
    graded = shared_labels(query_labels, db_labels)
    d, _ = _check_pair(distances, graded)
    return {
        f"map@{k}": map_at_k(d, graded, k, seeds),
        "map@all": map_at_k(d, graded, None, seeds),
        f"ndcg@{k}": ndcg_at_k(d, graded, k, seeds),
        f"precision@{k}": precision_at_k(d, graded, k, seeds),
        "queries": int(d.shape[0]),
        "database": int(d.shape[1]),
    }
