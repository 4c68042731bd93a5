"""`medhash engine model.onnx --out model.engine [--fp16]`: build a TensorRT engine on this GPU."""
from __future__ import annotations

import argparse
import sys
import time

from .arguments import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "engine", help="build a TensorRT engine from an exported ONNX model (on the target GPU)",
        description="Build a TensorRT 10.13 engine for this GPU from a medhash ONNX model. The engine "
                    "file carries the model card, the source model's fingerprint and its precision; "
                    "use it as Encoder('model.engine'). A Q/DQ (INT8) model is built as INT8. "
                    "Needs an NVIDIA GPU and pip install 'medhash-sdk[tensorrt]'.")
    p.add_argument("model", help="the exported .onnx model")
    p.add_argument("--out", required=True, help="engine file to write (e.g. model.engine)")
    p.add_argument("--fp16", action="store_true", help="allow FP16 kernels (faster; a few code bits may differ)")
    p.add_argument("--max-batch", type=positive_int, default=64, help="largest batch the engine accepts (default 64)")
    p.add_argument("--opt-batch", type=positive_int, default=32, help="batch size the engine is tuned for (default 32)")
    p.add_argument("--workspace-mib", type=positive_int, default=2048, help="builder workspace in MiB (default 2048)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..backends.tensorrt import build_engine, read_engine_file

    t0 = time.perf_counter()
    try:
        out = build_engine(args.model, args.out, fp16=args.fp16, max_batch=args.max_batch,
                           opt_batch=min(args.opt_batch, args.max_batch), workspace_mib=args.workspace_mib)
    except ImportError as e:
        print(f"medhash engine: {e}", file=sys.stderr)
        return 1
    header, plan = read_engine_file(out)
    print(f"wrote {out}: TensorRT {header['tensorrt_version']} on {header['device']}, precision "
          f"{header['precision']}, max batch {header['max_batch']}, {len(plan) / 2**20:.1f} MiB, "
          f"model {header['source_fingerprint'][:12]}, {time.perf_counter() - t0:.0f} s")
    return 0
