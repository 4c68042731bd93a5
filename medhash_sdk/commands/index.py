"""`medhash index build DIR... --out codes.idx` (from encode's shards) and `medhash index info FILE`."""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build an index file from `medhash encode` shards, or describe one")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = actions.add_parser("build", help="merge the shards of finished encode jobs into one index file",
                           description="Merge the shards of one or more finished `medhash encode` jobs into "
                                       "one index file, with a sources table (id, path, labels) beside it "
                                       "(OUT.sources.csv) for `medhash search --explain`.")
    b.add_argument("dirs", nargs="+", metavar="DIR", help="output directories of `medhash encode`")
    b.add_argument("--out", required=True, help="index file to write (e.g. codes.idx)")
    b.add_argument("--model", default=None,
                   help="refuse unless the shards were made by this model (.onnx or .engine)")
    b.add_argument("--sort-by-code", action="store_true",
                   help="store the rows in code order (Index.sort_by_code): multi-index searches of a large "
                        "archive read near codes together; equal distances then rank in code order")
    b.set_defaults(run=run_build)
    i = actions.add_parser("info", help="print an index file's size, code length and model fingerprint")
    i.add_argument("index", help="index file")
    i.add_argument("--verify", action="store_true", help="also check every byte against the file's checksum")
    i.set_defaults(run=run_info)


def run_build(args: argparse.Namespace) -> int:
    from ..batch import build_index, sources_path

    fingerprint = None
    if args.model is not None:
        from ..encoder import Encoder

        fingerprint = Encoder(args.model, providers="cpu").fingerprint
    n, path = build_index(args.dirs, args.out, fingerprint=fingerprint, sort_by_code=args.sort_by_code)
    print(f"wrote {path} ({n} codes) and {sources_path(path)}", file=sys.stderr)
    return 0


def run_info(args: argparse.Namespace) -> int:
    from ..index import Index

    with Index.view(args.index) as idx:
        if args.verify:
            idx.verify()
        print(f"{args.index}: {len(idx)} codes of {idx.nbits} bits, {idx.id_type or 'no'} ids, "
              f"model fingerprint {idx.fingerprint or 'unknown'}" + (", checksum verified" if args.verify else ""))
    return 0
