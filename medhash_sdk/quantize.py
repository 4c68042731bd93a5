"""INT8 the current way: explicit Q/DQ quantization calibrated on real images.

    python -m medhash_sdk.quantize model.onnx --out model.int8.onnx --calibration DIR_OR_FILES...

onnxruntime.quantization.quantize_static writes QuantizeLinear/DequantizeLinear pairs with
scales measured on the calibration images (preprocessed exactly as the Encoder does).
Symmetric signed INT8 for activations and weights, per-channel weights: the form TensorRT
consumes as INT8 (explicit quantization) and ONNX Runtime runs on CPUs.

Codes of the INT8 model differ from FP32 codes on a few bits; an archive encoded at one
precision is searched with queries at another, so the bit agreement with the FP32 model is
measured on held-out images, printed, and stored in the model card (metrics). Since its codes
differ, the INT8 model has a fingerprint of its own (ModelCard.derive: from the FP32 model's,
the quantisation settings and the calibration images), so an index never mixes FP32 and INT8
codes; its card names the FP32 parent.
Needs the `onnx` package (pip install onnx) besides onnxruntime.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .atomic import atomic_path
from .codes import unpack_codes
from .pipeline import decode_ahead, raise_first_error


@dataclass
class Agreement:
    """FP32 vs quantized codes and probabilities on the same preprocessed images."""

    n_images: int
    bit_agreement: float          # fraction of equal bits
    identical_codes: float        # fraction of images whose whole code is equal
    max_prob_diff: float          # max |p_fp32 - p_int8| over images and labels

    def __str__(self) -> str:
        return (f"{self.n_images} held-out images: bit agreement {self.bit_agreement:.4%}, identical codes "
                f"{self.identical_codes:.2%}, max |dp| {self.max_prob_diff:.4f}")


def _preprocessed(encoder: Any, inputs: Sequence[Any]) -> np.ndarray:
    """float32 (n, C, S, S): the inputs decoded ahead (medhash_sdk.pipeline) by the Encoder's loader."""
    decoded = raise_first_error(decode_ahead(list(inputs), encoder.loader()))
    return np.stack([d.value for d in decoded]).astype(np.float32)


def agreement(reference: Any, other: Any, x: np.ndarray, batch_size: int = 32) -> Agreement:
    """Compare two Encoders' codes and probabilities on preprocessed images x (n, C, S, S)."""
    ca, cb, pa, pb = [], [], [], []
    for s in range(0, len(x), batch_size):
        oa, ob = reference.outputs_preprocessed(x[s:s + batch_size]), other.outputs_preprocessed(x[s:s + batch_size])
        ca.append(oa["code_logits"] > 0)
        cb.append(ob["code_logits"] > 0)
        pa.append(oa["probabilities"])
        pb.append(ob["probabilities"])
    a, b = np.concatenate(ca), np.concatenate(cb)
    return Agreement(len(x), float((a == b).mean()), float((a == b).all(axis=1).mean()),
                     float(np.abs(np.concatenate(pa) - np.concatenate(pb)).max()))


