"""Retrieval figures of codes and of exported model files (numpy and the Encoder, no torch).

Queries are one split, the database the other two (test queries against train + val; during
training, val queries against train). Codes come from the torch model (training-time
validation, the benchmark grid: medhash_train.evaluate) or from an exported model file
through the Encoder (`medhash eval`: what is evaluated is exactly what ships).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import metrics
from .datasets import SPLITS, ImageSet, check_split, load_dataset


def split_query_db(split: np.ndarray, query: str) -> tuple[np.ndarray, np.ndarray]:
    """Query rows = `query` split; database = every other split's rows."""
    if query not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {query!r}")
    q = np.flatnonzero(split == query)
    db = np.flatnonzero(split != query)
    if q.size == 0 or db.size == 0:
        raise ValueError(f"the {query!r} split or the database (the other splits) is empty")
    return q, db


def code_figures(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray,
                 k: int = 100, seeds: Sequence[int | None] = (0, 1, 2)) -> dict[str, float]:
    """mAP@k, mAP@all, NDCG@k, precision@k of a Hamming ranking of packed codes."""
    d = metrics.hamming_distance_matrix(q_codes, db_codes)
    return metrics.retrieval_report(d, q_labels, db_labels, k=k, seeds=seeds)


def float_figures(q: np.ndarray, db: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray,
                  k: int = 100, seeds: Sequence[int | None] = (0, 1, 2)) -> dict[str, float]:
    """The same figures for a cosine ranking of real-valued vectors (kNN upper bound, raw pixels)."""
    d = metrics.cosine_distance_matrix(q, db)
    return metrics.retrieval_report(d, q_labels, db_labels, k=k, seeds=seeds)


def evaluate_codes(codes: np.ndarray, ds: ImageSet, split: str = "test", k: int = 100,
                   seeds: Sequence[int | None] = (0, 1, 2)) -> dict[str, Any]:
    """Figures for packed codes of every image in `ds` (row order of ds): `split` vs the rest."""
    q, db = split_query_db(ds.split, split)
    return code_figures(codes[q], codes[db], ds.labels[q], ds.labels[db], k, seeds)


def encode_with_model_file(model: Any, images: list[Any], batch_size: int = 64) -> np.ndarray:
    """Packed codes of `images` (arrays or paths) through the runtime Encoder (or a model path)."""
    from .encoder import Encoder

    enc = model if isinstance(model, Encoder) else Encoder(model)
    return np.asarray(enc.encode(list(images), batch_size=batch_size))


def evaluate_model_file(model: Any, ds: ImageSet, split: str = "test", k: int = 100,
                        seeds: Sequence[int | None] = (0, 1, 2), batch_size: int = 64) -> dict[str, Any]:
    """Encode every image of `ds` with the exported model, then `split` queries vs the rest."""
    q, db = split_query_db(ds.split, split)
    codes = encode_with_model_file(model, ds.images, batch_size)
    return code_figures(codes[q], codes[db], ds.labels[q], ds.labels[db], k, seeds)


def evaluate_file(model_path: str, data: Sequence[str], split: str = "test", k: int = 100,
                  seeds: Sequence[int | None] = (0, 1, 2), batch_size: int = 64) -> dict[str, Any]:
    """What `medhash eval` reports: `split` queries vs the other splits, split as recorded in the model."""
    from .encoder import Encoder

    enc = Encoder(model_path)   # ModelFileError for a missing, damaged or card-less model
    card = enc.card
    rule = card.training.get("split", {})
    seed = int(rule.get("seed", 0))
    fractions = rule.get("fractions", (0.7, 0.1, 0.2))
    ds = load_dataset(list(data), split_seed=seed, fractions=fractions)
    if ds.label_names != card.labels:
        raise ValueError(f"the data's labels {ds.label_names} are not the model's {card.labels}")
    warnings = check_split(ds, rule)
    fig = evaluate_model_file(enc, ds, split=split, k=k, seeds=seeds, batch_size=batch_size)
    return {"model": model_path, "fingerprint": card.fingerprint, "method": card.method, "nbits": card.nbits,
            "split": split, "k": k, "tie_seeds": list(seeds), "data_fingerprint": ds.info["fingerprint"],
            "same_data_as_training": ds.info["fingerprint"] == card.training.get("data_fingerprint"),
            "warnings": warnings, **fig}
