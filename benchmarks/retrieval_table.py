"""Retrieval tables. Headline (--protocol archive, the default): the unseen-archive protocol.

Unseen archive (docs/model.md, "Protocol"): a recipe (export/medhash_train/recipes.py) is
trained in a setting and scored on images of patients it never saw, query AND database held
out: each archive image is ranked against every image of the other archive patients.
mAP@100 with patient-bootstrap 95% intervals, paired differences against raw pixels (32 x 32,
standardised, cosine) and the plain CNN, the float codes' cosine ranking, the classifier
head's mean AUROC; raw-pixel and random rows always printed. Settings:
  nih-test          the NIH split (seed 0): train on the train + val images, archive = test
  nih1000-to-extra  cross-collection: train on nih1000_64, archive = nih_extra_128 (shared
                    patients removed)
  extra-to-nih1000  cross-collection, the other direction
One JSON per (setting, recipe, seed) under benchmarks/results/model/archive/<setting>/ (cached),
the table in benchmarks/results/model/archive/table.md with its command.

  PYTHONPATH=.:export python benchmarks/retrieval_table.py --recipes plain paper con-codes --seeds 0 1
  PYTHONPATH=.:export python benchmarks/retrieval_table.py --recipes con-codes --default-recipe con-codes \
      --default-model-out medhash_sdk/assets/chestxr64.onnx

Classic grid (--protocol classic, the earlier tables): every method and the paper net's
ablations, seeds, mean and 95% interval; test queries against the training database.

Data (default): NIH ChestX-ray14 from ../shared/data, nih1000_64 + nih_extra_128 combined at
one input size, deduplicated by image index, split by patient (seeded 70/10/20, split seed 0
for every run: the seeds vary the training only). Queries: the test patients; database: the
train + val images. Every method gets the same backbone, budget and augmentation; the epoch is
chosen on the validation split (val queries vs train); the test split is looked at once, after
training. Data loading (medhash_sdk.datasets), the training loop (medhash_train.trainer) and the
figures (medhash_train.evaluate -> medhash_sdk.metrics, numpy) are those of `medhash train` /
`medhash eval`; only the encoding differs (torch here, the exported ONNX model in `medhash
eval`: tests/test_export_parity.py holds the two to >= 99.9% equal bits).

Rows besides the hashing methods: "<method> float" = the same network's real-valued codes u
ranked by cosine (a float-embedding kNN upper bound for its binary codes); "raw pixels
32x32 cosine" = the image itself, downsized to 32 x 32, ranked by cosine; "random" = a
random ranking.

Each finished run is cached as JSON under benchmarks/results/<tag>/ (tag = dataset + budget),
so an interrupted grid resumes where it stopped. Budgets:
  --device cpu   (2-core machine): width 0.25, 8 epochs            ~10-25 s a run
  --device cuda  (one H100): width 0.5, 30 epochs, 8 worker processes; the full grid (14 methods,
                 32 + 64 bits, 3 seeds = 84 runs) took 356 s on one H100
Examples:
  PYTHONPATH=. python benchmarks/retrieval_table.py --device cuda --default-model-out default.onnx
  PYTHONPATH=. python benchmarks/retrieval_table.py --device cpu --methods attention dpsh --bits 32 --seeds 0
  PYTHONPATH=. python benchmarks/retrieval_table.py --dataset pneumoniamnist --bits 16 48
Needs torch, numpy, opencv; not the compiled search engine (metrics are numpy). Exporting the
default model needs onnx + onnxscript; without them the checkpoint is kept and the
`medhash export` command to run elsewhere is printed.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from medhash_sdk.atomic import atomic_open  # noqa: E402  (after the sys.path line)

DATA_DIR = os.environ.get("MEDHASH_DATA", os.path.join(ROOT, "..", "shared", "data"))
DATASETS = {
    "nih": ["nih1000_64.npz", "nih_extra_128.npz"],
    "pneumoniamnist": ["pneumoniamnist.npz"],
}
INPUT_SIZE = {"nih": 64, "pneumoniamnist": 28}
METHODS = ["attention", "ablation-global", "ablation-crop", "attention-dch", "dsh", "dpsh", "hashnet", "dch", "csq", "dtsh",
           "idhn", "dfh", "dpn", "orthohash"]
CROP_METHODS = {"attention", "ablation-crop", "attention-dch"}
ABLATION_NAMES = {"ablation-global": "global only (pair loss, no crop)",
                  "ablation-crop": "+ attention crop (unweighted)",
                  "attention": "+ pair weighting = paper method"}
BUDGETS = {
    "cpu": dict(width=0.25, epochs=8, batch_size=64, lr=1e-3, workers=1),
    "cuda": dict(width=0.5, epochs=30, batch_size=64, lr=1e-3, workers=8),
}
_SAME = ("method", "bits", "seed", "dataset", "input_size", "device", "width", "epochs", "batch_size", "lr",
         "loss_args", "mu", "train_fraction", "local_scale", "box_jitter", "min_evidence")
_SAME_DEFAULTS = {"train_fraction": 1.0, "local_scale": 1, "box_jitter": 0.0, "min_evidence": 0.0}      # settings added later: what older cached runs used
T975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}


# ----------------------------------------------------------------------------- one run
_CACHE: dict[str, Any] = {}


def _dataset(name: str, input_size: int):
    key = f"{name}:{input_size}"
    if key not in _CACHE:
        from medhash_sdk.preprocessing import Preprocessing
        from medhash_sdk.datasets import load_dataset, to_network_input

        ds = load_dataset([os.path.join(DATA_DIR, f) for f in DATASETS[name]], split_seed=0)
        _CACHE[key] = (ds, to_network_input(ds, Preprocessing(input_size)))
    return _CACHE[key]


def fewer_training_patients(ds: Any, fraction: float, seed: int = 0) -> Any:
    """A copy of ds whose train split keeps a seeded `fraction` of the training patients (the
    rest are marked "unused": not trained on, still in the test database of the original ds).
    The same subset for every method and training seed, so a learning curve compares alike."""
    import dataclasses

    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"--train-fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return ds
    train = ds.split == "train"
    patients = np.unique(ds.patient_id[train])
    keep = np.random.default_rng(seed).permutation(patients)[:max(1, math.ceil(fraction * len(patients)))]
    split = ds.split.copy()
    split[train & ~np.isin(ds.patient_id, keep)] = "unused"
    return dataclasses.replace(ds, split=split)


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (method, bits, seed), evaluate on the test split, write the JSON cache."""
    import torch

    from medhash_sdk.evaluation import evaluate_codes, float_figures, split_query_db
    from medhash_train.evaluate import crop_statistics, torch_outputs
    from medhash_train.trainer import TrainConfig, train
    from medhash_sdk.codes import pack_codes

    if job["device"] == "cpu" and job.get("threads"):
        torch.set_num_threads(job["threads"])
    ds, x_all = _dataset(job["dataset"], job["input_size"])
    cfg = TrainConfig(method=job["method"], nbits=job["bits"], input_size=job["input_size"], epochs=job["epochs"],
                      batch_size=job["batch_size"], lr=job["lr"], width=job["width"], seed=job["seed"],
                      device=job["device"], progress=False, loss_args=job.get("loss_args", {}), mu=job.get("mu", -1.0),
                      local_scale=job.get("local_scale", 1), box_jitter=job.get("box_jitter", 0.0),
                      min_evidence=job.get("min_evidence", 0.0))
    trained_on = fewer_training_patients(ds, job.get("train_fraction", 1.0))
    res = train(cfg, trained_on, log=lambda s: None, x_all=x_all)
    u, _ = torch_outputs(res.model, torch.from_numpy(x_all))
    codes = pack_codes(u)
    test = evaluate_codes(codes, ds, "test")
    q, db = split_query_db(ds.split, "test")
    flt = float_figures(u[q], u[db], ds.labels[q], ds.labels[db])
    crop = crop_statistics(res.model, torch.from_numpy(x_all[q])) if res.model.config.use_local else None
    out = {"job": dict(job, path=os.path.basename(job["path"])), "test": test, "float": flt, "val": res.best_val, "chosen_epoch": res.best_epoch,
           "seconds": res.seconds, "history": res.history, "split": ds.info["split"],
           "data_fingerprint": ds.info["fingerprint"], "torch": torch.__version__,
           "train_images": int((trained_on.split == "train").sum()), "test_crop": crop}
    with atomic_open(job["path"], "w") as f:
        json.dump(out, f, indent=1, default=float)
    return out


