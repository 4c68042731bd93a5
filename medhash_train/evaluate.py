"""Evaluation shared by training (epoch choice on validation), `medhash eval` and the benchmark.

Queries are one split, the database the other two (test queries against train + val; during
training, val queries against train). Codes come either from the torch model (training-time
validation, the benchmark grid) or from the exported ONNX model through the runtime's
Encoder (`medhash eval`: what is evaluated is exactly what ships).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from medhash_sdk import metrics
from medhash_sdk.codes import pack_codes

from .data import SPLITS, ImageSet


@torch.no_grad()
def torch_outputs(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Code logits (n, K) and probabilities (n, C) as float32 numpy, model in eval mode."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    us, ps = [], []
    for s in range(0, x.shape[0], batch_size):
        xb = x[s:s + batch_size].to(dev, non_blocking=True)
        if dev.type == "cuda":
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            u, p, _ = model(xb)
        us.append(u.float().cpu())
        ps.append(p.float().cpu())
    model.train(was_training)
    return torch.cat(us).numpy(), torch.cat(ps).numpy()


def crop_statistics(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> dict[str, float]:
    """How much the attention crop zooms: the boxes' area as a fraction of the image (mean,
    median), the share of images cropped to the whole image (no zoom) and to the minimum box."""
    cfg = model.config
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    boxes = []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            boxes.append(model.boxes(x[s:s + batch_size].to(dev)).float().cpu())
    model.train(was_training)
    b = torch.cat(boxes).numpy()
    area = b[:, 0] * b[:, 2]
    return {"mean_area": float(area.mean()), "median_area": float(np.median(area)),
            "whole_image": float((area > 0.999).mean()),
            "min_box": float(((b[:, 0] <= cfg.min_box + 1e-3) & (b[:, 2] <= cfg.min_box + 1e-3)).mean())}


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
    from medhash_sdk.encoder import Encoder

    enc = model if isinstance(model, Encoder) else Encoder(model)
    return np.asarray(enc.encode(list(images), batch_size=batch_size))


def evaluate_model_file(model: Any, ds: ImageSet, split: str = "test", k: int = 100,
                        seeds: Sequence[int | None] = (0, 1, 2), batch_size: int = 64) -> dict[str, Any]:
    """Encode every image of `ds` with the exported model, then `split` queries vs the rest."""
    q, db = split_query_db(ds.split, split)
    codes = encode_with_model_file(model, ds.images, batch_size)
    return code_figures(codes[q], codes[db], ds.labels[q], ds.labels[db], k, seeds)


def torch_codes(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    return pack_codes(torch_outputs(model, x, batch_size)[0])