def code_agreement(codes_a: np.ndarray, codes_b: np.ndarray, nbits: int) -> float:
    """Fraction of equal bits between two packed code arrays."""
    return float((unpack_codes(codes_a, nbits) == unpack_codes(codes_b, nbits)).mean())


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over preprocessed batches."""

    def __init__(self, x: np.ndarray, input_name: str, batch_size: int):
        self._x, self._name, self._bs = x, input_name, batch_size
        self._it: Iterator[dict[str, np.ndarray]] = self._gen()

    def _gen(self) -> Iterator[dict[str, np.ndarray]]:
        for s in range(0, len(self._x), self._bs):
            yield {self._name: self._x[s:s + self._bs]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._gen()


def quantize(model: str | os.PathLike, out: str | os.PathLike, calibration: Sequence[Any],
             evaluation: Sequence[Any] | None = None, *, method: str = "percentile",
             per_channel: bool = True, batch_size: int = 16) -> Agreement | None:
    """Write an INT8 Q/DQ copy of ``model`` to ``out``, calibrated on real images.

    calibration: image paths or arrays (a few hundred representative images is plenty).
    evaluation: other images to measure agreement with FP32 on (not the calibration ones);
    the result is returned and stored in the card's metrics. method: 'minmax', 'percentile'
    (99.999th, robust to outliers) or 'entropy'.
    """
    try:
        import onnx
        from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quant_pre_process,
                                              quantize_static)
    except ImportError as e:
        raise ImportError("quantization needs onnx and onnxruntime: pip install onnx 'medhash-sdk[cpu]'") from e
    from .encoder import Encoder
    from .model_card import INPUT_NAME

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ValueError(f"method must be one of {sorted(methods)}, got {method!r}")
    if len(calibration) == 0:
        raise ValueError("calibration needs at least one real image")
    src, dst = Path(model), Path(out)
    if src.resolve() == dst.resolve():
        raise ValueError("out must differ from the input model")
    fp32 = Encoder(src, providers="cpu")
    if fp32.card.precision != "fp32":
        raise ValueError(f"{src} is already {fp32.card.precision}; quantize the fp32 model")
    x_cal = _preprocessed(fp32, list(calibration))
    extra: dict[str, Any] = {"ActivationSymmetric": True, "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    with tempfile.TemporaryDirectory(prefix="medhash-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        except Exception:  # shape inference can fail on exotic graphs: quantize the model as is
            pre = src
        q = Path(tmp) / "q.onnx"
        quantize_static(str(pre), str(q), _Reader(x_cal, INPUT_NAME,
                                           # histogram calibrators stack per-batch outputs: equal batches only
                                           batch_size if method == "minmax" else 1),
                        quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method], extra_options=extra)
        m = onnx.load(str(q))
        card = fp32.card.derive(precision="int8", quantization={
            "format": "QDQ", "activations": "int8 symmetric", "weights": "int8 symmetric" + (" per-channel" if per_channel else ""),
            "calibration": method, "calibration_images": len(x_cal),
            "calibration_sha256": hashlib.sha256(np.ascontiguousarray(x_cal).tobytes()).hexdigest(),
            "tool": "onnxruntime.quantization"})
        props = {p.key: p.value for p in m.metadata_props}
        props.update(card.to_metadata())
        del m.metadata_props[:]
        onnx.helper.set_model_props(m, props)
        onnx.save(m, str(q))
        result = None
        if evaluation:
            int8 = Encoder(q, providers="cpu")
            result = agreement(fp32, int8, _preprocessed(fp32, list(evaluation)))
            card.metrics = dict(card.metrics, agreement_vs_fp32={
                "provider": "CPUExecutionProvider", "images": result.n_images,
                "bit_agreement": round(result.bit_agreement, 6), "identical_codes": round(result.identical_codes, 6),
                "max_prob_diff": round(result.max_prob_diff, 6)})
            props.update(card.to_metadata())
            del m.metadata_props[:]
            onnx.helper.set_model_props(m, props)
            onnx.save(m, str(q))
        with atomic_path(dst) as tmp:
            shutil.copyfile(q, tmp)
    return result


def _expand(items: Sequence[str]) -> list[str]:
    """Files, folders, lists and tables -> image paths, by medhash encode's input discovery."""
    from .inputs import discover

    return [it.path for it in discover(list(items)).items]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m medhash_sdk.quantize", description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--calibration", nargs="+", required=True, help="image files or folders (real images)")
    ap.add_argument("--evaluation", nargs="*", default=None,
                    help="held-out images for the FP32 agreement (default: every 5th calibration image is held out)")
    ap.add_argument("--method", default="percentile", choices=["minmax", "percentile", "entropy"])
    args = ap.parse_args(argv)
    cal = _expand(args.calibration)
    if args.evaluation is None:
        ev, cal = cal[::5], [c for i, c in enumerate(cal) if i % 5]
    else:
        ev = _expand(args.evaluation)
    res = quantize(args.model, args.out, cal, ev, method=args.method)
    print(f"wrote {args.out} (INT8 Q/DQ, {len(cal)} calibration images)")
    if res is not None:
        print(f"INT8 vs FP32 on ONNX Runtime CPU: {res}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