def _worker(args: tuple[dict[str, Any], int]) -> tuple[str, float, str]:
    job, _ = args
    t = time.time()
    try:
        run_one(job)
        return job["path"], time.time() - t, ""
    except Exception as e:  # a failed run is reported and left uncached, so a rerun retries it
        return job["path"], time.time() - t, f"{type(e).__name__}: {e}"


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- baselines
def fixed_rows(dataset: str) -> dict[str, dict[str, float]]:
    from medhash_sdk.preprocessing import Preprocessing
    from medhash_sdk.datasets import load_dataset, to_network_input
    from medhash_sdk.evaluation import float_figures, split_query_db

    ds = load_dataset([os.path.join(DATA_DIR, f) for f in DATASETS[dataset]], split_seed=0)
    q, db = split_query_db(ds.split, "test")
    spec = Preprocessing(32)
    raw = to_network_input(ds, spec).reshape(len(ds), -1) * spec.std[0] + spec.mean[0]   # back to [0, 1] pixels
    rng = np.random.default_rng(0)
    rnd = rng.normal(size=(len(ds), 16))
    return {"raw pixels 32x32 cosine": float_figures(raw[q], raw[db], ds.labels[q], ds.labels[db]),
            "random ranking": float_figures(rnd[q], rnd[db], ds.labels[q], ds.labels[db], seeds=range(10))}


