"""Encoder speed (issue 4, "Speed"): ONNX Runtime CPU Encoder vs the same network in torch eager.

    python benchmarks/bench_encode.py [--files 192] [--batch-size 32] [--width 0.5] [--json out.json]

Same run, same threads (torch.set_num_threads = ORT intra-op threads = the CPUs this process
may use), batch 32, real 1024 x 1024 NIH PNGs (../shared/data/nih_png_1024, cycled to --files):
- model only: already preprocessed batches -> codes (Encoder.encode_preprocessed vs torch forward)
- from arrays: decoded uint8 arrays -> codes (preprocessing + model)
- decode only: PNG files -> preprocessed batches through the Encoder's decode pool
- from files: PNG files -> codes; torch eager reads, preprocesses and runs sequentially, the
  Encoder overlaps decoding with inference
Targets: Encoder >= 2x torch eager; from files >= 90% of 1 / (1/decode + 1/model) on a CPU
(decoding and the model share the cores), >= 90% of min(decode, model) on a GPU.
The network: by default the bundled default model's architecture (rebuilt from its card's
training config: network, width, bits, input size), with random weights (speed does not depend
on them), exported with medhash_train.onnx_export; --like-model paper: the paper's attention
hashing net at --width / --bits / --input-size (the figures before issue 10).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from _report import recorded

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "nih_png_1024"


def measure(paths: dict[str, Callable[[], Any]], n: int, repeats: int, warmup: int = 2) -> dict[str, tuple[float, float]]:
    """{name: (median images/s, spread (max-min)/median)}. Rounds are interleaved (every path once
    per round) so that load from other processes hits all paths alike; warm-up rounds first."""
    for _ in range(warmup):
        for fn in paths.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(repeats):
        for k, fn in paths.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    out = {}
    for k, ts in times.items():
        rates = [n / t for t in ts]
        med = statistics.median(rates)
        out[k] = (med, (max(rates) - min(rates)) / med)
    return out


def gemm_ceiling(threads: int, n: int = 1024, repeats: int = 20) -> float:
    """FP32 GFLOP/s of one large MatMul in ONNX Runtime with `threads` threads: the most the
    same library's kernels reach on this CPU, the ceiling for any network's convolutions."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm", io[:2], io[2:])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
                                .SerializeToString(), so, providers=["CPUExecutionProvider"])
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    for _ in range(3):
        sess.run(None, {"a": a, "b": a})
    t = time.perf_counter()
    for _ in range(repeats):
        sess.run(None, {"a": a, "b": a})
    return 2.0 * n ** 3 * repeats / (time.perf_counter() - t) / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=192, help="PNG files per run (the 48 NIH files cycled)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--width", type=float, default=0.5, help="backbone width multiplier (NetConfig.width)")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="default: the CPUs this process may use")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--like-model", default=str(ROOT / "medhash_sdk" / "assets" / "chestxr64.onnx"),
                    help="measure this model file's architecture (random weights), or 'paper' for the paper net "
                         "at --width/--bits/--input-size (default: the bundled default model)")
    args = ap.parse_args(argv)

    import torch

    from medhash_sdk._system import available_cpus
    from medhash_sdk.encoder import PREFETCH, Encoder
    from medhash_sdk.pipeline import decode_ahead, raise_first_error
    from medhash_sdk.preprocessing import Preprocessing, preprocess_batch
    from medhash_train.attention import NetConfig, build_model
    from medhash_train.onnx_export import export_onnx

    threads = args.threads or available_cpus()
    torch.set_num_threads(threads)
    pngs = sorted(DATA.glob("*.png"))
    if not pngs:
        print(f"no NIH PNGs in {DATA}", file=sys.stderr)
        return 2
    files = [str(p) for p in itertools.islice(itertools.cycle(pngs), args.files)]
    n, bs = len(files), args.batch_size
    arrays = [cv2.imread(f, cv2.IMREAD_UNCHANGED) for f in files]

    torch.manual_seed(0)
    labels = [f"label{i}" for i in range(15)]
    if args.like_model == "paper":
        net_cfg = NetConfig(nbits=args.bits, num_labels=len(labels), width=args.width,
                            stem="small" if args.input_size < 48 else "imagenet")
        what = f"paper net resnet18 width {args.width}"
    else:
        from medhash_train.trainer import TrainConfig, net_config_for

        card = Encoder(args.like_model).card
        tc = TrainConfig(**{k: v for k, v in card.training["config"].items() if k in TrainConfig.__dataclass_fields__})
        net_cfg = net_config_for(tc, len(labels))
        args.bits, args.input_size, args.width = net_cfg.code_bits, tc.input_size, tc.width
        members = f"{net_cfg.members} networks of " if net_cfg.members > 1 else ""
        what = (f"{os.path.basename(args.like_model)}'s network ({card.method}: {members}{tc.backbone} width "
                f"{tc.width:g}, {'attention crop' if net_cfg.use_local else 'global only'})")
    model = build_model(net_cfg)
    model.eval()
    spec = Preprocessing(input_size=args.input_size)
    tmp = tempfile.mkdtemp(prefix="medhash-bench-")
    onnx_path = os.path.join(tmp, "paper.onnx")
    export_onnx(model, spec, labels, "attention-untrained", onnx_path)
    model.eval()
    enc = Encoder(onnx_path, providers="cpu", threads=threads, workers=threads)
    x_all = preprocess_batch(arrays, spec)
    batches = [x_all[s:s + bs] for s in range(0, n, bs)]

    def torch_model() -> None:
        with torch.inference_mode():
            for b in batches:
                model(torch.from_numpy(b))

    def ort_model() -> None:
        for b in batches:
            enc.encode_preprocessed(b)

    def torch_arrays() -> None:
        with torch.inference_mode():
            for s in range(0, n, bs):
                model(torch.from_numpy(preprocess_batch(arrays[s:s + bs], spec)))

    def torch_files() -> None:
        with torch.inference_mode():
            for s in range(0, n, bs):
                ims = [cv2.imread(f, cv2.IMREAD_UNCHANGED) for f in files[s:s + bs]]
                model(torch.from_numpy(preprocess_batch(ims, spec)))

    def decode_only() -> None:   # the Encoder's pipeline (same pool and window) without the model
        for _ in raise_first_error(decode_ahead(files, enc.loader(), workers=threads, window=PREFETCH * bs + threads)):
            pass

    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.from_numpy(batches[0]))
    gflop_per_image = counter.get_total_flops() / len(batches[0]) / 1e9

    # agreement check: same codes from both paths (otherwise the speed comparison is moot)
    with torch.inference_mode():
        u = model(torch.from_numpy(x_all[:bs]))[0].numpy()
    agree = float((np.unpackbits(enc.encode(arrays[:bs]), axis=1).astype(bool) == (u > 0)).mean())

    r = measure({
        "torch eager, model only": torch_model,
        "Encoder ORT CPU, model only": ort_model,
        "torch eager, from arrays": torch_arrays,
        "Encoder ORT CPU, from arrays": lambda: enc.encode(arrays, batch_size=bs),
        "decode only (Encoder pool)": decode_only,
        "torch eager, from files (sequential)": torch_files,
        "Encoder ORT CPU, from files": lambda: enc.encode(files, batch_size=bs),
    }, n, args.repeats)

    ceiling = gemm_ceiling(threads)
    dec, mod = r["decode only (Encoder pool)"][0], r["Encoder ORT CPU, model only"][0]
    bound = 1.0 / (1.0 / dec + 1.0 / mod)
    files_rate = r["Encoder ORT CPU, from files"][0]
    checks = {
        "model only: Encoder / torch eager (target >= 2x)": mod / r["torch eager, model only"][0],
        "from arrays: Encoder / torch eager (target >= 2x)":
            r["Encoder ORT CPU, from arrays"][0] / r["torch eager, from arrays"][0],
        "from files: Encoder / torch eager (target >= 2x)": files_rate / r["torch eager, from files (sequential)"][0],
        "from files: Encoder / (1/(1/decode+1/model)) (target >= 0.90)": files_rate / bound,
        "from files: Encoder / min(decode, model) (GPU target >= 0.90)": files_rate / min(dec, mod),
    }
    host = f"{platform.machine()}, {threads} threads ({available_cpus()} CPUs usable, {os.cpu_count()} on the machine)"
    print(f"\nEncoder benchmark: {host}; torch {torch.__version__}, onnxruntime "
          f"{__import__('onnxruntime').__version__}; {what}, "
          f"{args.input_size} px, {args.bits} bits; {n} NIH PNGs 1024x1024, batch {bs}; "
          f"ORT vs torch bit agreement {agree:.4%}\n")
    print("| path | images/s | spread |\n|---|---:|---:|")
    for k, (v, spread) in r.items():
        print(f"| {k} | {v:.1f} | {spread:.0%} |")
    print(f"| bound 1/(1/decode + 1/model) | {bound:.1f} | |")
    print("\n| check | value |\n|---|---:|")
    for k, v in checks.items():
        print(f"| {k} | {v:.2f} |")
    print(f"\nRoofline: the network is {gflop_per_image * 1e3:.1f} MFLOP per image; one large FP32 "
          f"MatMul in ONNX Runtime reaches {ceiling:.0f} GFLOP/s on {threads} threads.")
    print("| model only | GFLOP/s | share of that ceiling |\n|---|---:|---:|")
    for k in ("torch eager, model only", "Encoder ORT CPU, model only"):
        g = r[k][0] * gflop_per_image
        print(f"| {k.split(',')[0]} | {g:.0f} | {g / ceiling:.0%} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"host": host, "rates": {k: v[0] for k, v in r.items()},
                                               "bound": bound, "checks": checks,
                                               "gflop_per_image": gflop_per_image, "gemm_ceiling_gflops": ceiling, "bit_agreement": agree,
                                               "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    with recorded("bench_encode"):
        status = main()
    raise SystemExit(status)
