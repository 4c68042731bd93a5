"""Datasets for training and evaluation: one loader for `medhash train`, `medhash eval` and the
benchmark, so all three see the same images, labels and split.

Formats (load_dataset(paths) combines several, deduplicated by image id, first one wins):
(a) MedMNIST-style .npz: train_images / val_images / test_images + *_labels; its splits are
    used as given.
(b) .npz with images, labels, patient_id (+ optional label_names, image_index): as in
    ../shared/data (nih1000_64.npz, nih_extra_128.npz). Any `split` array in it is ignored
    (NIH's puts patients on both sides); the data are re-split by patient.
(c) a CSV file (or a folder holding exactly one CSV), read by the one table rule of
    medhash_sdk.tables (path column, relative paths, file names found under the CSV's
    folder): NIH's Data_Entry format ("Image Index", "Finding Labels" separated by |,
    "Patient ID"), or a generic one: a path column, 0/1 label columns, an optional column
    whose name contains "patient". Rows whose image is missing are dropped and counted.
Labels: an (n,) or (n, 1) integer column is one class per image (one-hot over its classes);
(n, C) 0/1 columns are multi-label, with a "No Finding" column appended when all-zero rows
occur (so normal images are similar to each other). Colour images stay as read; the
preprocessing's `channels` decides (1: converted to gray, the default; 3: kept as RGB).
Split: given splits are kept; otherwise patients (each image its own patient when there is
no patient column) are shuffled with `split_seed` and assigned to train/val/test until the
images reach the fractions (default 70/10/20), so no patient is on two sides. The rule, the
seed and a hash of each side's image ids are recorded (model metadata), so `eval --split
test` reproduces the split and can tell when it is given other data.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .exceptions import MedhashError
from .pipeline import decode_ahead, raise_first_error
from .preprocessing import Preprocessing, preprocess, preprocess_batch
from .tables import TableError, read_table

SPLITS = ("train", "val", "test")
NO_FINDING = "No Finding"
NIH_LABELS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
              "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")


class DatasetError(MedhashError):
    """A dataset file or folder cannot be used (missing arrays, no images, bad labels)."""


@dataclass
class ImageSet:
    """Images (arrays or file paths), multi-hot labels, ids, patients and the split."""

    images: list[Any]
    labels: np.ndarray               # uint8 (n, C)
    label_names: list[str]
    image_id: np.ndarray             # str (n,)
    patient_id: np.ndarray           # str (n,)
    split: np.ndarray                # str (n,) in SPLITS
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def indices(self, *splits: str) -> np.ndarray:
        for s in splits:
            if s not in SPLITS:
                raise ValueError(f"split must be one of {SPLITS}, got {s!r}")
        return np.flatnonzero(np.isin(self.split, list(splits)))

    def subset(self, idx: np.ndarray) -> "ImageSet":
        idx = np.asarray(idx)
        return ImageSet([self.images[i] for i in idx], self.labels[idx], list(self.label_names),
                        self.image_id[idx], self.patient_id[idx], self.split[idx], dict(self.info))


# ----------------------------------------------------------------------------------- labels
def normalize_labels(labels: np.ndarray, names: Sequence[str] | None, source: str) -> tuple[np.ndarray, list[str]]:
    """(n,)/(n,1) class ids -> one-hot; (n, C) 0/1 -> multi-hot (+ "No Finding" for all-zero rows)."""
    y = np.asarray(labels)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] == 0:
        raise DatasetError(f"{source}: labels must be (n,), (n, 1) class ids or (n, C) 0/1 columns, got shape {y.shape}")
    if y.shape[1] == 1:
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise DatasetError(f"{source}: a single label column must hold non-negative integer class ids")
        ncls = max(int(y.max()) + 1, 2)
        out = np.zeros((y.shape[0], ncls), dtype=np.uint8)
        out[np.arange(y.shape[0]), y[:, 0]] = 1
        nm = list(names) if names is not None and len(names) == ncls else [f"class_{i}" for i in range(ncls)]
        return out, nm
    if not np.isin(y, (0, 1)).all():
        raise DatasetError(f"{source}: multi-label columns must be 0/1")
    nm = list(names) if names is not None and len(names) == y.shape[1] else [f"label_{i}" for i in range(y.shape[1])]
    y = y.astype(np.uint8)
    if (y.sum(1) == 0).any() and NO_FINDING not in nm:
        y = np.concatenate([y, (y.sum(1) == 0).astype(np.uint8)[:, None]], 1)
        nm.append(NO_FINDING)
    return y, nm


# ----------------------------------------------------------------------------------- readers
def _load_npz(path: str) -> dict[str, Any]:
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read as .npz ({e})") from e
    base = Path(path).stem
    keys = set(z.files)
    if {"train_images", "val_images", "test_images"} <= keys:
        imgs, labs, ids, spl = [], [], [], []
        for s, key in (("train", "train"), ("val", "val"), ("test", "test")):
            a = z[f"{key}_images"]
            if f"{key}_labels" not in keys:
                raise DatasetError(f"{path}: has {key}_images but no {key}_labels")
            imgs += list(a)
            labs.append(z[f"{key}_labels"])
            ids += [f"{base}:{s}:{i}" for i in range(len(a))]
            spl += [s] * len(a)
        y = np.concatenate(labs, 0)
        names = [str(x) for x in z["label_names"]] if "label_names" in keys else None
        return dict(images=imgs, labels=y, names=names, ids=np.array(ids), patients=np.array(ids),
                    split=np.array(spl), format="medmnist")
    if "images" not in keys or "labels" not in keys:
        raise DatasetError(f"{path}: expected MedMNIST keys (train_images, ...) or images + labels "
                           f"(+ patient_id); found {sorted(keys)}")
    a = z["images"]
    n = len(a)
    ids = np.array([str(x) for x in z["image_index"]]) if "image_index" in keys else np.array([f"{base}:{i}" for i in range(n)])
    patients = np.array([str(x) for x in z["patient_id"]]) if "patient_id" in keys else ids.copy()
    names = [str(x) for x in z["label_names"]] if "label_names" in keys else None
    return dict(images=list(a), labels=z["labels"], names=names, ids=ids, patients=patients, split=None,
                format="npz")


def _load_csv(path: str) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        csvs = sorted(p.glob("*.csv"))
        if len(csvs) != 1:
            raise DatasetError(f"{path}: a dataset folder must hold exactly one .csv label table, found {len(csvs)}")
        p = csvs[0]
    try:
        table = read_table(p)
    except TableError as e:
        raise DatasetError(str(e)) from e
    rows, cols, name_col = table.rows, table.columns, table.path_column
    if not rows:
        raise DatasetError(f"{p}: the label table is empty")
    if "Finding Labels" in cols:           # NIH Data_Entry
        patient_col = "Patient ID" if "Patient ID" in cols else None
        findings = [set(r["Finding Labels"].split("|")) - {""} for r in rows]
        vocab = set().union(*findings)
        names = [n for n in NIH_LABELS if n in vocab] + sorted(vocab - set(NIH_LABELS) - {NO_FINDING})
        names += [NO_FINDING] if NO_FINDING in vocab else []
        y = np.array([[int(n in fs) for n in names] for fs in findings], dtype=np.uint8)
        fmt = "nih-data-entry"
    else:
        patient_col = next((c for c in cols if "patient" in c.lower()), None)
        label_cols = [c for c in cols if c not in (name_col, patient_col) and all(r[c] in ("0", "1") for r in rows)]
        if not label_cols:
            raise DatasetError(f"{p}: no 0/1 label columns found")
        names = label_cols
        y = np.array([[int(r[c]) for c in label_cols] for r in rows], dtype=np.uint8)
        fmt = "csv"
    found = [(i, full) for i, full in enumerate(table.paths()) if os.path.isfile(full)]
    if not found:
        raise DatasetError(f"{p}: none of the {len(rows)} images listed in column {name_col!r} was found under {p.parent}")
    keep = [i for i, _ in found]
    ids = np.array([rows[i][name_col] for i in keep])
    patients = np.array([rows[i][patient_col] for i in keep]) if patient_col else ids.copy()
    return dict(images=[full for _, full in found], labels=y[keep], names=names, ids=ids, patients=patients,
                split=None, format=fmt, missing=len(rows) - len(keep))


def _load_one(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        raise DatasetError(f"{path}: no such file or folder")
    if str(path).lower().endswith(".npz"):
        return _load_npz(path)
    if os.path.isdir(path) or str(path).lower().endswith(".csv"):
        return _load_csv(path)
    raise DatasetError(f"{path}: unsupported dataset (use .npz, a .csv label table, or a folder holding one)")


# ----------------------------------------------------------------------------------- split
def patient_split(patients: np.ndarray, seed: int, fractions: Sequence[float]) -> np.ndarray:
    """Assign whole patients to train/val/test in a seeded order until images reach the fractions."""
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or (f < 0).any() or abs(f.sum() - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1 (train, val, test), got {fractions}")
    uniq, inv, counts = np.unique(patients, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    cum = np.cumsum(counts[order]) / len(patients)
    bounds = np.cumsum(f)
    side = np.searchsorted(bounds[:2], cum - counts[order] / (2 * len(patients)), side="right")
    assign = np.empty(len(uniq), dtype=np.int64)
    assign[order] = side
    return np.array(SPLITS)[assign[inv]]


def _ids_hash(ids: np.ndarray) -> str:
    return hashlib.sha256("\n".join(sorted(map(str, ids))).encode()).hexdigest()[:16]


def load_dataset(paths: str | Sequence[str], split_seed: int = 0,
                 fractions: Sequence[float] = (0.7, 0.1, 0.2)) -> ImageSet:
    """Load, combine (dedup by image id), label and split one or more datasets (module docstring)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [os.fspath(paths)]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("give at least one dataset path")
    parts = [_load_one(p) for p in paths]
    # label columns: union of names in first-seen order ("No Finding" last)
    normed = []
    for p, part in zip(paths, parts):
        y, nm = normalize_labels(part["labels"], part["names"], p)
        normed.append((y, nm))
    all_names: list[str] = []
    for _, nm in normed:
        all_names += [n for n in nm if n not in all_names and n != NO_FINDING]
    if any(NO_FINDING in nm for _, nm in normed):
        all_names.append(NO_FINDING)
    images: list[Any] = []
    labels, ids, patients, splits = [], [], [], []
    seen: set[str] = set()
    dropped = 0
    for part, (y, nm) in zip(parts, normed):
        col = {n: i for i, n in enumerate(nm)}
        for i in range(len(part["images"])):
            iid = str(part["ids"][i])
            if iid in seen:
                dropped += 1
                continue
            seen.add(iid)
            row = np.zeros(len(all_names), dtype=np.uint8)
            for j, n in enumerate(all_names):
                if n in col:
                    row[j] = y[i, col[n]]
            if NO_FINDING in all_names and NO_FINDING not in col:
                row[all_names.index(NO_FINDING)] = int(row.sum() == 0)
            images.append(part["images"][i])
            labels.append(row)
            ids.append(iid)
            patients.append(str(part["patients"][i]))
            splits.append(None if part["split"] is None else str(part["split"][i]))
    ids_a, patients_a = np.array(ids), np.array(patients)
    if all(s is not None for s in splits):
        split = np.array(splits)
        rule: dict[str, Any] = {"rule": "given"}
    else:
        split = patient_split(patients_a, split_seed, fractions)
        rule = {"rule": "patient", "seed": int(split_seed), "fractions": [float(x) for x in fractions]}
    rule["counts"] = {s: int((split == s).sum()) for s in SPLITS}
    rule["ids_sha256"] = {s: _ids_hash(ids_a[split == s]) for s in SPLITS}
    info = {"sources": [os.path.abspath(p) for p in paths], "formats": [p["format"] for p in parts],
            "duplicates_dropped": dropped, "split": rule,
            "fingerprint": _data_fingerprint(images, np.array(labels), ids_a, patients_a)}
    return ImageSet(images, np.array(labels, dtype=np.uint8), all_names, ids_a, patients_a, split, info)