# ----------------------------------------------------------------------------- table
def mean_ci(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), float(T975.get(len(v), 1.96) * v.std(ddof=1) / math.sqrt(len(v)))


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    m, h = mean_ci(values)
    return f"{m:.4f}" if math.isnan(h) else f"{m:.4f} ± {h:.4f}"


def build_table(results: list[dict[str, Any]], fixed: dict[str, dict[str, float]], bits: list[int],
                methods: list[str], k: int = 100) -> str:
    by: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault((r["job"]["method"], r["job"]["bits"]), []).append(r)
    head = "| method | " + " | ".join(f"mAP@{k} {b}b | NDCG@{k} {b}b" for b in bits) + " | seeds |"
    lines = [head, "|" + "---|" * (2 + 2 * len(bits))]
    for m in methods:
        cells, nseeds = [], 0
        for b in bits:
            rs = by.get((m, b), [])
            nseeds = max(nseeds, len(rs))
            cells += [_fmt([r["test"][f"map@{k}"] for r in rs]), _fmt([r["test"][f"ndcg@{k}"] for r in rs])]
        name = f"{m} ({ABLATION_NAMES[m]})" if m in ABLATION_NAMES else m
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {nseeds} |")
    for m in ("attention", "dpsh"):
        if any((m, b) in by for b in bits):
            cells = []
            for b in bits:
                rs = by.get((m, b), [])
                cells += [_fmt([r["float"][f"map@{k}"] for r in rs]), _fmt([r["float"][f"ndcg@{k}"] for r in rs])]
            lines.append(f"| {m} float u, cosine kNN (upper bound) | " + " | ".join(cells) + " | |")
    for name, fig in fixed.items():
        cells = [f"{fig[f'map@{k}']:.4f}", f"{fig[f'ndcg@{k}']:.4f}"] * len(bits)
        lines.append(f"| {name} | " + " | ".join(cells) + " | - |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- default model
def default_model(out: str, dataset: str, budget: dict[str, Any], device: str, input_size: int,
                  **net_options: Any) -> dict[str, Any]:
    """Train the shipped model through `medhash train`'s code path, export it, evaluate the ONNX file."""
    from medhash_train.pipeline import CHECKPOINT_NAME, train_and_export
    from medhash_train.trainer import TrainConfig

    work = os.path.splitext(out)[0] + "_run"
    cfg = TrainConfig(method="attention", nbits=64, input_size=input_size, epochs=budget["epochs"],
                      batch_size=budget["batch_size"], lr=budget["lr"], width=budget["width"], seed=0,
                      device=device, progress=False, **net_options)
    data = [os.path.join(DATA_DIR, f) for f in DATASETS[dataset]]
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        from medhash_train.trainer import checkpoint_dict, save_checkpoint, train
        from medhash_sdk.datasets import load_dataset

        ds = load_dataset(data, split_seed=0)
        res = train(cfg, ds)
        os.makedirs(work, exist_ok=True)
        save_checkpoint(os.path.join(work, CHECKPOINT_NAME), checkpoint_dict(res, cfg, ds))
        print(f"onnx/onnxscript missing here: checkpoint kept at {work}/{CHECKPOINT_NAME}; export it with\n"
              f"  medhash export {work}/{CHECKPOINT_NAME} --out {out}", file=sys.stderr)
        return {"checkpoint": os.path.join(work, CHECKPOINT_NAME), "exported": False}
    summary = train_and_export(cfg, data, work)
    return finish_default_model(summary["checkpoint"], out, data)


def finish_default_model(checkpoint: str, out: str, data: list[str]) -> dict[str, Any]:
    """Evaluate the exported model on the test split (ONNX through the runtime), record the
    figures in its card, re-export to `out`, and measure code stability across resolutions."""
    import torch

    from medhash_train.onnx_export import export_checkpoint
    from medhash_sdk.evaluation import evaluate_file

    tmp = os.path.splitext(out)[0] + "_noeval.onnx"
    export_checkpoint(checkpoint, tmp)
    fig = evaluate_file(tmp, data, split="test", k=100)
    ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ck["metrics"] = {"test": {k: v for k, v in fig.items() if k.startswith(("map", "ndcg", "precision", "queries", "database"))},
                     "note": "test patients never seen in training or epoch selection"}
    torch.save(ck, checkpoint)
    card = export_checkpoint(checkpoint, out)
    os.unlink(tmp)
    stab = resolution_stability(out)
    res = {"model": out, "fingerprint": card.fingerprint, "test": ck["metrics"]["test"], "stability": stab,
           "chosen_epoch": ck["training"]["chosen_epoch"]}
    with open(os.path.splitext(out)[0] + "_eval.json", "w") as f:
        json.dump(res, f, indent=1)
    return res


def resolution_agreement(encode: Any) -> np.ndarray:
    """Per NIH PNG (48): share of equal bits between the packed codes `encode(images)` gives
    the 1024 px file and a 256 px copy of it."""
    import cv2

    folder = os.path.join(DATA_DIR, "nih_png_1024")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".png"))
    full = [cv2.imread(f, cv2.IMREAD_UNCHANGED) for f in files]
    small = [cv2.resize(a, (256, 256), interpolation=cv2.INTER_AREA) for a in full]
    return (np.unpackbits(encode(full), 1) == np.unpackbits(encode(small), 1)).mean(1)


