"""Choosing a recipe without reading the test split (docs/model.md, "Protocol").

* patient_folds: patient-grouped k folds (no patient in two folds, folds of about equal image
  counts), seeded.
* fold_set / cross_collection: the ImageSet views a run trains and is scored on: split "train"
  (trained on) and "test" (the held-out images, scored with the unseen-archive protocol); no
  "val" split, so the trainer keeps the last epoch (the epoch count is part of the recipe).
* heldout_report: train once, score the held-out images with the unseen-archive protocol
  (what the benchmarks run per fold and per final setting).
* pooled_report: over the k folds of the training patients every image is held out exactly
  once, so the folds' per-image APs pool into one cross-validated mAP@100 with a
  patient-bootstrap interval (benchmarks/model_selection.py).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import numpy as np

from medhash_sdk.datasets import ImageSet
from medhash_sdk.evaluation import raw_pixel_vectors, unseen_archive_report


def patient_folds(patients: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Fold index (0..k-1) of every image: patients in a seeded order, cut where the cumulative
    image count crosses i/k of the total (each patient by the middle of its images)."""
    p = np.asarray(patients).astype(str)
    uniq, inv, counts = np.unique(p, return_inverse=True, return_counts=True)
    if not 2 <= k <= len(uniq):
        raise ValueError(f"k must be between 2 and the number of patients ({len(uniq)}), got {k}")
    order = np.random.default_rng(seed).permutation(len(uniq))
    mid = (np.cumsum(counts[order]) - counts[order] / 2.0) / len(p)
    fold_of = np.empty(len(uniq), dtype=np.int64)
    fold_of[order] = np.minimum((mid * k).astype(np.int64), k - 1)
    return fold_of[inv]


def fold_set(ds: ImageSet, pool: np.ndarray, folds: np.ndarray, fold: int) -> ImageSet:
    """The images `pool` (indices into ds) with fold `fold` as "test" and the rest as "train"."""
    sub = ds.subset(pool)
    split = np.where(folds == fold, "test", "train")
    return dataclasses.replace(sub, split=split)


def cross_collection(train: ImageSet, test: ImageSet) -> ImageSet:
    """One ImageSet: every image of `train` as "train", `test` as "test" minus the images of any
    patient (or image id) that `train` holds, so the test patients are unseen."""
    if list(train.label_names) != list(test.label_names):
        raise ValueError(f"the collections' labels differ: {train.label_names} vs {test.label_names}")
    seen_p = set(map(str, train.patient_id))
    seen_i = set(map(str, train.image_id))
    keep = np.array([str(p) not in seen_p and str(i) not in seen_i for p, i in zip(test.patient_id, test.image_id)])
    t = test.subset(np.flatnonzero(keep))
    info = {"train_sources": [os.path.basename(str(x)) for x in train.info.get("sources", [])],
            "test_sources": [os.path.basename(str(x)) for x in test.info.get("sources", [])],
            "test_images_dropped_shared_patients": int((~keep).sum())}
    return ImageSet(list(train.images) + list(t.images), np.concatenate([train.labels, t.labels]),
                    list(train.label_names), np.concatenate([train.image_id, t.image_id]),
                    np.concatenate([train.patient_id, t.patient_id]),
                    np.array(["train"] * len(train) + ["test"] * len(t)), info)


