"""`medhash eval --model MODEL --data PATH [--split test] [--k 100] [--json]`.

Encodes every image of the data with the exported model through the runtime Encoder, then
ranks the `--split` images (queries) against the other splits (database) by Hamming
distance. The split is rebuilt with the rule and seed recorded in the model, so `--split
test` gives the patients the model never saw (a warning says when the data differ).

JSON keys (--json): model, fingerprint, method, nbits, split, k, tie_seeds, data_fingerprint,
same_data_as_training (bool), warnings (list), "map@K" (mAP over the top K), "map@all",
"ndcg@K", "precision@K", queries, database. Ties in Hamming distance are broken by a seeded
shuffle of the database and the figures are means over tie_seeds (medhash_sdk.metrics).
"""
from __future__ import annotations

import argparse
import json

from .arguments import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="retrieval mAP@K / NDCG@K of an exported model on a dataset",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported .onnx model")
    p.add_argument("--data", required=True, nargs="+", metavar="PATH", help="same formats as `medhash train`")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="query split (default test)")
    p.add_argument("--k", type=positive_int, default=100, help="cut-off K of mAP@K, NDCG@K, precision@K (default 100)")
    p.add_argument("--tie-seeds", type=positive_int, default=3, help="tie-breaking shuffles averaged (default 3)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--json", action="store_true", help="print one JSON object (keys in the module docstring)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate_file
    res = evaluate_file(args.model, args.data, split=args.split, k=args.k,
                        seeds=tuple(range(max(1, args.tie_seeds))), batch_size=args.batch_size)
    if args.json:
        print(json.dumps(res, sort_keys=True))
        return 0
    k = args.k
    for w in res["warnings"]:
        print(f"warning: {w}")
    print(f"{res['method']} {res['nbits']} bits, {res['queries']} {args.split} queries vs {res['database']} database images")
    print(f"mAP@{k}   {res[f'map@{k}']:.4f}")
    print(f"mAP@all   {res['map@all']:.4f}")
    print(f"NDCG@{k}  {res[f'ndcg@{k}']:.4f}")
    print(f"P@{k}     {res[f'precision@{k}']:.4f}")
    return 0
