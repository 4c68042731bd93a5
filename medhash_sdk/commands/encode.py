"""`medhash encode INPUT... --out DIR`: bulk-encode images into resumable shards (see medhash_sdk.batch)."""
from __future__ import annotations

import argparse
import sys

from .arguments import positive_int, providers, ray_address

# Exit status when the job finished but some inputs could not be read (listed in errors.csv).
EXIT_SOME_FAILED = 3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode", help="encode images (folders, files, path lists, CSV) into shards of binary codes",
        description="Encode images into shards of packed binary codes. Run the same command again "
                    "after an interruption: finished shards are kept, the rest is recomputed. "
                    f"Exit status: 0 all encoded, {EXIT_SOME_FAILED} finished but some inputs failed "
                    "(listed in DIR/errors.csv), 1 error.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="a directory (recursive), an image file, a .txt list of paths, or a CSV with a path column")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (shards, manifest, errors.csv)")
    p.add_argument("--model", default=None, help="model file (.onnx or .engine); default: the bundled model")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per inference batch (default 64)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="decode workers (default: the cores this process may use)")
    p.add_argument("--shard-size", type=positive_int, default=None,
                   help="inputs per shard (default 8192); must stay the same when resuming")
    p.add_argument("--pool", choices=("auto", "thread", "process"), default="auto",
                   help="decode workers: auto = threads for PNG/JPEG/TIFF, processes for DICOM (default)")
    p.add_argument("--providers", default="auto",
                   help="auto (TensorRT, CUDA, then CPU), cpu, cuda, tensorrt, or a comma-separated list "
                        "of ONNX Runtime provider names")
    p.add_argument("--path-column", default=None, help="CSV column holding the image paths (default: path)")
    p.add_argument("--id-column", default=None, help="CSV column holding the ids (default: the path as written)")
    p.add_argument("--label-columns", default=None,
                   help="comma-separated CSV label columns to keep (default: every other column)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS", type=ray_address,
                   help="run on a Ray cluster (needs medhash-sdk[dist]); ADDRESS: 'auto' for a running "
                        "cluster, ray://HOST:10001, or nothing for RAY_ADDRESS / a local instance. "
                        "Write --ray=ADDRESS, or put --ray after the INPUTs")
    p.add_argument("--ray-actors", type=positive_int, default=None,
                   help="encoder actors on Ray (default: one per GPU, or CPUs / workers without GPUs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..batch import DEFAULT_SHARD_SIZE, encode_to_shards

    common = dict(
        model=args.model, batch_size=args.batch_size, workers=args.workers,
        shard_size=args.shard_size or DEFAULT_SHARD_SIZE, path_column=args.path_column,
        id_column=args.id_column, providers=providers(args.providers),
        label_columns=args.label_columns.split(",") if args.label_columns else None,
        show_progress_bar=False if args.no_progress else None,
    )
    if args.ray is not None:
        from ..distributed import encode_with_ray

        summary = encode_with_ray(args.inputs, args.out, address=args.ray or None,
                                  num_actors=args.ray_actors, **common)
    else:
        summary = encode_to_shards(args.inputs, args.out, pool=args.pool, **common)
    print(summary, file=sys.stderr)
    return EXIT_SOME_FAILED if summary.n_failed else 0
