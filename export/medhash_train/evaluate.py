"""Codes and crop statistics of a torch model, for training-time validation and the benchmark.

The figures themselves (mAP@K, NDCG@K over a query/database split) are the runtime's
(medhash_sdk.evaluation, numpy), so a torch model and its exported file are scored alike.
"""
from __future__ import annotations

import numpy as np
import torch

from medhash_sdk.codes import pack_codes


@torch.no_grad()
def torch_outputs(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Code logits (n, K) and probabilities (n, C) as float32 numpy, model in eval mode."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    us, ps = [], []
    for s in range(0, x.shape[0], batch_size):
        xb = x[s:s + batch_size].to(dev, non_blocking=True)
        xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            u, p, _ = model(xb)
        us.append(u.float().cpu())
        ps.append(p.float().cpu())
    model.train(was_training)
    return torch.cat(us).numpy(), torch.cat(ps).numpy()


def crop_statistics(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> dict[str, float]:
    """How much the attention crop zooms: the boxes' area as a fraction of the image (mean,
    median), the share of images cropped to the whole image (no zoom) and to the minimum box."""
    cfg = model.config
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    boxes = []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            boxes.append(model.boxes(x[s:s + batch_size].to(dev)).float().cpu())
    model.train(was_training)
    b = torch.cat(boxes).numpy()
    area = b[:, 0] * b[:, 2]
    return {"mean_area": float(area.mean()), "median_area": float(np.median(area)),
            "whole_image": float((area > 0.999).mean()),
            "min_box": float(((b[:, 0] <= cfg.min_box + 1e-3) & (b[:, 2] <= cfg.min_box + 1e-3)).mean())}


def torch_codes(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    return pack_codes(torch_outputs(model, x, batch_size)[0])
