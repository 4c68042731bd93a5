"""Instance-contrastive learning: the NT-Xent loss between two augmented views of each image,
the projection head it is computed on, and SimCLR pretraining of a backbone on unlabelled
radiographs (docs/model.md, "Recipe").

Why: labels of 14 noisy findings say little about how two radiographs look, and raw pixels
already rank an unseen archive above chance (docs/model.md, tables). A term that asks the
network to recognise each image among the others in its batch, across two augmentations,
keeps that appearance information in the features the codes are made from; the label losses
(hash pair loss + classification) then shape it.

NT-Xent (Chen et al., SimCLR, ICML 2020): for 2B normalised embeddings z (view 1 rows 0..B-1,
view 2 rows B..2B-1), loss = mean over rows i of -log( exp(z_i.z_p(i)/t) / sum_{j != i}
exp(z_i.z_j/t) ), p(i) the other view of the same image.

Where the term is applied (TrainConfig.contrastive_on):
  "codes":    z = the tanh code logits u themselves: the codes must tell images apart;
  "features": z = a 2-layer MLP projection (discarded after training) of the pooled backbone
              features the hash layer reads, as in SimCLR.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CONTRASTIVE_ON = ("codes", "features")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """NT-Xent over the pair of views (B, D) and (B, D); rows are L2-normalised here."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"views must be two (B, D) tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], 0).float(), dim=1, eps=1e-6)
    sim = (z @ z.t()) / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


