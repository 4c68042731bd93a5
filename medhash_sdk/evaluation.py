"""Retrieval figures of codes and of exported model files (numpy and the Encoder, no torch).

Two protocols (docs/model.md, "Protocol"):

* unseen archive (the headline): query AND database are held-out images (patients the model
  never saw); each query is ranked against every image of the OTHER held-out patients.
  Reported with patient-bootstrap 95% intervals, beside raw pixels (32 x 32, standardised,
  cosine) and a random ranking on the same images, and the classifier head's per-finding AUROC.
* classic: queries are one split, the database the other two (test queries against the
  train + val images, whose codes were fitted to their own labels; during training, val
  queries against train). Kept beside the headline, labelled as such.

Codes come from the torch model (training-time validation, the benchmarks:
medhash_train.evaluate) or from an exported model file through the Encoder (`medhash eval`:
what is evaluated is exactly what ships).
"""
from __future__ import annotations

import os

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


# ----------------------------------------------------------------------------------- unseen archive
RAW_PIXEL_SIZE = 32
BOOTSTRAP_REPLICATES = 2000
MIN_POSITIVES = 25
RANDOM_DRAWS = 10


def raw_pixel_vectors(images: Sequence[Any], size: int = RAW_PIXEL_SIZE) -> np.ndarray:
    """The raw-pixel reference: each image through the Encoder's path (intensity to [0, 1], gray,
    padded to a square, area-resized) at size x size, then standardised per image (zero mean,
    unit norm), so that cosine ranks by pixel correlation. float32 (n, size * size)."""
    from .datasets import read_pixels
    from .preprocessing import Preprocessing, preprocess

    spec = Preprocessing(input_size=size)
    out = np.empty((len(images), size * size), dtype=np.float32)
    for i, im in enumerate(images):
        v = preprocess(read_pixels(im), spec).ravel().astype(np.float64)
        v -= v.mean()
        out[i] = v / max(float(np.linalg.norm(v)), 1e-12)
    return out


def archive_aps_codes(codes: np.ndarray, labels: np.ndarray, patients: np.ndarray, k: int | None = 100,
                      seeds: Sequence[int | None] = (0, 1, 2)) -> np.ndarray:
    """Per-image AP@k of packed codes ranked by Hamming distance, unseen-archive protocol."""
    c = np.asarray(codes)
    return metrics.leave_patient_out_aps(lambda r: metrics.hamming_distance_matrix(c[r], c), labels, patients, k, seeds)


def archive_aps_vectors(vectors: np.ndarray, labels: np.ndarray, patients: np.ndarray, k: int | None = 100,
                        seeds: Sequence[int | None] = (0, 1, 2)) -> np.ndarray:
    """Per-image AP@k of real-valued vectors ranked by cosine, unseen-archive protocol."""
    v = np.asarray(vectors)
    return metrics.leave_patient_out_aps(lambda r: metrics.cosine_distance_matrix(v[r], v), labels, patients, k, seeds)


def archive_aps_random(labels: np.ndarray, patients: np.ndarray, k: int | None = 100,
                       draws: int = RANDOM_DRAWS) -> np.ndarray:
    """Per-image AP@k of a random ranking (mean over `draws` seeded random rankings)."""
    n = len(labels)
    total = np.zeros(n, dtype=np.float64)
    for r in range(draws):
        def dist(rows: np.ndarray, r: int = r) -> np.ndarray:
            return np.random.default_rng([r, int(rows[0])]).random((len(rows), n))
        total += metrics.leave_patient_out_aps(dist, labels, patients, k, seeds=None)
    return total / draws


def summarize(aps: np.ndarray, patients: np.ndarray, n_boot: int = BOOTSTRAP_REPLICATES,
              seed: int = 0) -> dict[str, Any]:
    """{"map": mean AP, "ci95": [lo, hi]} with a patient-bootstrap percentile interval."""
    lo, hi = metrics.patient_bootstrap(aps, patients, n_boot, seed)
    return {"map": float(np.mean(aps)), "ci95": [lo, hi]}


