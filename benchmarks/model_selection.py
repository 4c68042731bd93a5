"""Recipe choice by patient-grouped k-fold cross-validation on the TRAINING patients only.

Data: NIH ChestX-ray14 from ../shared/data (nih1000_64 + nih_extra_128, deduplicated, 64 px),
split by patient with split seed 0 exactly as the shipped model's data (70/10/20); the test
split's 417 images are never read here. The 1,669 train + val images (775 patients) are cut
into k patient-grouped folds; each recipe trains on k-1 folds for its fixed number of epochs
(last epoch kept, no validation-based choice) and its held-out fold is scored with the
unseen-archive protocol (query and database = the held-out fold's images, each query against
the other held-out patients' images; medhash_sdk.evaluation). Every image is held out once,
so the folds' per-image APs pool into one cross-validated mAP@100 with a patient-bootstrap
95% interval, and two recipes compare image by image (paired interval of the difference).

    PYTHONPATH=.:export python benchmarks/model_selection.py --recipes plain con-codes con-features

One JSON per (recipe, fold, seed) under benchmarks/results/model/cv/ (cached: a finished run
is not retrained), and the table benchmarks/results/model/cv/table.md with the command.

--scheme cross-source asks the cross-collection question on the same training images: the
pool's nih1000_64 images train and its nih_extra_128 images (minus any patient the training
side holds) are the unseen archive, then the reverse; the two directions' per-image APs pool
into one figure (benchmarks/results/model/cross-source/). It reads no test image either, so it
can choose among recipes for how they carry over to another collection.

    PYTHONPATH=.:export python benchmarks/model_selection.py --scheme cross-source --recipes plain con-features

--scheme nih1000-in and --scheme nih1000-from-extra ask how much of the gap on the harder
collection is the collection shift: the pool's nih1000_64 images (patients the pool's
nih_extra_128 images do not hold) are cut into k patient folds, and each fold is the unseen
archive of a recipe trained on the other folds (in-collection) or on the pool's nih_extra_128
images (cross-collection). Both schemes score the same archives, so their margins over raw
pixels compare directly (benchmarks/results/model/nih1000-in/, .../nih1000-from-extra/).

    PYTHONPATH=.:export python benchmarks/model_selection.py --scheme nih1000-in --recipes plain con-features
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "export"))
from medhash_sdk.atomic import atomic_open  # noqa: E402  (after the sys.path lines)
DATA_DIR = os.environ.get("MEDHASH_DATA", os.path.join(ROOT, "..", "shared", "data"))
NIH = ["nih1000_64.npz", "nih_extra_128.npz"]
NIH1000_SCHEMES = ("nih1000-in", "nih1000-from-extra")
SCHEMES = ("cv", "cross-source") + NIH1000_SCHEMES
OUT_OF = {s: os.path.join(ROOT, "benchmarks", "results", "model", s) for s in SCHEMES}  # a folder a scheme
DIRECTIONS = ("nih1000-to-extra", "extra-to-nih1000")
PART_FILE = re.compile(r"(.+?)_(?:k\d+fs\d+_f\d+|nih1000-to-extra|extra-to-nih1000)_s\d+\.json$")

from medhash_train.recipes import RECIPES, resolve  # noqa: E402  (after the sys.path lines)
PRETRAIN_CACHE = os.path.join(ROOT, "benchmarks", ".cache", "pretrain")

EVAL_EPOCHS = (10, 20, 30, 40, 60)
HYBRID_BITS = (32, 64)       # each run is also scored with this many pixel bits appended


def load_pool(fold_seed: int, k: int):
    from medhash_sdk.datasets import load_dataset

    ds = load_dataset([os.path.join(DATA_DIR, f) for f in NIH], split_seed=0)
    pool = ds.indices("train", "val")
    from medhash_train.selection import patient_folds

    return ds, pool, patient_folds(ds.patient_id[pool], k, fold_seed)


def _report(recipe: str, tag: str, fs: Any, seed: int, cache: dict[str, Any], key: tuple) -> dict[str, Any]:
    """Train `recipe` on fs's train split, score its test split (the unseen-archive protocol)."""
    import torch

    from medhash_sdk.datasets import to_network_input
    from medhash_sdk.evaluation import raw_pixel_vectors
    from medhash_sdk.preprocessing import Preprocessing
    from medhash_train.selection import heldout_report
    from medhash_train.trainer import TrainConfig

    settings = RECIPES[recipe]
    xkey = ("x", settings["input_size"]) + key
    if xkey not in cache:
        cache[xkey] = to_network_input(fs, Preprocessing(settings["input_size"]))
    rkey = ("raw",) + key
    if rkey not in cache:
        cache[rkey] = raw_pixel_vectors([fs.images[i] for i in fs.indices("test")])
    cfg = TrainConfig(**resolve(settings, DATA_DIR, PRETRAIN_CACHE), seed=seed, progress=False)
    rep = heldout_report(cfg, fs, cache[xkey], raw=cache[rkey], log=lambda m: print(f"  {recipe} {tag}: {m}", file=sys.stderr, flush=True),
                         eval_epochs=tuple(e for e in EVAL_EPOCHS if e < cfg.epochs), hybrid_bits=HYBRID_BITS)
    rep.pop("_model")
    rep["job"] = dict(recipe=recipe, settings=settings, seed=seed, torch=torch.__version__,
                      threads=torch.get_num_threads())
    return rep


