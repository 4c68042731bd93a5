"""`medhash search --index codes.idx QUERY... -k 10 [--json] [--explain OUTDIR]`."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

from .._system import available_cpus
from .arguments import positive_int, providers
from .encode import EXIT_SOME_FAILED


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="find the images most similar to query images in an index",
                       description="Encode the QUERY images with the index's model and print their nearest "
                                   f"codes by Hamming distance. Exit status {EXIT_SOME_FAILED} when some "
                                   "queries could not be read.")
    p.add_argument("queries", nargs="+", metavar="QUERY",
                   help="query images: files, directories, .txt lists or CSV files, as for `medhash encode`")
    p.add_argument("--index", required=True, help="index file (from `medhash index build`)")
    p.add_argument("--model", default=None, help="model file; default: the bundled model")
    p.add_argument("-k", type=positive_int, default=10, help="matches per query (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--explain", metavar="OUTDIR", default=None,
                   help="write one contact sheet PNG per query into OUTDIR: the query and its matches "
                        "with attention heatmaps, distances and labels")
    p.add_argument("--providers", default="auto", help="ONNX Runtime providers (default auto)")
    p.set_defaults(run=run)


def sheet_name(query_id: str) -> str:
    """A file name for a query's contact sheet, from its id."""
    stem = os.path.splitext(query_id)[0] or query_id
    return (re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "query") + ".png"


def run(args: argparse.Namespace) -> int:
    from ..batch import encode_shards, read_sources
    from ..contact_sheet import Match, contact_sheet, describe_labels
    from ..encoder import Encoder
    from ..index import Index
    from ..inputs import discover
    from ..pipeline import DecodePools

    index = Index.load(args.index)
    enc = Encoder(args.model, providers=providers(args.providers))
    if index.fingerprint is not None:
        index.check_fingerprint(enc.fingerprint)   # ModelMismatchError: says which models differ
    queries = discover(args.queries).items
    with DecodePools(available_cpus(), "auto") as pools:
        found_codes = next(encode_shards([(0, queries)], enc, pools, batch_size=64))
    ok, failed = found_codes.items, found_codes.errors
    for q, reason in failed:
        print(f"medhash search: {q.path}: {reason}", file=sys.stderr)
    results: list[dict[str, Any]] = []
    if ok:
        res = index.search(found_codes.codes, k=args.k)
        found = {str(x) for row, drow in zip(res.ids, res.distances) for x, d in zip(row, drow) if d >= 0}
        columns, sources = read_sources(args.index, found)
        for q, row, drow in zip(ok, res.ids, res.distances):
            matches = []
            for rank, (x, d) in enumerate(zip(row, drow), start=1):
                if d < 0:   # padding: fewer than k codes in the index
                    break
                path, values = sources.get(str(x), (None, []))
                m: dict[str, Any] = {"rank": rank, "id": x.item() if hasattr(x, "item") else x, "distance": int(d)}
                if columns:
                    m["labels"] = dict(zip(columns, values))
                    m["label_text"] = describe_labels(columns, values)
                if path is not None:
                    m["path"] = path
                matches.append(m)
            results.append({"query": q.path, "matches": matches})
    if args.explain:
        os.makedirs(args.explain, exist_ok=True)
        for q, r in zip(ok, results):
            ms = [Match(str(m["id"]), m["distance"], m.get("path"), m.get("label_text", "")) for m in r["matches"]]
            r["contact_sheet"] = os.fspath(contact_sheet(enc, q.path, ms, os.path.join(args.explain, sheet_name(q.id)),
                                                         query_name=q.id))
    if args.json:
        out = {"index": args.index, "model_fingerprint": enc.fingerprint, "k": args.k, "results": results,
               "failed": [{"query": q.path, "reason": reason} for q, reason in failed]}
        print(json.dumps(out, indent=1, ensure_ascii=False))
    else:
        for r in results:
            print(f"query {r['query']}")
            for m in r["matches"]:
                print(f"  {m['rank']:>3}  distance {m['distance']:>3}  {m['id']}"
                      + (f"  [{m['label_text']}]" if m.get("label_text") else ""))
            if "contact_sheet" in r:
                print(f"  contact sheet: {r['contact_sheet']}")
    if failed:
        print(f"medhash search: {len(failed)} of {len(queries)} queries could not be read", file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0