def compare(aps_a: np.ndarray, aps_b: np.ndarray, patients: np.ndarray, n_boot: int = BOOTSTRAP_REPLICATES,
            seed: int = 0) -> dict[str, Any]:
    """Paired difference a - b of two rankings of the same images, with its patient-bootstrap interval."""
    d = np.asarray(aps_a, dtype=np.float64) - np.asarray(aps_b, dtype=np.float64)
    lo, hi = metrics.patient_bootstrap(d, patients, n_boot, seed)
    return {"diff": float(d.mean()), "ci95": [lo, hi]}


def unseen_archive_report(labels: np.ndarray, patients: np.ndarray, label_names: Sequence[str],
                          codes: np.ndarray | None = None, vectors: np.ndarray | None = None,
                          probabilities: np.ndarray | None = None, raw: np.ndarray | None = None,
                          k: int = 100, seeds: Sequence[int | None] = (0, 1, 2),
                          n_boot: int = BOOTSTRAP_REPLICATES, boot_seed: int = 0,
                          min_positives: int = MIN_POSITIVES) -> dict[str, Any]:
    """The unseen-archive figures of one held-out set (every row of the arrays is held out).

    codes: packed codes (Hamming) and/or vectors: float embeddings (cosine) of the model; raw:
    raw_pixel_vectors of the same images; probabilities: the classifier head's. Returns
    {"images", "patients", "k", "tie_seeds", "rows": {name: {"map", "ci95"}}, "vs_raw_pixels":
    {name: {"diff", "ci95"}}, "auroc": {finding: {"auroc", "positives"}}, "mean_auroc",
    "auroc_min_positives", "aps": {name: per-image APs (list)}}. Rows: "model" (codes),
    "model float" (vectors), "raw pixels", "random".
    """
    labels = np.asarray(labels)
    patients = np.asarray(patients).astype(str)
    aps: dict[str, np.ndarray] = {}
    if codes is not None:
        aps["model"] = archive_aps_codes(codes, labels, patients, k, seeds)
    if vectors is not None:
        aps["model float"] = archive_aps_vectors(vectors, labels, patients, k, seeds)
    if raw is not None:
        aps["raw pixels"] = archive_aps_vectors(raw, labels, patients, k, seeds)
    aps["random"] = archive_aps_random(labels, patients, k)
    rep: dict[str, Any] = {
        "protocol": "unseen archive: query and database are held-out images; each query ranked against "
                    "every image of the other held-out patients; relevant = shares a label",
        "images": int(len(labels)), "patients": int(len(np.unique(patients))), "k": int(k),
        "tie_seeds": list(seeds), "bootstrap": {"replicates": int(n_boot), "seed": int(boot_seed), "unit": "patient"},
        "rows": {name: summarize(a, patients, n_boot, boot_seed) for name, a in aps.items()},
    }
    if "raw pixels" in aps:
        rep["vs_raw_pixels"] = {name: compare(a, aps["raw pixels"], patients, n_boot, boot_seed)
                                for name, a in aps.items() if name != "raw pixels"}
    if probabilities is not None:
        au = metrics.per_label_auroc(probabilities, labels, label_names, min_positives)
        rep["auroc"] = au
        rep["mean_auroc"] = float(np.mean([v["auroc"] for v in au.values()])) if au else float("nan")
        rep["auroc_min_positives"] = int(min_positives)
    rep["aps"] = {name: [float(x) for x in a] for name, a in aps.items()}
    return rep


