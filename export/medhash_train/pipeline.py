"""What `medhash train` does, as a function the benchmark calls too (one code path)."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from typing import Any, Callable, Sequence

from medhash_sdk.atomic import atomic_write
from medhash_sdk.datasets import load_dataset

from .onnx_export import export_onnx
from .trainer import TrainConfig, checkpoint_dict, save_checkpoint, train

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.onnx"
LOG_NAME = "train_log.json"


def train_and_export(cfg: TrainConfig, data: Sequence[str], out_dir: str, split_seed: int = 0,
                     fractions: Sequence[float] = (0.7, 0.1, 0.2),
                     log: Callable[[str], None] | None = None,
                     scope: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Train on data's train split (epoch chosen on val), write checkpoint, ONNX model and log.

    scope: the inputs the model is made for, written into its card (ModelCard.scope)."""
    log = log or (lambda s: print(s, file=sys.stderr))
    ds = load_dataset(list(data), split_seed=split_seed, fractions=fractions)
    c = ds.info["split"]["counts"]
    log(f"data: {len(ds)} images, {len(ds.label_names)} labels; split {ds.info['split']['rule']}: "
        f"train {c['train']}, val {c['val']}, test {c['test']} (test not used for training or selection)")
    result = train(cfg, ds, log=log)
    os.makedirs(out_dir, exist_ok=True)
    ck = checkpoint_dict(result, cfg, ds)
    ck["scope"] = dict(scope or {})
    ck_path = os.path.join(out_dir, CHECKPOINT_NAME)
    save_checkpoint(ck_path, ck)
    model_path = os.path.join(out_dir, MODEL_NAME)
    card = export_onnx(result.model, result.preprocessing, result.labels, cfg.method, model_path,
                       training=ck["training"], scope=scope)
    summary = {"checkpoint": ck_path, "model": model_path, "fingerprint": card.fingerprint,
               "chosen_epoch": result.best_epoch, "val": result.best_val, "seconds": result.seconds,
               "config": asdict(cfg), "history": result.history, "split": ds.info["split"]}
    atomic_write(os.path.join(out_dir, LOG_NAME), json.dumps(summary, indent=2, default=str).encode())
    log(f"wrote {ck_path} and {model_path} (fingerprint {card.fingerprint[:16]})")
    return summary
