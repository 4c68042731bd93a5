"""`medhash demo`: the bundled model on the bundled sample radiographs, end to end.

Encodes the samples into shards, builds an index, searches each sample against the others
(leave-one-out), prints the top matches with their labels and the mAP over the samples
(relevant = sharing at least one label, "No Finding" counting as a label, as in
medhash_sdk.metrics), and writes a contact sheet PNG for the first sample.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .arguments import positive_int

SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"
# Columns of samples/labels.csv that are not findings
_NOT_LABELS = ("file", "path", "image_index", "patient_id")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="encode, index and search the bundled sample radiographs (no arguments needed)")
    p.add_argument("--out", default="medhash-demo", help="working directory for shards, index and contact sheet "
                                                        "(default ./medhash-demo)")
    p.add_argument("--model", default=None, help="model file; default: the bundled model")
    p.add_argument("--samples", default=None, help=argparse.SUPPRESS)   # a folder with labels.csv (tests)
    p.add_argument("-k", type=positive_int, default=3, help="matches shown per sample (default 3)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    result = run_demo(model=args.model, out=args.out, k=args.k,
                      samples=args.samples or SAMPLES, print_fn=print)
    return 0 if result["n_failed"] == 0 else 1


def run_demo(*, model: Any = None, out: str | os.PathLike[str] = "medhash-demo", k: int = 3,
             samples: str | os.PathLike[str] = SAMPLES, providers: Any = "auto",
             print_fn: Any = print) -> dict[str, Any]:
    """Run the demo; return its figures (mAP, matches, paths written)."""
    from ..batch import build_index, encode_to_shards, read_sources
    from ..contact_sheet import Match, contact_sheet, describe_labels
    from ..encoder import Encoder
    from ..index import Index
    from ..metrics import hamming_distance_matrix, map_at_k, shared_labels

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    table = Path(samples) / "labels.csv"
    with open(table, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    label_columns = [c for c in header if c not in _NOT_LABELS]
    enc = model if isinstance(model, Encoder) else Encoder(model, providers=providers)
    out = Path(out)
    # one shard folder per model, so the demo can be rerun with another model
    summary = encode_to_shards([table], out / f"shards-{enc.fingerprint[:12]}", model=enc, label_columns=label_columns,
                               shard_size=64, batch_size=16, show_progress_bar=False)
    index_path = out / "samples.idx"
    n, _ = build_index([out / f"shards-{enc.fingerprint[:12]}"], index_path, fingerprint=enc.fingerprint)
    index = Index.load(index_path, fingerprint=enc.fingerprint)
    ids = [str(x) for x in index.ids]   # build_index keeps encode's ids: relative paths (str)
    codes = index.codes
    columns, sources = read_sources(index_path)
    labels_text = {i: describe_labels(columns, sources[i][1]) for i in ids}
    flags = np.array([[v.strip() in ("1", "1.0", "true") for v in sources[i][1]] for i in ids], dtype=np.uint8)
    flags = np.concatenate([flags, (flags.sum(1, keepdims=True) == 0).astype(np.uint8)], axis=1)  # + No Finding

    print_fn(f"medhash demo: {enc!r}")
    print_fn(f"{n} sample radiographs from {samples} (NIH ChestX-ray14, Wang et al., CVPR 2017); "
             f"each searched against the other {n - 1}\n")
    kk = min(k, n - 1)
    matches: dict[str, list[tuple[str, int]]] = {}
    for i, qid in enumerate(ids):
        res = index.search(codes[i], k=kk, deny=[qid]) if kk else None
        row = [] if res is None else [(str(x), int(d)) for x, d in zip(res.ids, res.distances) if d >= 0]
        matches[qid] = row
        print_fn(f"{qid}  [{labels_text[qid]}]")
        for rank, (mid, d) in enumerate(row, start=1):
            print_fn(f"  {rank}. distance {d:>3}  {mid}  [{labels_text[mid]}]")
    # leave-one-out distances and relevance: row i without column i
    dist_all = hamming_distance_matrix(codes, codes)
    rel = shared_labels(flags, flags)
    off = ~np.eye(n, dtype=bool)
    mean_ap = (map_at_k(dist_all[off].reshape(n, n - 1), rel[off].reshape(n, n - 1), k=None) if n > 1
               else float("nan"))
    print_fn(f"\nmAP over the {n} samples (leave-one-out, whole ranking; relevant = sharing a label): {mean_ap:.3f}")
    first = ids[0]
    sheet = contact_sheet(enc, sources[first][0], [Match(m, dist, sources[m][0], labels_text[m]) for m, dist in
                                                    matches[first]],
                          out / "contact_sheet.png", query_name=first, query_labels=labels_text[first])
    print_fn(f"contact sheet of {first} and its matches: {sheet}")
    if summary.n_failed:
        print(f"{summary.n_failed} samples could not be read: see {summary.errors_path}", file=sys.stderr)
    return {"map": mean_ap, "matches": matches, "index": os.fspath(index_path), "contact_sheet": os.fspath(sheet),
            "n_failed": summary.n_failed, "n": n}