def resolution_stability(model_path: str) -> dict[str, Any]:
    """Bit agreement of one image's codes from the 1024 px file and a 256 px copy (exported model)."""
    from medhash_sdk.evaluation import encode_with_model_file

    agree = resolution_agreement(lambda images: encode_with_model_file(model_path, images))
    return {"images": len(agree), "mean_bit_agreement": float(agree.mean()), "min_bit_agreement": float(agree.min())}


# ----------------------------------------------------------------------------- unseen archive (headline)
ARCHIVE_OUT = os.path.join(ROOT, "benchmarks", "results", "model", "archive")
RUNS_DIR = os.path.join(ROOT, "benchmarks", ".cache", "model-runs")      # checkpoints (git-ignored)
ARCHIVE_SETTINGS = {
    "nih-test": "NIH split seed 0: trained on the 1,669 train + val images (775 patients), the 417 test "
                "images (240 patients) are the archive",
    "nih1000-to-extra": "trained on all of nih1000_64; the archive is nih_extra_128 without the 27 patients "
                        "the two share",
    "extra-to-nih1000": "trained on all of nih_extra_128; the archive is nih1000_64 without the 27 patients "
                        "the two share",
}
ARCHIVE_RECIPES = ["plain", "paper", "con-features"]
HYBRID_BITS = (64,)          # each run is also scored with 64 pixel bits appended (medhash_train.attention)


def archive_set(setting: str) -> Any:
    """The ImageSet of a setting: split "train" (trained on) and "test" (the unseen archive)."""
    from medhash_sdk.datasets import load_dataset
    from medhash_train.selection import cross_collection

    nih1000, extra = (os.path.join(DATA_DIR, f) for f in DATASETS["nih"])
    if setting == "nih-test":
        # 80/0/20 keeps exactly the 70/10/20 split's test patients (same seeded order and cut)
        ds = load_dataset([nih1000, extra], split_seed=0, fractions=(0.8, 0.0, 0.2))
        ref = load_dataset([nih1000, extra], split_seed=0)
        assert ds.info["split"]["ids_sha256"]["test"] == ref.info["split"]["ids_sha256"]["test"]
        return ds
    if setting == "nih1000-to-extra":
        return cross_collection(load_dataset(nih1000), load_dataset(extra))
    if setting == "extra-to-nih1000":
        return cross_collection(load_dataset(extra), load_dataset(nih1000))
    raise ValueError(f"unknown setting {setting!r}")


def _archive_inputs(setting: str, input_size: int) -> tuple[Any, np.ndarray, np.ndarray]:
    key = f"archive:{setting}:{input_size}"
    if key not in _CACHE:
        from medhash_sdk.datasets import to_network_input
        from medhash_sdk.evaluation import raw_pixel_vectors
        from medhash_sdk.preprocessing import Preprocessing

        ds = archive_set(setting)
        _CACHE[key] = (ds, to_network_input(ds, Preprocessing(input_size)),
                       raw_pixel_vectors([ds.images[i] for i in ds.indices("test")]))
    return _CACHE[key]


def archive_run(setting: str, name: str, seed: int) -> dict[str, Any]:
    """Train recipe `name` (seed) in `setting`, score the archive; nih-test also keeps the
    checkpoint (for --default-model-out) and adds the classic figure (test vs training images)."""
    import torch

    from medhash_sdk.codes import pack_codes
    from medhash_sdk.evaluation import evaluate_codes
    from medhash_train.evaluate import torch_outputs
    from medhash_train.recipes import recipe, resolve
    from medhash_train.selection import heldout_report
    from medhash_train.trainer import TrainConfig, checkpoint_dict, save_checkpoint

    settings = recipe(name)
    ds, x_all, raw = _archive_inputs(setting, settings["input_size"])
    cfg = TrainConfig(**resolve(settings, DATA_DIR, os.path.join(ROOT, "benchmarks", ".cache", "pretrain")),
                      seed=seed, progress=False, recipe=name)
    rep = heldout_report(cfg, ds, x_all, raw=raw, log=lambda m: print(f"  {setting} {name} s{seed}: {m}", file=sys.stderr),
                         hybrid_bits=HYBRID_BITS)
    res = rep.pop("_model")
    if setting == "nih-test":
        u, _ = torch_outputs(res.model, torch.from_numpy(x_all))
        rep["classic"] = evaluate_codes(pack_codes(u), ds, "test")
        run_dir = os.path.join(RUNS_DIR, f"{setting}_{name}_s{seed}")
        os.makedirs(run_dir, exist_ok=True)
        save_checkpoint(os.path.join(run_dir, "checkpoint.pt"), checkpoint_dict(res, cfg, ds))
    rep["job"] = dict(setting=setting, recipe=name, settings=settings, seed=seed, torch=torch.__version__,
                      threads=torch.get_num_threads())
    rep["params"] = int(sum(p.numel() for p in res.model.parameters()))
    info = {k: v for k, v in ds.info.items() if k not in ("fingerprint", "sources")}
    info["sources"] = [os.path.basename(str(x)) for x in ds.info.get("sources", [])]
    rep["archive_info"] = info
    return rep