def analyze_with_model_file(model: Any, images: list[Any], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(packed codes, classifier probabilities) of `images` through the runtime Encoder."""
    from .encoder import Encoder

    enc = model if isinstance(model, Encoder) else Encoder(model)
    res = enc.analyze(list(images), batch_size=batch_size)
    return np.asarray(res.codes), np.asarray(res.probabilities)


# ----------------------------------------------------------------------------------- medhash eval
def align_labels(ds: ImageSet, model_labels: Sequence[str]) -> tuple[ImageSet, list[str]]:
    """ds with its label columns in the model's order. A model label the data never names gets
    an all-zero column (NIH's Data_Entry lists only findings that occur), with a warning; a data
    label the model does not know is an error."""
    import dataclasses

    names = list(ds.label_names)
    unknown = [n for n in names if n not in model_labels]
    if unknown:
        raise ValueError(f"the data's labels {unknown} are not among the model's {list(model_labels)}")
    if names == list(model_labels):
        return ds, []
    y = np.zeros((len(ds), len(model_labels)), dtype=np.uint8)
    for j, n in enumerate(model_labels):
        if n in names:
            y[:, j] = ds.labels[:, names.index(n)]
    missing = [n for n in model_labels if n not in names]
    warn = [f"the data names no {', '.join(missing)}: counted as absent everywhere"] if missing else []
    return dataclasses.replace(ds, labels=y, label_names=list(model_labels)), warn


def evaluate_file(model_path: str | os.PathLike | None, data: Sequence[str], split: str = "test", k: int = 100,
                  seeds: Sequence[int | None] = (0, 1, 2), batch_size: int = 64,
                  n_boot: int = BOOTSTRAP_REPLICATES, min_positives: int = MIN_POSITIVES,
                  keep_aps: bool = False) -> dict[str, Any]:
    """What `medhash eval` reports (docs/model.md, "Protocol"). model_path None: the bundled model.

    split "test" (or "val"/"train"): the split is rebuilt with the rule recorded in the model and
    that split's images are the unseen archive; the classic figure (those images as queries
    against the other splits) is added beside it. split "all": every image of the data is the
    unseen archive (a collection the model never saw); no classic figure. keep_aps: keep the
    per-image APs (and image / patient ids) for paired comparisons.
    """
    from .encoder import Encoder

    enc = Encoder(model_path)   # ModelFileError for a missing, damaged or card-less model
    card = enc.card
    rule = card.training.get("split", {})
    seed = int(rule.get("seed", 0))
    fractions = rule.get("fractions", (0.7, 0.1, 0.2))
    ds = load_dataset(list(data), split_seed=seed, fractions=fractions)
    ds, warnings = align_labels(ds, card.labels)
    same_data = ds.info["fingerprint"] == card.training.get("data_fingerprint")
    if split == "all":
        held = np.arange(len(ds))
        if same_data:
            warnings.append("this is the model's own training data: --split all includes images it was trained on")
    else:
        warnings += check_split(ds, rule)
        held = ds.indices(split)
        if held.size == 0:
            raise ValueError(f"the {split!r} split of this data is empty")
    codes, probs = analyze_with_model_file(enc, [ds.images[i] for i in held], batch_size)
    raw = raw_pixel_vectors([ds.images[i] for i in held])
    archive = unseen_archive_report(ds.labels[held], ds.patient_id[held], ds.label_names, codes=codes,
                                    probabilities=probs, raw=raw, k=k, seeds=seeds, n_boot=n_boot,
                                    min_positives=min_positives)
    if keep_aps:
        archive["image_id"] = [str(x) for x in ds.image_id[held]]
        archive["patient_id"] = [str(x) for x in ds.patient_id[held]]
    else:
        archive.pop("aps")
    out: dict[str, Any] = {"model": os.fspath(enc.model_path), "fingerprint": card.fingerprint, "method": card.method,
                           "nbits": card.nbits, "split": split, "k": k, "tie_seeds": list(seeds),
                           "data_fingerprint": ds.info["fingerprint"], "same_data_as_training": same_data,
                           "warnings": warnings, "unseen_archive": archive}
    if split != "all":
        rest = np.flatnonzero(ds.split != split)
        if rest.size:
            db_codes = encode_with_model_file(enc, [ds.images[i] for i in rest], batch_size)
            classic = code_figures(codes, db_codes, ds.labels[held], ds.labels[rest], k, seeds)
            classic["protocol"] = (f"classic: {split} queries vs the other splits' images (the training "
                                   "database, whose codes were fitted to their own labels)")
            out["classic"] = classic
    return out