def heldout_report(cfg: Any, ds: ImageSet, x_all: np.ndarray, raw: np.ndarray | None = None,
                   log: Callable[[str], None] | None = None, k: int = 100,
                   eval_epochs: tuple[int, ...] = (), hybrid_bits: tuple[int, ...] = ()) -> dict[str, Any]:
    """Train cfg on ds's "train" images, score its "test" images with the unseen-archive protocol.

    x_all: preprocessed inputs of every image of ds; raw: raw_pixel_vectors of the test images
    (computed when None). eval_epochs: also score the test images after these epochs (a look at
    the curve for the record; the recipe's epoch count is what is chosen). hybrid_bits: also score
    the codes with that many pixel bits appended (rows "model+N pixel bits": what the same
    network trained with pixel_bits=N gives, the pixel bits having no weights). Returns the report
    (per-image APs kept under "aps") plus "seconds", "history", "train_images".
    """
    import torch

    from medhash_sdk.codes import pack_codes

    from .evaluate import torch_outputs
    from .trainer import train

    te = ds.indices("test")
    xt = torch.from_numpy(x_all[te])
    if raw is None:
        raw = raw_pixel_vectors([ds.images[i] for i in te])

    def on_epoch(epoch: int, model: Any) -> dict[str, Any] | None:
        if epoch not in eval_epochs:
            return None
        u, p = torch_outputs(model, xt)
        r = unseen_archive_report(ds.labels[te], ds.patient_id[te], ds.label_names, codes=pack_codes(u),
                                  probabilities=p, k=k, n_boot=200)
        if log is not None:
            log(f"epoch {epoch}: held-out mAP@{k} {r['rows']['model']['map']:.4f}, mean AUROC {r['mean_auroc']:.3f}")
        return {"heldout_map": r["rows"]["model"]["map"], "heldout_mean_auroc": r["mean_auroc"]}

    res = train(cfg, ds, log=log or (lambda s: None), x_all=x_all, on_epoch=on_epoch if eval_epochs else None)
    u, p = torch_outputs(res.model, xt)
    rep = unseen_archive_report(ds.labels[te], ds.patient_id[te], ds.label_names, codes=pack_codes(u), vectors=u,
                                probabilities=p, raw=raw, k=k)
    if hybrid_bits and not res.model.config.pixel_bits:
        # the same codes with pixel bits appended, as a network trained with pixel_bits=n computes them
        from medhash_sdk.evaluation import archive_aps_codes, compare, summarize

        from .attention import pixel_code_logits, pixel_projection

        pats = ds.patient_id[te]
        for n in hybrid_bits:
            px = pixel_code_logits(xt, pixel_projection(n, res.model.config.pixel_seed)).numpy()
            aps = archive_aps_codes(pack_codes(np.concatenate([u, px], 1)), ds.labels[te], pats, k)
            name = f"model+{n} pixel bits"
            rep["aps"][name] = [float(a) for a in aps]
            rep["rows"][name] = summarize(aps, pats)
            rep["vs_raw_pixels"][name] = compare(aps, np.asarray(rep["aps"]["raw pixels"]), pats)
    rep.update(seconds=res.seconds, history=res.history, train_images=int((ds.split == "train").sum()),
               image_id=[str(x) for x in ds.image_id[te]], patient_id=[str(x) for x in ds.patient_id[te]])
    rep["_model"] = res
    return rep


def pooled_report(parts: list[dict[str, Any]], n_boot: int = 2000) -> dict[str, Any]:
    """Pool the per-image APs of held-out reports whose images are disjoint (the folds of a
    cross-validation); the AUROC is the mean of the folds' mean AUROCs."""
    from medhash_sdk.evaluation import compare, summarize

    patients = np.concatenate([np.asarray(r["patient_id"]) for r in parts])
    rows = {}
    aps = {}
    for name in parts[0]["aps"]:
        aps[name] = np.concatenate([np.asarray(r["aps"][name]) for r in parts])
        rows[name] = summarize(aps[name], patients, n_boot)
    out: dict[str, Any] = {"images": int(len(patients)), "patients": int(len(np.unique(patients))), "rows": rows}
    if "raw pixels" in aps:
        out["vs_raw_pixels"] = {n: compare(a, aps["raw pixels"], patients, n_boot) for n, a in aps.items()
                                if n != "raw pixels"}
    out["mean_auroc_folds"] = [r.get("mean_auroc") for r in parts]
    out["mean_auroc"] = float(np.mean([r["mean_auroc"] for r in parts if r.get("mean_auroc") is not None]))
    return out