def _data_fingerprint(images: list[Any], labels: np.ndarray, ids: np.ndarray, patients: np.ndarray) -> str:
    """SHA-256 over ids, patients, labels and pixels (arrays) or file sizes (paths)."""
    h = hashlib.sha256()
    h.update(json.dumps([list(map(str, ids)), list(map(str, patients))]).encode())
    h.update(np.ascontiguousarray(labels).tobytes())
    for im in images:
        if isinstance(im, np.ndarray):
            h.update(str(im.shape).encode())
            h.update(np.ascontiguousarray(im).tobytes())
        else:
            h.update(str(os.path.getsize(im)).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------- tensors
def read_pixels(item: Any) -> np.ndarray:
    """An array as is, or a file read by the runtime's reader (the Encoder's)."""
    if isinstance(item, np.ndarray):
        return item
    from .readers import read_image

    return read_image(item).pixels


def to_network_input(ds: ImageSet, spec: Preprocessing, idx: np.ndarray | None = None) -> np.ndarray:
    """float32 (n, C, S, S) through medhash_sdk.preprocessing (the Encoder's code path); files
    are decoded ahead in a thread pool (medhash_sdk.pipeline)."""
    idx = np.arange(len(ds)) if idx is None else np.asarray(idx)
    items = [ds.images[i] for i in idx]
    if all(isinstance(it, np.ndarray) for it in items):
        return preprocess_batch(items, spec)
    out = np.empty((len(items), spec.channels, spec.input_size, spec.input_size), dtype=np.float32)
    decoded = raise_first_error(decode_ahead(items, lambda it: preprocess(read_pixels(it), spec)))
    for j, d in enumerate(decoded):
        out[j] = d.value
    return out


def check_split(ds: ImageSet, recorded: dict[str, Any] | None) -> list[str]:
    """Warnings when `ds`'s split differs from the one recorded at training time."""
    if not recorded or "ids_sha256" not in recorded:
        return ["the model records no split; its test patients are unknown"]
    now = ds.info["split"]["ids_sha256"]
    return [f"{s} split differs from the model's training-time split (other data or another split rule)"
            for s in SPLITS if now.get(s) != recorded["ids_sha256"].get(s)]
