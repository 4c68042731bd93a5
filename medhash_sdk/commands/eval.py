"""`medhash eval [--model MODEL] --data PATH [--split test|all] [--k 100] [--json]`.

Headline: the unseen-archive protocol (docs/model.md, "Protocol"). The held-out images are the
archive: each is a query ranked, by Hamming distance, against every image of the OTHER
held-out patients (relevant = shares a label, "No Finding" counts; ties broken at random,
averaged over --tie-seeds). mAP@K with a patient-bootstrap 95% interval, beside raw pixels
(32 x 32, standardised, cosine) and a random ranking on the same images, with the paired
difference model - raw pixels; and the classifier head's AUROC per finding with >= 25
positive held-out images, and their mean.

--split test (default; or val, train): the split is rebuilt with the rule and seed recorded in
the model, so the held-out images are the patients the model never saw (a warning says when
the data differ); the classic figure (those images as queries against the training images,
whose codes were fitted to their own labels) is printed beside it, labelled as such.
--split all: every image of the data is the archive (a collection the model never saw).

JSON keys (--json): model, fingerprint, method, nbits, split, k, tie_seeds, data_fingerprint,
same_data_as_training, warnings, unseen_archive {protocol, images, patients, k, tie_seeds,
bootstrap, rows {model, raw pixels, random: {map, ci95}}, vs_raw_pixels {model, random: {diff,
ci95}}, auroc {finding: {auroc, positives}}, mean_auroc, auroc_min_positives}, and (not with
--split all) classic {protocol, "map@K", "map@all", "ndcg@K", "precision@K", queries, database}.
"""
from __future__ import annotations

import argparse
import json

from .arguments import int_at_least, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="retrieval mAP@K / NDCG@K of an exported model on a dataset",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="exported .onnx model (default: the bundled default model)")
    p.add_argument("--data", required=True, nargs="+", metavar="PATH", help="same formats as `medhash train`")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                   help="held-out images: a split of the model's recorded split rule (default test), or all: "
                        "the whole data is an archive the model never saw")
    p.add_argument("--k", type=positive_int, default=100, help="cut-off K of mAP@K, NDCG@K, precision@K (default 100)")
    p.add_argument("--tie-seeds", type=positive_int, default=3, help="tie-breaking shuffles averaged (default 3)")
    p.add_argument("--bootstrap", type=int_at_least(100), default=2000, metavar="N",
                   help="patient-bootstrap replicates of the 95%% intervals (default 2000, at least 100)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--json", action="store_true", help="print one JSON object (keys in the module docstring)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate_file
    res = evaluate_file(args.model, args.data, split=args.split, k=args.k,
                        seeds=tuple(range(max(1, args.tie_seeds))), batch_size=args.batch_size, n_boot=args.bootstrap)
    if args.json:
        print(json.dumps(res, sort_keys=True))
        return 0
    print(report_text(res))
    return 0


def report_text(res: dict) -> str:
    """The human-readable report of evaluate_file's result."""
    k = res["k"]
    a = res["unseen_archive"]
    out = [f"warning: {w}" for w in res["warnings"]]
    where = "all images" if res["split"] == "all" else f"the {res['split']} split"
    out.append(f"{res['method']} {res['nbits']} bits; unseen archive = {where}: {a['images']} images of "
               f"{a['patients']} patients, each ranked against the other patients' images")
    out.append(f"{'ranking':<42} mAP@{k}   95% interval (patient bootstrap)")
    names = {"model": "this model (Hamming)", "raw pixels": "raw pixels 32x32, standardised, cosine",
             "random": "random ranking"}
    for key, label in names.items():
        r = a["rows"][key]
        out.append(f"{label:<42} {r['map']:.4f}   [{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}]")
    d = a["vs_raw_pixels"]["model"]
    out.append(f"{'model - raw pixels (paired)':<42} {d['diff']:+.4f}  [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]")
    if a.get("auroc"):
        out.append(f"classifier AUROC, findings with >= {a['auroc_min_positives']} positive images: "
                   f"mean {a['mean_auroc']:.3f}")
        for name, v in sorted(a["auroc"].items(), key=lambda t: -t[1]["auroc"]):
            out.append(f"  {name:<20} {v['auroc']:.3f}  ({v['positives']} positive)")
    else:
        out.append(f"classifier AUROC: no finding has >= {a.get('auroc_min_positives', 25)} positive images")
    if "classic" in res:
        c = res["classic"]
        out.append(f"classic figure ({res['split']} queries vs the {c['database']} training-database images, "
                   f"not an unseen archive): mAP@{k} {c[f'map@{k}']:.4f}, NDCG@{k} {c[f'ndcg@{k}']:.4f}")
    return "\n".join(out)