def run(recipe: str, fold: int, seed: int, k: int, fold_seed: int, cache: dict[str, Any]) -> dict[str, Any]:
    from medhash_train.selection import fold_set

    key = ("pool", fold_seed, k)
    if key not in cache:
        cache[key] = load_pool(fold_seed, k)
    ds, pool, folds = cache[key]
    rep = _report(recipe, f"f{fold}", fold_set(ds, pool, folds, fold), seed, cache, (fold_seed, k, fold))
    rep["job"].update(fold=fold, k=k, fold_seed=fold_seed)
    return rep


def pool_by_collection(cache: dict[str, Any]):
    """(dataset, the pool's nih1000_64 rows, the pool's nih_extra_128 rows)."""
    from medhash_sdk.datasets import load_dataset

    if "xs" not in cache:
        ds, pool, _ = load_pool(0, 3)
        first = set(map(str, load_dataset(os.path.join(DATA_DIR, NIH[0]), split_seed=0).image_id))
        in_first = np.array([str(i) in first for i in ds.image_id[pool]])
        cache["xs"] = (ds, pool[in_first], pool[~in_first])
    return cache["xs"]


def run_cross_source(recipe: str, direction: str, seed: int, cache: dict[str, Any]) -> dict[str, Any]:
    """Train on the pool's images of one collection, score the other's unseen patients."""
    from medhash_train.selection import cross_collection

    ds, a, b = pool_by_collection(cache)
    train_idx, test_idx = (a, b) if direction == DIRECTIONS[0] else (b, a)
    fs = cross_collection(ds.subset(train_idx), ds.subset(test_idx))
    rep = _report(recipe, direction, fs, seed, cache, ("xs", direction))
    rep["job"].update(direction=direction, info=fs.info)
    return rep


def run_nih1000(recipe: str, scheme: str, fold: int, seed: int, k: int, fold_seed: int,
                cache: dict[str, Any]) -> dict[str, Any]:
    """Score fold `fold` of the pool's nih1000_64 images (patients not among its nih_extra_128
    images, so both schemes score the same archive) with `recipe` trained on the other folds
    (nih1000-in) or on the pool's nih_extra_128 images (nih1000-from-extra)."""
    from medhash_train.selection import cross_collection, fold_set, patient_folds

    key = ("nih1000-folds", fold_seed, k)
    if key not in cache:
        ds, a, b = pool_by_collection(cache)
        a = a[~np.isin(ds.patient_id[a], ds.patient_id[b])]
        cache[key] = (ds, a, b, patient_folds(ds.patient_id[a], k, fold_seed))
    ds, a, b, folds = cache[key]
    fs = (fold_set(ds, a, folds, fold) if scheme == "nih1000-in"
          else cross_collection(ds.subset(b), ds.subset(a[folds == fold])))
    rep = _report(recipe, f"{scheme} f{fold}", fs, seed, cache, (scheme, fold_seed, k, fold))
    rep["job"].update(fold=fold, k=k, fold_seed=fold_seed, scheme=scheme)
    return rep


