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
- Unseen archive (docs/model.md, "Protocol"): leave_patient_out_aps ranks each image of one
  held-out set against the images of the OTHER patients in it (per-image APs);
  patient_bootstrap gives the 95% interval of their mean by resampling patients; auroc /
  per_label_auroc score the classifier head.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

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


# ----------------------------------------------------------------------------------- unseen archive
# The question a user asks: "my archive holds patients the model never saw; does it find similar
# cases among them?" Query AND database are held-out images; each query is ranked against every
# image of the OTHER held-out patients (its own patient's images, itself included, are not in its
# database). docs/model.md, "Protocol".

def same_patient_mask(query_patients: np.ndarray, db_patients: np.ndarray) -> np.ndarray:
    """bool (nq, n): True where the database item belongs to the query's patient."""
    q = np.asarray(query_patients).astype(str)
    d = np.asarray(db_patients).astype(str)
    return q[:, None] == d[None, :]


def average_precisions(distances: np.ndarray, relevance: np.ndarray, k: int | None = 100,
                       seeds: int | None | Sequence[int | None] = (0, 1, 2),
                       exclude: np.ndarray | None = None) -> np.ndarray:
    """AP@K of every query (float64 (nq,)), averaged over the tie-breaking seeds.

    exclude (bool (nq, n), optional): database items left out of that query's database (they are
    ranked after everything else and never count as relevant, so the figure equals the AP of the
    ranking with them removed). The mean of the result is map_at_k's figure when exclude is None.
    """
    d, g = _check_pair(distances, relevance)
    rel = g > 0
    if exclude is not None:
        ex = np.asarray(exclude, dtype=bool)
        if ex.shape != d.shape:
            raise ValueError(f"exclude {ex.shape} must have the distances' shape {d.shape}")
        d = np.where(ex, np.inf, d.astype(np.float64))
        rel = rel & ~ex
    out = np.zeros(d.shape[0], dtype=np.float64)
    ss = _seeds(seeds)
    for seed in ss:
        top = rank(d, k, seed)
        out += average_precision_at_k(np.take_along_axis(rel, top, axis=1))
    return out / len(ss)


def leave_patient_out_aps(dist_fn: Callable[[np.ndarray], np.ndarray], labels: np.ndarray,
                          patients: np.ndarray, k: int | None = 100,
                          seeds: int | None | Sequence[int | None] = (0, 1, 2),
                          chunk: int = _CHUNK) -> np.ndarray:
    """Per-query AP@K of the unseen-archive protocol over one held-out set of n images.

    dist_fn(rows) -> distances (len(rows), n) of those rows to all n images (called in chunks,
    so memory stays at chunk * n). Each query's database: every image of another patient.
    Relevant: shares at least one label. Ties broken at random (mean over `seeds`).
    """
    y = _labels2d(labels, "labels")
    p = np.asarray(patients).astype(str)
    n = y.shape[0]
    if p.shape != (n,):
        raise ValueError(f"patients must be one id per image ({n}), got shape {p.shape}")
    if len(np.unique(p)) < 2:
        raise ValueError("the unseen-archive protocol needs images of at least two patients")
    out = np.empty(n, dtype=np.float64)
    for s in range(0, n, chunk):
        rows = np.arange(s, min(s + chunk, n))
        d = np.asarray(dist_fn(rows))
        if d.shape != (len(rows), n):
            raise ValueError(f"dist_fn returned shape {d.shape}, expected {(len(rows), n)}")
        rel = (y[rows] @ y.T) > 0
        out[rows] = average_precisions(d, rel, k, seeds, exclude=p[rows][:, None] == p[None, :])
    return out


def patient_bootstrap(values: np.ndarray, patients: np.ndarray, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of per-image `values` when whole patients are resampled.

    Each replicate draws the held-out patients with replacement (as many as there are) and takes
    the mean over the drawn patients' images (a patient drawn twice counts twice). Deterministic
    for a given seed, so two series of the same images get the same draws: the interval of a
    paired difference (model minus raw pixels, say) is patient_bootstrap(a - b, patients).
    """
    v = np.asarray(values, dtype=np.float64)
    p = np.asarray(patients).astype(str)
    if v.ndim != 1 or v.shape != p.shape:
        raise ValueError(f"values {v.shape} and patients {p.shape} must be two (n,) arrays")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    uniq, inv = np.unique(p, return_inverse=True)
    sums = np.bincount(inv, weights=v, minlength=len(uniq))
    counts = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(uniq), np.full(len(uniq), 1.0 / len(uniq)), size=n_boot).astype(np.float64)
    means = (draws @ sums) / (draws @ counts)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return float(lo), float(hi)


def auroc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n_pos * n_neg)); tied scores count one half.
    NaN when targets hold only one class."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(targets).ravel() > 0
    if s.shape != t.shape:
        raise ValueError(f"scores {s.shape} and targets {t.shape} differ in length")
    npos, nneg = int(t.sum()), int((~t).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average rank (1-based) over each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[t].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))


def per_label_auroc(probabilities: np.ndarray, labels: np.ndarray, names: Sequence[str],
                    min_positives: int = 25) -> dict[str, dict[str, float]]:
    """{name: {"auroc", "positives"}} for every label column with >= min_positives positive images."""
    pr = np.asarray(probabilities, dtype=np.float64)
    y = _labels2d(labels, "labels")
    if pr.shape != y.shape or len(names) != y.shape[1]:
        raise ValueError(f"probabilities {pr.shape}, labels {y.shape} and {len(names)} names must agree")
    out = {}
    for j, name in enumerate(names):
        pos = int(y[:, j].sum())
        if pos >= min_positives and pos < y.shape[0]:
            out[str(name)] = {"auroc": auroc(pr[:, j], y[:, j]), "positives": pos}
    return out