def previous_default_row(path: str) -> dict[str, Any] | None:
    """The model file `path` (the previous default model) on the nih-test archive, through the Encoder."""
    if not os.path.exists(path):
        return None
    from medhash_sdk.evaluation import analyze_with_model_file, unseen_archive_report

    ds, _, raw = _archive_inputs("nih-test", 64)
    te = ds.indices("test")
    codes, probs = analyze_with_model_file(path, [ds.images[i] for i in te])
    rep = unseen_archive_report(ds.labels[te], ds.patient_id[te], ds.label_names, codes=codes, probabilities=probs,
                                raw=raw)
    rep["image_id"] = [str(x) for x in ds.image_id[te]]
    rep["patient_id"] = [str(x) for x in ds.patient_id[te]]
    return rep


def _load_json(path: str) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def archive_table(setting: str, names: list[str], seeds: list[int], extra_rows: dict[str, dict[str, Any]],
                  ref: str = "plain") -> str:
    """Markdown table of one setting from the cached runs."""
    from medhash_sdk.evaluation import compare

    def fmt_ci(x: dict[str, Any], key: str = "map", sign: bool = False) -> str:
        f = "{:+.3f}" if sign else "{:.3f}"
        return f"{f.format(x[key])} [{f.format(x['ci95'][0])}, {f.format(x['ci95'][1])}]"

    head = ("| ranking | mAP@100, seed 0 [95% CI] | seeds: mean (each) | vs raw pixels, paired [95% CI] | "
            f"vs {ref}, paired [95% CI] | float u, cosine | mean AUROC (findings) |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    reps = {n: [r for s in seeds if (r := _load_json(os.path.join(ARCHIVE_OUT, setting, f"{n}_s{s}.json")))]
            for n in names}
    ref_rep = reps.get(ref, [None])[0] if reps.get(ref) else _load_json(os.path.join(ARCHIVE_OUT, setting, f"{ref}_s0.json"))
    base = None
    rows = [(n, reps[n]) for n in names if reps[n]] + [(n, [r]) for n, r in extra_rows.items() if r]
    for n, rs in rows:
        r0 = rs[0]
        base = base or r0
        maps = [r["rows"]["model"]["map"] for r in rs]
        each = f"{np.mean(maps):.3f} ({', '.join(f'{m:.3f}' for m in maps)})" if len(rs) > 1 else "-"
        vs_ref = "-"
        if ref_rep is not None and n != ref and r0["image_id"] == ref_rep["image_id"]:
            vs_ref = fmt_ci(compare(np.asarray(r0["aps"]["model"]), np.asarray(ref_rep["aps"]["model"]),
                                    np.asarray(r0["patient_id"])), "diff", True)
        fl = f"{r0['rows']['model float']['map']:.3f}" if "model float" in r0["rows"] else "-"
        au = f"{r0['mean_auroc']:.3f} ({len(r0['auroc'])})" if r0.get("auroc") else "-"
        lines.append(f"| {n} | {fmt_ci(r0['rows']['model'])} | {each} | {fmt_ci(r0['vs_raw_pixels']['model'], 'diff', True)} "
                     f"| {vs_ref} | {fl} | {au} |")
    if base is not None:
        for n, label in (("raw pixels", "raw pixels 32 x 32, standardised, cosine"), ("random", "random ranking")):
            lines.append(f"| {label} | {fmt_ci(base['rows'][n])} | | | | | |")
        lines.append(f"\n{ARCHIVE_SETTINGS[setting]}: {base['images']} archive images of {base['patients']} patients.")
    return "\n".join(lines)


def auroc_table(setting: str, name: str) -> str:
    r = _load_json(os.path.join(ARCHIVE_OUT, setting, f"{name}_s0.json"))
    if r is None or not r.get("auroc"):
        return ""
    items = sorted(r["auroc"].items(), key=lambda t: -t[1]["auroc"])
    return ("| finding | AUROC | positive images |\n|---|---|---|\n"
            + "\n".join(f"| {k} | {v['auroc']:.3f} | {v['positives']} |" for k, v in items)
            + f"\n| mean | {r['mean_auroc']:.3f} | |")


