"""Export a trained network to one self-describing ONNX file (issue 4, "Export").

torch.onnx.export(dynamo=True), opset 18, one file (weights inside, no external data), the
batch dimension dynamic (dynamic_shapes), input medhash_sdk.model_card.INPUT_NAME, outputs
OUTPUT_NAMES = (code_logits (N, K) tanh values, probabilities (N, C), attention (N, h, w)).
metadata_props carry the ModelCard (nbits, preprocessing, labels, method, backbone, training
data fingerprint, split and seed, versions) and the model fingerprint
(medhash_sdk.model_card.compute_fingerprint over the state_dict's numpy arrays and the
preprocessing), so the runtime needs nothing else.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import platform
from typing import Any

import numpy as np
import torch

from medhash_sdk import __version__ as sdk_version
from medhash_sdk.atomic import atomic_path
from medhash_sdk.model_card import INPUT_NAME, OUTPUT_NAMES, ModelCard, compute_fingerprint
from medhash_sdk.preprocessing import Preprocessing

from .attention import NetConfig, build_model

OPSET = 18
MAX_BATCH = 1 << 16


def _versions() -> dict[str, str]:
    import onnx

    v = {"medhash_sdk": sdk_version, "torch": torch.__version__, "onnx": onnx.__version__,
         "python": platform.python_version(), "opset": str(OPSET)}
    try:
        import onnxscript

        v["onnxscript"] = onnxscript.__version__
    except ImportError:  # pragma: no cover - torch's exporter needs it
        pass
    return v


def model_fingerprint(model: torch.nn.Module, spec: Preprocessing, nbits: int, labels: list[str]) -> str:
    weights = [(k, v.detach().cpu().numpy()) for k, v in model.state_dict().items()]
    return compute_fingerprint(weights, spec, nbits, labels)


def describe_backbone(cfg: NetConfig) -> str:
    local = f", local branch {cfg.local}" if cfg.use_local else ", global only"
    if cfg.local_scale > 1:
        local += f" cropping the full input, branches at 1/{cfg.local_scale} of it"
    if cfg.pixel_bits:
        local += f"; {cfg.nbits} learned bits + {cfg.pixel_bits} pixel bits (SimHash of the 32 x 32 input)"
    one = f"{cfg.backbone} width {cfg.width:g}, {cfg.stem} stem{local}"
    if cfg.members > 1:
        return (f"ensemble of {cfg.members} networks ({one}; {cfg.code_bits // cfg.members} bits each), "
                "codes side by side, probabilities averaged")
    return one


def build_card(model: torch.nn.Module, spec: Preprocessing, labels: list[str], method: str,
               training: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
               scope: dict[str, list[str]] | None = None) -> ModelCard:
    cfg = model.config
    return ModelCard(nbits=cfg.code_bits, preprocessing=spec, labels=list(labels), method=method,
                     fingerprint=model_fingerprint(model, spec, cfg.code_bits, labels),
                     backbone=describe_backbone(cfg), training=dict(training or {}),
                     metrics=dict(metrics or {}), versions=_versions(), scope=dict(scope or {}))


def export_onnx(model: torch.nn.Module, spec: Preprocessing, labels: list[str], method: str, out: str | os.PathLike,
                training: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                verbose: bool = False, scope: dict[str, list[str]] | None = None) -> ModelCard:
    """Write `model` to `out` (one .onnx file) with its ModelCard in metadata_props; return the card.

    scope: the inputs the model is made for (ModelCard.scope, checked by Encoder.analyze(strict=True)).
    """
    import onnx

    if model.config.in_ch != spec.channels:
        raise ValueError(f"the network takes {model.config.in_ch} channels but the preprocessing gives {spec.channels}")
    if len(labels) != model.config.num_labels:
        raise ValueError(f"{len(labels)} label names for a network with {model.config.num_labels} outputs")
    model = model.to("cpu").float().eval()
    model.set_crop(True)           # the shipped graph always uses the attention crop
    card = build_card(model, spec, labels, method, training, metrics, scope)
    x = torch.zeros(2, spec.channels, spec.input_size, spec.input_size)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    if not verbose:   # "torchvision is not installed. Skipping torchvision::roi_align" and the like
        logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with sink, torch.no_grad():
        prog = torch.onnx.export(model, (x,), dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
                                 output_names=list(OUTPUT_NAMES), dynamic_shapes={"x": {0: batch}},
                                 external_data=False, optimize=True, verbose=False)
    proto = prog.model_proto
    del proto.metadata_props[:]
    for k, v in card.to_metadata().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "medhash_train"
    proto.doc_string = f"medhash-sdk {method} hashing model, {card.nbits} bits"
    with atomic_path(out) as tmp:   # a model file is for everyone to read: 0644 minus the umask
        onnx.save_model(proto, tmp, save_as_external_data=False)
    return card


def export_checkpoint(checkpoint: str, out: str, verbose: bool = False) -> ModelCard:
    """`medhash export CHECKPOINT --out model.onnx`."""
    from .trainer import load_checkpoint, model_from_checkpoint

    ck = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ck)
    spec = Preprocessing.from_dict(ck["preprocessing"])
    return export_onnx(model, spec, ck["labels"], ck["method"], out, training=ck.get("training"),
                       metrics=ck.get("metrics"), verbose=verbose, scope=ck.get("scope"))


def export_random(out: str, nbits: int = 64, input_size: int = 64, width: float = 0.25, seed: int = 0,
                  labels: list[str] | None = None) -> ModelCard:
    """A randomly initialised paper network, exported: for testing the runtime (never to ship:
    its card says method "attention-untrained")."""
    from medhash_sdk.datasets import NIH_LABELS, NO_FINDING

    labels = list(labels) if labels is not None else list(NIH_LABELS) + [NO_FINDING]
    torch.manual_seed(seed)
    model = build_model(NetConfig(nbits=nbits, num_labels=len(labels), width=width,
                                  stem="small" if input_size < 48 else "imagenet"))
    # one pass over noise in train mode gives BatchNorm non-trivial running statistics
    with torch.no_grad():
        model.train()
        model(torch.randn(8, 1, input_size, input_size))
    spec = Preprocessing(input_size=input_size)
    return export_onnx(model, spec, labels, "attention-untrained", out,
                       training={"note": "random initialisation, untrained: for tests only", "seed": seed})


def onnx_outputs(path: str, x: np.ndarray) -> list[np.ndarray]:
    """Run an exported model on preprocessed inputs with ONNX Runtime (CPU)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})


def _main(argv: list[str] | None = None) -> int:
    """python -m medhash_train.onnx_export --random OUT.onnx [--bits 64 --input-size 64 --width 0.25]
    writes an untrained model for runtime tests; CHECKPOINT --out OUT.onnx exports a trained one."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m medhash_train.onnx_export")
    p.add_argument("checkpoint", nargs="?")
    p.add_argument("--out", required=True)
    p.add_argument("--random", action="store_true", help="export a randomly initialised network (tests only)")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.random:
        card = export_random(a.out, a.bits, a.input_size, a.width, a.seed)
    elif a.checkpoint:
        card = export_checkpoint(a.checkpoint, a.out)
    else:
        p.error("give a CHECKPOINT or --random")
    print(f"wrote {a.out}: {card.method}, {card.nbits} bits, fingerprint {card.fingerprint[:16]}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