class ProjectionHead(nn.Module):
    """SimCLR's projection: Linear -> BN -> ReLU -> Linear (training only, never exported)."""

    def __init__(self, in_dim: int, hidden: int = 256, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def strong_augment(x: torch.Tensor, gen: torch.Generator, min_area: float = 0.35, noise: float = 0.1) -> torch.Tensor:
    """The views of SimCLR pretraining: a random resized crop (area min_area-100%, aspect
    3/4-4/3), rotation +-10 deg, brightness/contrast jitter and gamma, Gaussian noise (standard
    deviation up to `noise`). No flips (a chest film has a left and a right)."""
    b = x.shape[0]
    r = torch.rand(b, 8, device=x.device, generator=gen, dtype=torch.float32)
    area = min_area + (1.0 - min_area) * r[:, 0]
    aspect = torch.exp((r[:, 1] - 0.5) * 2 * math.log(4 / 3))
    sx = torch.sqrt(area * aspect).clamp(max=1.0)
    sy = torch.sqrt(area / aspect).clamp(max=1.0)
    tx = (r[:, 2] * 2 - 1) * (1 - sx)
    ty = (r[:, 3] * 2 - 1) * (1 - sy)
    ang = (r[:, 4] - 0.5) * (2 * math.radians(10.0))
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([torch.stack([cos * sx, -sin * sy, tx], 1), torch.stack([sin * sx, cos * sy, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = (0.7 + 0.6 * r[:, 5]).view(b, 1, 1, 1).to(x.dtype)
    bright = ((r[:, 6] - 0.5) * 0.6).view(b, 1, 1, 1).to(x.dtype)
    jitter = torch.randn(x.shape, device=x.device, generator=gen, dtype=x.dtype) * (noise * r[:, 7]).view(b, 1, 1, 1)
    return x * contrast + bright + jitter


# ----------------------------------------------------------------------------------- pretraining
@dataclass
class PretrainConfig:
    """SimCLR pretraining of a backbone (what `medhash train --pretrain-data` runs first)."""

    input_size: int = 64
    backbone: str = "resnet18"
    width: float = 0.5
    stem: str = "imagenet"
    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 4:
            raise ValueError(f"pretraining needs epochs >= 1 and batch_size >= 4, got {self.epochs}, {self.batch_size}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def load_unlabelled(paths: Sequence[str], exclude_split: str | None = "test") -> tuple[list[np.ndarray], list[str]]:
    """Images of .npz files for self-supervised pretraining: the `images` array (or MedMNIST's
    train/val arrays), labels ignored. Rows whose `split` equals `exclude_split` are left out
    (Kermany's test split is PneumoniaMNIST's test). Returns (images, one note per file)."""
    images: list[np.ndarray] = []
    notes = []
    for p in paths:
        with np.load(p, allow_pickle=False) as z:
            keys = set(z.files)
            if "images" in keys:
                a = z["images"]
                keep = np.ones(len(a), dtype=bool)
                if exclude_split and "split" in keys:
                    keep = np.asarray(z["split"]).astype(str) != exclude_split
                images += list(a[keep])
                notes.append(f"{os.path.basename(p)}: {int(keep.sum())} of {len(a)} images"
                             + (f" (split {exclude_split!r} left out)" if (~keep).any() else ""))
            elif "train_images" in keys:
                parts = [s for s in ("train", "val", "test") if s != exclude_split and f"{s}_images" in keys]
                for s in parts:
                    images += list(z[f"{s}_images"])
                notes.append(f"{os.path.basename(p)}: splits {parts}")
            else:
                raise ValueError(f"{p}: no `images` array (or MedMNIST train_images) to pretrain on")
    return images, notes


def simclr_pretrain(x: np.ndarray, cfg: PretrainConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Pretrain a backbone with NT-Xent on preprocessed images x (n, C, S, S); returns
    {"state_dict": backbone weights, "config", "history", "seconds", "images"}."""
    from .backbones import build_backbone

    log = log or (lambda s: print(s, file=sys.stderr))
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    dev = torch.device(cfg.device)
    net = build_backbone(cfg.backbone, x.shape[1], cfg.width, cfg.stem).to(dev)
    head = ProjectionHead(net.channels[2]).to(dev)
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev)
    steps = len(xt) // cfg.batch_size
    if steps < 1:
        raise ValueError(f"{len(xt)} images are fewer than one pretraining batch ({cfg.batch_size})")
    total = steps * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / steps) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    history = []
    for epoch in range(cfg.epochs):
        net.train()
        head.train()
        perm = torch.randperm(len(xt), device=dev, generator=gen)
        run = 0.0
        for s in range(steps):
            xb = xt[perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]]
            z = head(net(torch.cat([strong_augment(xb, gen), strong_augment(xb, gen)]))[2].mean((2, 3)))
            loss = nt_xent(z[:len(xb)], z[len(xb):], cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run += float(loss.detach())
        history.append({"epoch": epoch + 1, "loss": run / steps})
        if cfg.progress:
            log(f"pretrain epoch {epoch + 1}/{cfg.epochs}: NT-Xent {run / steps:.4f} ({time.time() - t0:.0f} s)")
    return {"state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "config": asdict(cfg),
            "history": history, "seconds": time.time() - t0, "images": int(len(xt))}


def pretrained_backbone(data: Sequence[str], cfg: PretrainConfig, cache_dir: str | None,
                        log: Callable[[str], None] | None = None,
                        extra: Sequence[np.ndarray] = ()) -> str:
    """Path of a backbone state_dict pretrained with SimCLR on the images of `data` (.npz files,
    their "test" split left out; load_unlabelled) plus the images `extra` (e.g. the training
    split's own radiographs, labels unused). With cache_dir the file is named by a hash of the
    files' names and sizes, the extra images' pixels and the config, and reused when it exists;
    it holds the pretraining record beside the weights (torch.load(weights_only=True) reads both)."""
    import hashlib
    import json

    from medhash_sdk.preprocessing import Preprocessing, preprocess_batch

    log = log or (lambda s: print(s, file=sys.stderr))
    pixels = hashlib.sha256()
    for a in extra:
        a = np.ascontiguousarray(a)
        pixels.update(repr((a.shape, a.dtype.str)).encode())
        pixels.update(a.tobytes())
    described: dict[str, Any] = {"data": [(os.path.basename(p), os.path.getsize(p)) for p in data],
                                 "config": {k: v for k, v in asdict(cfg).items() if k != "progress"}}
    if len(extra):
        described["extra"] = [len(extra), pixels.hexdigest()]
    key = json.dumps(described, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    folder = cache_dir or "."
    path = os.path.join(folder, f"simclr-{digest}.pt")
    if cache_dir and os.path.exists(path):
        log(f"pretrained backbone from the cache: {path}")
        return path
    images, notes = load_unlabelled(data)
    if len(extra):
        images += list(extra)
        notes.append(f"{len(extra)} images of the training split")
    log(f"SimCLR pretraining on {len(images)} images ({'; '.join(notes)}), {cfg.epochs} epochs")
    x = preprocess_batch(images, Preprocessing(cfg.input_size))
    res = simclr_pretrain(x, cfg, log)
    os.makedirs(folder, exist_ok=True)
    torch.save({"state_dict": res["state_dict"], "record": json.dumps({k: v for k, v in res.items() if k != "state_dict"}
                                                                      | {"data": notes})}, path + ".tmp")
    os.replace(path + ".tmp", path)
    log(f"pretrained backbone written to {path} ({res['seconds']:.0f} s)")
    return path