def archive_main(a: argparse.Namespace, argv: list[str] | None) -> int:
    import torch

    torch.set_num_threads(a.threads)
    t0 = time.time()
    for setting in a.settings:
        os.makedirs(os.path.join(ARCHIVE_OUT, setting), exist_ok=True)
        for name in a.recipes:
            for seed in a.seeds:
                path = os.path.join(ARCHIVE_OUT, setting, f"{name}_s{seed}.json")
                old = _load_json(path)
                from medhash_train.recipes import recipe

                if old is not None and old["job"]["settings"] == recipe(name) and (
                        recipe(name).get("pixel_bits") or all(f"model+{n} pixel bits" in old["rows"] for n in HYBRID_BITS)):
                    continue
                if a.table_only:
                    continue
                t = time.time()
                rep = archive_run(setting, name, seed)
                with atomic_open(path, "w") as fh:
                    json.dump(rep, fh, default=float)
                print(f"{setting} {name} s{seed}: archive mAP@100 {rep['rows']['model']['map']:.4f} (raw pixels "
                      f"{rep['rows']['raw pixels']['map']:.4f}), mean AUROC {rep['mean_auroc']:.3f}, "
                      f"{time.time() - t:.0f} s", file=sys.stderr, flush=True)
    prev = os.path.join(ARCHIVE_OUT, "nih-test", "previous-default.json")
    if not os.path.exists(prev) and os.path.exists(a.previous_model):
        rep = previous_default_row(a.previous_model)
        if rep is not None:
            rep["model_file"] = os.path.basename(a.previous_model)
            from medhash_sdk.encoder import Encoder

            rep["fingerprint"] = Encoder(a.previous_model).fingerprint
            with open(prev, "w") as fh:
                json.dump(rep, fh, default=float)
    cmd = "PYTHONPATH=.:export python benchmarks/retrieval_table.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = [f"# Unseen-archive protocol (headline)\n\nMade by:\n\n    {cmd}\n\n"
           "mAP@100: each archive image is a query ranked against every image of the other archive patients "
           "(relevant = shares a label, No Finding counts; Hamming ties broken at random, mean over 3 tie seeds). "
           "95% intervals: patient bootstrap (2,000 replicates); differences are paired (same images, same "
           "resampled patients). Recipes: export/medhash_train/recipes.py; every run keeps its last epoch.\n"]
    for setting in a.settings:
        extra = {}
        if setting == "nih-test":
            extra["previous default model (file, epoch chosen on validation)"] = _load_json(prev)
            shipped = _load_json(os.path.join(ARCHIVE_OUT, "nih-test", "shipped-model.json"))
            if shipped:
                extra["shipped default model (file, through the Encoder)"] = shipped
        out.append(f"## {setting}\n\n" + archive_table(setting, a.recipes, a.seeds, extra) + "\n")
        if a.auroc_recipe:
            out.append(f"Per-finding AUROC of {a.auroc_recipe} (seed 0), findings with >= 25 positive archive "
                       f"images:\n\n" + auroc_table(setting, a.auroc_recipe) + "\n")
    text = "\n".join(out)
    with open(os.path.join(ARCHIVE_OUT, "table.md"), "w") as fh:
        fh.write(text)
    print(text)
    print(f"total {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


def archive_default_model(out: str, name: str, stability: bool = True) -> dict[str, Any]:
    """Ship recipe `name`: its nih-test seed-0 checkpoint (trained by archive_run, or now), exported,
    scored through the Encoder on the archive (and classically), the figures written into its
    card together with the recipe's cross-collection figures, re-exported; codes' stability
    across resolutions measured."""
    import torch

    from medhash_sdk.evaluation import evaluate_file
    from medhash_train.onnx_export import export_checkpoint

    ck_path = os.path.join(RUNS_DIR, f"nih-test_{name}_s0", "checkpoint.pt")
    if not os.path.exists(ck_path):
        rep = archive_run("nih-test", name, 0)
        path = os.path.join(ARCHIVE_OUT, "nih-test", f"{name}_s0.json")
        with open(path, "w") as fh:
            json.dump(rep, fh, default=float)
    data = [os.path.join(DATA_DIR, f) for f in DATASETS["nih"]]
    tmp = os.path.splitext(out)[0] + "_noeval.onnx"
    export_checkpoint(ck_path, tmp)
    fig = evaluate_file(tmp, data, split="test", k=100, keep_aps=True)
    arch = fig["unseen_archive"]
    card_fig = {k: arch[k] for k in ("protocol", "images", "patients", "k", "rows", "vs_raw_pixels", "auroc",
                                     "mean_auroc", "auroc_min_positives")}
    cross = {}
    for setting in ("nih1000-to-extra", "extra-to-nih1000"):
        r = _load_json(os.path.join(ARCHIVE_OUT, setting, f"{name}_s0.json"))
        p = _load_json(os.path.join(ARCHIVE_OUT, setting, "plain_s0.json"))
        if r is not None:
            from medhash_sdk.evaluation import compare

            cross[setting] = {"recipe": name, "model": r["rows"]["model"], "raw pixels": r["rows"]["raw pixels"],
                              "random": r["rows"]["random"], "vs_raw_pixels": r["vs_raw_pixels"]["model"],
                              "mean_auroc": r["mean_auroc"], "images": r["images"], "patients": r["patients"]}
            if p is not None:
                cross[setting]["vs_plain_cnn"] = compare(np.asarray(r["aps"]["model"]), np.asarray(p["aps"]["model"]),
                                                         np.asarray(r["patient_id"]))
    ck = torch.load(ck_path, map_location="cpu", weights_only=True)
    ck["metrics"] = {"unseen_archive_test": card_fig, "classic_test": fig.get("classic", {}),
                     "cross_collection_recipe": cross,
                     "note": "test patients never seen in training or recipe choice (recipe chosen by 3-fold "
                             "patient-grouped cross-validation on the training patients); cross_collection_recipe: "
                             "the same recipe trained on one NIH collection, scored on the other"}
    torch.save(ck, ck_path)
    card = export_checkpoint(ck_path, out)
    os.unlink(tmp)
    arch["model_file"] = os.path.basename(out)
    arch["fingerprint"] = card.fingerprint
    arch["classic"] = fig.get("classic")
    if stability:
        arch["stability"] = resolution_stability(out)
    with open(os.path.join(ARCHIVE_OUT, "nih-test", "shipped-model.json"), "w") as fh:
        json.dump(arch, fh, default=float)
    return {"model": out, "fingerprint": card.fingerprint, "unseen_archive": arch["rows"],
            "vs_raw_pixels": arch["vs_raw_pixels"], "mean_auroc": arch["mean_auroc"],
            "stability": arch.get("stability"), "cross_collection": cross}


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    from medhash_train.commands import add_crop_options

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=("archive", "classic"), default="archive",
                   help="archive (default, the headline): recipes trained per setting, scored on an unseen archive "
                        "(patient-bootstrap intervals, raw-pixel and random rows); classic: the earlier grid, "
                        "test queries vs the training database")
    p.add_argument("--settings", nargs="+", default=list(ARCHIVE_SETTINGS), choices=list(ARCHIVE_SETTINGS),
                   help="archive: which train/archive settings")
    p.add_argument("--recipes", nargs="+", default=ARCHIVE_RECIPES, help="archive: medhash_train.recipes names")
    p.add_argument("--threads", type=int, default=2, help="archive: torch threads")
    p.add_argument("--table-only", action="store_true", help="archive: only write the table from cached runs")
    p.add_argument("--previous-model", default=os.path.join(ROOT, "medhash_sdk", "assets", "chestxr64.onnx"),
                   help="archive: the previous default model file, scored once on nih-test (cached)")
    p.add_argument("--auroc-recipe", default=None, help="archive: print this recipe's per-finding AUROC tables")
    p.add_argument("--default-recipe", default=None,
                   help="archive: with --default-model-out, the recipe to ship (its nih-test seed-0 run)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="nih")
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--bits", nargs="+", type=int, default=[32, 64])
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="training seeds (classic: 0 1 2; archive: 0)")
    p.add_argument("--epochs", type=int, default=None, help="override the budget's epochs")
    p.add_argument("--width", type=float, default=None, help="override the budget's backbone width")
    p.add_argument("--workers", type=int, default=None, help="parallel training processes (GPU: several share it)")
    p.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--default-model-out", default=None, metavar="PATH.onnx",
                   help="also train the default model (attention, 64 bits, seed 0, this budget), export and evaluate it")
    p.add_argument("--no-grid", action="store_true", help="skip the grid (with --default-model-out)")
    p.add_argument("--loss-args", type=json.loads, default={}, metavar="JSON",
                   help='override loss constants for every method in the grid, e.g. \'{"alpha": 0.5}\' (tag records it)')
    p.add_argument("--mu", type=float, default=-1.0, help="classification loss weight (default: the method's)")
    p.add_argument("--train-fraction", type=float, default=1.0,
                   help="train on this seeded fraction of the training patients (learning curve; the "
                        "validation, test queries and database stay the same)")
    p.add_argument("--local-scale", type=int, default=1, metavar="S",
                   help="attention methods only: input S times the dataset's size, branches at the dataset's "
                        "size, the crop taken from the full input (nih: 128 px in, 64 px branches)")
    add_crop_options(p)
    p.add_argument("--data-dir", default=None, help="folder with the .npz files (default ../shared/data or $MEDHASH_DATA)")
    a = p.parse_args(argv)
    if a.data_dir:
        global DATA_DIR
        DATA_DIR = os.path.abspath(a.data_dir)
        os.environ["MEDHASH_DATA"] = DATA_DIR     # spawned workers read it at import
    if a.protocol == "archive":
        a.seeds = a.seeds or [0]
        rc = archive_main(a, argv)
        if a.default_model_out:
            if not a.default_recipe:
                p.error("--default-model-out with the archive protocol needs --default-recipe")
            print(json.dumps(archive_default_model(a.default_model_out, a.default_recipe), indent=1, default=float))
        return rc
    a.seeds = a.seeds or [0, 1, 2]

    budget = dict(BUDGETS[a.device])
    if a.epochs:
        budget["epochs"] = a.epochs
    if a.width:
        budget["width"] = a.width
    if a.workers:
        budget["workers"] = a.workers
    input_size = INPUT_SIZE[a.dataset] * a.local_scale
    if a.local_scale > 1 and set(a.methods) - CROP_METHODS:
        p.error(f"--local-scale > 1 needs methods with the attention crop: {sorted(CROP_METHODS)}")
    if (a.box_jitter > 0 or a.min_evidence > 0) and set(a.methods) - CROP_METHODS:
        p.error(f"--box-jitter / --min-evidence need methods with the attention crop: {sorted(CROP_METHODS)}")
    tag = f"{a.dataset}-{input_size}px-w{budget['width']:g}-e{budget['epochs']}-b{budget['batch_size']}-lr{budget['lr']:g}"
    if a.loss_args:
        tag += "-" + "-".join(f"{k}{v:g}" for k, v in sorted(a.loss_args.items()))
    if a.mu >= 0:
        tag += f"-mu{a.mu:g}"
    if a.local_scale > 1:
        tag += f"-ls{a.local_scale}"
    if a.train_fraction < 1.0:
        tag += f"-tf{a.train_fraction:g}"
    if a.box_jitter > 0:
        tag += f"-bj{a.box_jitter:g}"
    if a.min_evidence > 0:
        tag += f"-ev{a.min_evidence:g}"
    if a.epochs or a.width:   # a budget moved to the other device: keep its runs apart (bf16 on GPUs)
        tag += f"-{a.device}"
    outdir = os.path.join(a.results, tag)
    os.makedirs(outdir, exist_ok=True)
    t0 = time.time()
    cpus = os.cpu_count() or 1
    workers = max(1, int(budget["workers"]))
    threads = max(1, cpus // workers)
    jobs = []
    for m in a.methods:
        for b in a.bits:
            for s in a.seeds:
                path = os.path.join(outdir, f"{m}_{b}b_s{s}.json")
                job = dict(method=m, bits=b, seed=s, dataset=a.dataset, input_size=input_size, device=a.device,
                           threads=threads, path=path, loss_args=a.loss_args, mu=a.mu,
                           train_fraction=a.train_fraction, local_scale=a.local_scale, box_jitter=a.box_jitter,
                           min_evidence=a.min_evidence,
                           **{k: budget[k] for k in ("width", "epochs", "batch_size", "lr")})
                if os.path.exists(path):   # resume: a cached run counts when its settings match
                    try:
                        with open(path) as f:
                            old = json.load(f)["job"]
                        if all(old.get(k, _SAME_DEFAULTS.get(k)) == job[k] for k in _SAME):
                            continue
                    except (OSError, ValueError, KeyError):
                        pass
                jobs.append(job)
    print(f"{tag}: {len(jobs)} runs to do, cached in {outdir} ({workers} workers x {threads} threads)", file=sys.stderr)
    if jobs and not a.no_grid:
        if workers == 1:
            _init_worker(threads)
            done = map(_worker, [(j, i) for i, j in enumerate(jobs)])
            for i, (path, sec, err) in enumerate(done):
                print(f"[{i + 1}/{len(jobs)}] {os.path.basename(path)} {sec:.1f}s {err}", file=sys.stderr, flush=True)
        else:
            ctx = mp.get_context("spawn")
            with ctx.Pool(workers, initializer=_init_worker, initargs=(threads,)) as pool:
                for i, (path, sec, err) in enumerate(pool.imap_unordered(_worker, [(j, i) for i, j in enumerate(jobs)])):
                    print(f"[{i + 1}/{len(jobs)}] {os.path.basename(path)} {sec:.1f}s {err} "
                          f"(elapsed {time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
    results = []
    for f in sorted(os.listdir(outdir)):
        if f.endswith(".json") and f != "fixed.json":
            with open(os.path.join(outdir, f)) as fh:
                r = json.load(fh)
            if r["job"]["bits"] in a.bits and r["job"]["method"] in a.methods and r["job"]["seed"] in a.seeds:
                results.append(r)
    fixed_path = os.path.join(outdir, "fixed.json")
    if os.path.exists(fixed_path):
        with open(fixed_path) as fh:
            fixed = json.load(fh)
    else:
        fixed = fixed_rows(a.dataset)
        with open(fixed_path, "w") as fh:
            json.dump(fixed, fh, indent=1)
    table = build_table(results, fixed, a.bits, a.methods)
    secs = [r["seconds"] for r in results]
    note = (f"\n\n{a.dataset}, {input_size} px, resnet18 width {budget['width']:g}, {budget['epochs']} epochs, batch "
            f"{budget['batch_size']}, lr {budget['lr']:g}, device {a.device}; test queries vs train+val database; "
            f"mean ± 95% t-interval over seeds; {len(results)} runs, mean {np.mean(secs) if secs else 0:.1f} s a run.")
    with open(os.path.join(outdir, f"table_{'_'.join(map(str, a.bits))}.md"), "w") as fh:
        fh.write(f"Made by:\n\n    python benchmarks/retrieval_table.py {' '.join(sys.argv[1:])}\n\n" + table + note + "\n")
    print(table + note)
    if a.default_model_out:
        res = default_model(a.default_model_out, a.dataset, budget, a.device, input_size,
                            local_scale=a.local_scale, box_jitter=a.box_jitter, min_evidence=a.min_evidence)
        print(json.dumps(res, indent=1))
    print(f"total {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
