"""`medhash export CHECKPOINT --out model.onnx`: one self-describing ONNX file (needs torch)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a training checkpoint to ONNX (needs torch)",
                       description="torch.onnx dynamo exporter, opset 18, one file, dynamic batch; the model "
                                   "card (nbits, preprocessing, labels, training data and split, versions, "
                                   "fingerprint) goes into the file's metadata.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint.pt written by `medhash train`")
    p.add_argument("--out", required=True, metavar="MODEL.onnx")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from medhash_train.onnx_export import export_checkpoint   # needs torch: cli.main gives the install hint
    card = export_checkpoint(args.checkpoint, args.out)
    print(f"wrote {args.out}: {card.method}, {card.nbits} bits, {card.input_size} px, fingerprint {card.fingerprint}")
    return 0