def part_paths(scheme: str, r: str, s: int, k: int, fold_seed: int) -> list[str]:
    """The JSON files whose per-image APs pool into recipe r's figure (seed s)."""
    if scheme == "cross-source":
        return [os.path.join(OUT_OF[scheme], f"{r}_{d}_s{s}.json") for d in DIRECTIONS]
    return [os.path.join(OUT_OF[scheme], f"{r}_k{k}fs{fold_seed}_f{f}_s{s}.json") for f in range(k)]


def table(recipes: list[str], k: int, fold_seed: int, seeds: list[int], ref: str = "plain",
          scheme: str = "cv") -> str:
    from medhash_sdk.evaluation import compare
    from medhash_train.selection import pooled_report

    def parts_of(r: str, s: int) -> list[dict[str, Any]] | None:
        out = []
        for path in part_paths(scheme, r, s, k, fold_seed):
            if not os.path.exists(path):
                return None
            with open(path) as fh:
                out.append(json.load(fh))
        return out

    figure = {"cv": "CV mAP@100", "cross-source": "cross-source mAP@100"}.get(scheme, "nih1000 folds mAP@100")
    lines = [f"| recipe | seed | {figure} [95% CI] | float u, cosine | vs raw pixels [95% CI] | vs {ref} [95% CI] "
             "| mean AUROC | min per-fold s |", "|---|---|---|---|---|---|---|---|"]
    raw_line = None
    for r in recipes:
        for s in seeds:
            parts = parts_of(r, s)
            if parts is None:
                continue
            pr = pooled_report(parts)
            ref_parts = parts_of(ref, s)
            pat = np.concatenate([p["patient_id"] for p in parts])
            variants = ["model"] + [v for v in pr["rows"] if v.startswith("model+")]
            for v in variants:
                vs_ref = "-"
                if ref_parts is not None and (r != ref or v != "model"):
                    a = np.concatenate([p["aps"][v] for p in parts])
                    b = np.concatenate([p["aps"]["model"] for p in ref_parts])
                    assert [x for p in parts for x in p["image_id"]] == [x for p in ref_parts for x in p["image_id"]]
                    c = compare(a, b, pat)
                    vs_ref = f"{c['diff']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"
                m = pr["rows"][v]
                vr = pr["vs_raw_pixels"][v]
                fl = pr["rows"].get("model float", {}).get("map", float("nan")) if v == "model" else float("nan")
                name = r if v == "model" else f"{r} {v[len('model'):]}"
                lines.append(f"| {name} | {s} | {m['map']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}] | "
                             f"{'-' if np.isnan(fl) else f'{fl:.3f}'} | "
                             f"{vr['diff']:+.3f} [{vr['ci95'][0]:+.3f}, {vr['ci95'][1]:+.3f}] | {vs_ref} | "
                             f"{pr['mean_auroc']:.3f} | {min(p['seconds'] for p in parts):.0f} |")
            if raw_line is None:
                rp, rd = pr["rows"]["raw pixels"], pr["rows"]["random"]
                raw_line = (f"| raw pixels 32 x 32, standardised, cosine | - | {rp['map']:.3f} [{rp['ci95'][0]:.3f}, "
                            f"{rp['ci95'][1]:.3f}] | | | | | |\n| random ranking | - | {rd['map']:.3f} "
                            f"[{rd['ci95'][0]:.3f}, {rd['ci95'][1]:.3f}] | | | | | |")
    if raw_line:
        lines.append(raw_line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=["plain", "con-codes"], choices=sorted(RECIPES))
    p.add_argument("--scheme", choices=SCHEMES, default="cv",
                   help="cv: k-fold patient-grouped cross-validation (default); cross-source: train on one "
                        "collection's training images, score the other's; nih1000-in / nih1000-from-extra: "
                        "folds of the nih1000_64 images scored after training on the other folds / on the "
                        "nih_extra_128 images")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--fold-seed", type=int, default=0)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--ref", default="plain", choices=sorted(RECIPES),
                   help="the recipe every row is compared with, image by image (default plain)")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    out = OUT_OF[a.scheme]
    os.makedirs(out, exist_ok=True)
    cache: dict[str, Any] = {}
    t0 = time.time()
    parts = DIRECTIONS if a.scheme == "cross-source" else range(a.folds)
    if not a.table_only:
        for i, part in enumerate(parts):    # part outermost: every recipe's first part comes first
            for r in a.recipes:
                for s in a.seeds:
                    path = part_paths(a.scheme, r, s, a.folds, a.fold_seed)[i]
                    if os.path.exists(path):
                        with open(path) as fh:
                            old = json.load(fh)
                        if old["job"]["settings"] == RECIPES[r] and all(
                                f"model+{n} pixel bits" in old["rows"] for n in HYBRID_BITS):
                            continue
                    t = time.time()
                    if a.scheme == "cross-source":
                        rep = run_cross_source(r, str(part), s, cache)
                    elif a.scheme in NIH1000_SCHEMES:
                        rep = run_nih1000(r, a.scheme, int(part), s, a.folds, a.fold_seed, cache)
                    else:
                        rep = run(r, int(part), s, a.folds, a.fold_seed, cache)
                    with atomic_open(path, "w") as fh:
                        json.dump(rep, fh, default=float)
                    print(f"{r} {part} seed {s}: held-out mAP@100 {rep['rows']['model']['map']:.4f} "
                          f"(raw {rep['rows']['raw pixels']['map']:.4f}), AUROC {rep['mean_auroc']:.3f}, "
                          f"{time.time() - t:.0f} s", file=sys.stderr, flush=True)
    done = sorted({m.group(1) for f in os.listdir(out) if (m := PART_FILE.match(f))} & set(RECIPES),
                  key=list(RECIPES).index)
    tab = table(done, a.folds, a.fold_seed, sorted({0, *a.seeds}) if a.table_only else a.seeds, ref=a.ref,
                scheme=a.scheme)
    # the command that makes the runs (--table-only only re-reads them)
    cmd = "PYTHONPATH=.:export python benchmarks/model_selection.py " + " ".join(
        x for x in (argv if argv is not None else sys.argv[1:]) if x != "--table-only")
    if a.scheme == "cross-source":
        what = ("Cross-source validation on the 1,669 train + val images of the NIH split: trained on their "
                "nih1000_64 images, scored on their nih_extra_128 images of other patients, and the reverse "
                "(unseen-archive protocol); per-image APs of both directions pooled")
    elif a.scheme in NIH1000_SCHEMES:
        trained = ("the other folds" if a.scheme == "nih1000-in"
                   else "the pool's nih_extra_128 images (the extra-to-nih1000 direction)")
        what = (f"The 1,669 train + val images' nih1000_64 images (patients that their nih_extra_128 images do not "
                f"hold) in {a.folds} patient folds (fold seed {a.fold_seed}); each fold is an unseen archive for a "
                f"recipe trained on {trained}; per-image APs pooled over the folds")
    else:
        what = (f"{a.folds}-fold patient-grouped cross-validation over the 1,669 train + val images of the NIH split "
                f"(fold seed {a.fold_seed}); unseen-archive protocol inside each held-out fold, per-image APs pooled "
                "over the folds")
    note = (f"\n\n{what}; 95% intervals: patient bootstrap (2,000 replicates), paired for differences. No test "
            "image is read. Recipes in benchmarks/model_selection.py RECIPES. Made by:\n\n    " + cmd + "\n")
    with open(os.path.join(out, "table.md"), "w") as fh:
        fh.write(tab + note)
    print(tab + note)
    print(f"total {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
