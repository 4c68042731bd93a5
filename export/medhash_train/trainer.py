"""ONE training loop for every method (the paper's, its ablations and the baselines).

The whole split lives in memory as one preprocessed tensor on the training device (the
images are small); batches are index slices, augmentation is a batched random affine warp +
brightness/contrast jitter on the device (no horizontal flips: a chest film has a left and a
right). Loss = hash loss (losses.METHODS[method]) + mu * class-weighted BCE of the
classification branch [+ contrastive * NT-Xent between two augmented views of each image,
medhash_train.contrastive; the other losses then see both views]. AdamW, cosine learning
rate. Batches are uniform over the training images, or class-balanced (`balanced`: each
image drawn with probability proportional to the mean of 1/count over its labels).

Epoch: with a validation split, after every epoch (once the warm-up is over for networks with
the crop) the validation split is encoded as queries against the train split and the epoch
with the best validation mAP@K is kept; without one (e.g. --split-fractions 0.8,0,0.2, or a
cross-validation fold) the last epoch is kept, so the number of epochs is part of the recipe
(chosen by patient-grouped cross-validation: benchmarks/model_selection.py). The test split is
never looked at here.
"""
from __future__ import annotations

import copy
import functools
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from medhash_sdk.atomic import atomic_path
from medhash_sdk.datasets import ImageSet, to_network_input
from medhash_sdk.evaluation import code_figures
from medhash_sdk.preprocessing import Preprocessing

from .attention import AttentionHashNet, NetConfig, build_model, standardised_pixels
from .contrastive import CONTRASTIVE_ON, ProjectionHead, nt_xent, strong_augment
from .ensemble import EnsembleHashNet, relational_distillation
from .evaluate import torch_codes
from .losses import METHODS, make_loss

CHECKPOINT_FORMAT = "medhash-train/1"


@dataclass
class TrainConfig:
    method: str = "attention"
    nbits: int = 64
    input_size: int = 64
    channels: int = 1
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    backbone: str = "resnet18"
    width: float = 0.5
    stem: str = "auto"               # auto: "small" below 48 px, else "imagenet"
    warmup_epochs: int = -1          # crop off for these first epochs; -1: epochs // 4
    seed: int = 0
    device: str = "cpu"
    augment: bool = True
    val_k: int = 100
    backbone_weights: str | None = None
    progress: bool = True
    loss_args: dict[str, float] = field(default_factory=dict)   # overrides of the loss's constants
    mu: float = -1.0                 # classification loss weight; -1: the method's default
    local_scale: int = 1             # input_size / local_scale = what each branch sees (attention nets)
    box: str = "extent"              # crop box rule of the attention nets (attention.BOX_RULES)
    box_jitter: float = 0.0          # training-time box edge jitter, in CAM cells (attention nets)
    min_evidence: float = 0.0        # crop blended to the whole image below this CAM evidence (attention nets)
    contrastive: float = 0.0         # weight of the NT-Xent term between two views (0: off, one view)
    contrastive_on: str = "codes"    # "codes": NT-Xent on the code logits; "features": on a projection head
    temperature: float = 0.2         # NT-Xent temperature
    balanced: bool = False           # class-balanced batches instead of uniform ones
    pixel_bits: int = 0              # appended SimHash bits of the 32 x 32 input (attention.NetConfig)
    pretrain_data: tuple[str, ...] = ()   # .npz files for SimCLR pretraining of the backbone first
    pretrain_epochs: int = 0         # > 0: pretrain (medhash_train.contrastive) unless backbone_weights is set
    pretrain_cache: str | None = None     # folder where pretrained backbones are kept and reused
    pretrain_on_train: bool = False  # pretraining also sees the train split's own images (labels unused)
    freeze_backbone_epochs: int = 0  # first epochs train the heads only (LP-FT: keeps pretrained features)
    views: str = "light"             # the two views: "light" (augment), "strong" (SimCLR's crops, gamma, noise),
                                     # "mixed" (one of each; the classifier learns from the light one only),
                                     # "mild" (as mixed, the strong view cropping >= 70% and less noise),
                                     # "mild-nt" (as mild, and the pair loss too sees the light view only),
                                     # "mild-nt-soft" (as mild-nt, half of each view's images softened: soften())
    recipe: str | None = None        # the medhash_train.recipes name it started from (recorded only)
    ema: float = 0.0                 # > 0: keep (and return) an exponential moving average of the weights, this decay per step
    members: int = 1                 # > 1: train that many networks (seeds seed * members + i) and ship them as one
                                     # (medhash_train.ensemble: codes side by side, probabilities averaged)
    distill: float = 0.0             # > 0: first train an ensemble of distill_members networks of this recipe, then
                                     # this one network learns its ranking and probabilities too (this weight)
    distill_members: int = 2
    pixel_distill: float = 0.0       # > 0: the codes also learn the raw-pixel reference's ranking of each batch
                                     # (relational distillation from standardised 32 x 32 pixels, this weight)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {sorted(METHODS)}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (the losses use pairs), got {self.batch_size}")
        if self.nbits <= 0 or self.nbits % 8:
            raise ValueError(f"nbits must be a positive multiple of 8, got {self.nbits}")
        if self.local_scale < 1 or self.input_size % self.local_scale:
            raise ValueError(f"local_scale must be >= 1 and divide input_size ({self.input_size}), got {self.local_scale}")
        if self.local_scale > 1 and not METHODS[self.method].get("use_local"):
            raise ValueError(f"local_scale > 1 needs a method with the attention crop, not {self.method!r}")
        if self.box_jitter < 0:
            raise ValueError(f"box_jitter is a number of attention-map cells >= 0, got {self.box_jitter}")
        if (self.box_jitter > 0 or self.min_evidence > 0) and not METHODS[self.method].get("use_local"):
            raise ValueError(f"box_jitter / min_evidence need a method with the attention crop, not {self.method!r}")
        if not 0.0 <= self.min_evidence <= 1.0:
            raise ValueError(f"min_evidence is a fraction in [0, 1], got {self.min_evidence}")
        if self.contrastive < 0:
            raise ValueError(f"contrastive is a loss weight >= 0, got {self.contrastive}")
        if self.contrastive_on not in CONTRASTIVE_ON:
            raise ValueError(f"contrastive_on must be one of {CONTRASTIVE_ON}, got {self.contrastive_on!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema is a per-step decay in [0, 1), e.g. 0.99; got {self.ema}")
        if not 0 <= self.freeze_backbone_epochs < self.epochs:
            raise ValueError(f"freeze_backbone_epochs must be in [0, epochs = {self.epochs}), got {self.freeze_backbone_epochs}")
        if self.views not in VIEWS:
            raise ValueError(f"views must be one of {tuple(VIEWS)}, got {self.views!r}")
        if self.views != "light" and self.contrastive <= 0:
            raise ValueError(f"views={self.views!r} changes the two contrastive views: set contrastive > 0")
        if self.pretrain_on_train and self.pretrain_epochs <= 0:
            raise ValueError("pretrain_on_train needs pretraining: set pretrain_epochs > 0 (and pretrain_data)")
        if not isinstance(self.members, int) or self.members < 1:
            raise ValueError(f"members must be an integer >= 1, got {self.members!r}")
        if self.distill < 0:
            raise ValueError(f"distill is a loss weight >= 0, got {self.distill}")
        if self.distill > 0 and self.members > 1:
            raise ValueError("distill trains one network from an ensemble: set members=1 (distill_members sets the teacher)")
        if self.distill > 0 and self.distill_members < 2:
            raise ValueError(f"distill_members (the teacher ensemble's size) must be >= 2, got {self.distill_members}")
        if self.pixel_distill < 0:
            raise ValueError(f"pixel_distill is a loss weight >= 0, got {self.pixel_distill}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")

    @property
    def resolved_stem(self) -> str:
        return ("small" if self.input_size // self.local_scale < 48 else "imagenet") if self.stem == "auto" else self.stem

    @property
    def resolved_warmup(self) -> int:
        if not METHODS[self.method].get("use_local"):
            return 0
        return self.epochs // 4 if self.warmup_epochs < 0 else min(self.warmup_epochs, self.epochs - 1)


@dataclass
class TrainResult:
    model: torch.nn.Module           # an AttentionHashNet, or an EnsembleHashNet of them
    net_config: NetConfig
    preprocessing: Preprocessing
    labels: list[str]
    best_epoch: int
    best_val: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def net_config_for(cfg: TrainConfig, num_labels: int) -> NetConfig:
    m = METHODS[cfg.method]
    return NetConfig(nbits=cfg.nbits, num_labels=num_labels, in_ch=cfg.channels, backbone=cfg.backbone,
                     width=cfg.width, stem=cfg.resolved_stem, use_local=bool(m.get("use_local")),
                     detach_cls=bool(m.get("detach_cls", False)), local_scale=cfg.local_scale,
                     box=cfg.box, box_jitter=cfg.box_jitter, min_evidence=cfg.min_evidence,
                     pixel_bits=cfg.pixel_bits, members=cfg.members)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random affine (scale 0.9-1.1, rotation +-7 deg, shift +-6%) + brightness/contrast jitter."""
    b = x.shape[0]
    r = torch.rand(b, 6, device=x.device, generator=gen, dtype=torch.float32)
    scale = 0.9 + 0.2 * r[:, 0]
    ang = (r[:, 1] - 0.5) * (2 * math.radians(7.0))
    tx, ty = (r[:, 2] - 0.5) * 0.12, (r[:, 3] - 0.5) * 0.12
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = (0.85 + 0.3 * r[:, 4]).view(b, 1, 1, 1).to(x.dtype)
    bright = ((r[:, 5] - 0.5) * 0.4).view(b, 1, 1, 1).to(x.dtype)
    return x * contrast + bright


_MILD = functools.partial(strong_augment, min_area=0.7, noise=0.05)


def soften(x: torch.Tensor, gen: torch.Generator, p: float = 0.5, max_factor: float = 2.5) -> torch.Tensor:
    """A share p of the images resampled through a lower resolution (one factor 1.5-max_factor
    a batch: area down, bilinear up). The NIH collections differ in sharpness (nih1000_64 was
    made small upstream and is soft, nih_extra_128 is sharp), and a network that reads the
    source from sharpness does not carry over between them."""
    b, _, h, w = x.shape
    r = torch.rand(b + 1, device=x.device, generator=gen, dtype=torch.float32)
    f = 1.5 + (max_factor - 1.5) * float(r[-1])
    small = F.interpolate(x, size=(max(4, round(h / f)), max(4, round(w / f))), mode="area")
    soft = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    keep = (r[:b] >= p).view(b, 1, 1, 1).to(x.dtype)
    return x * keep + soft * (1 - keep)


def _softened(view: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    return lambda x, gen: view(soften(x, gen), gen)

# TrainConfig.views: (first view, second view, does the classifier see both?, does the pair loss?)
VIEWS: dict[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor], bool, bool]] = {
    "light": (augment, augment, True, True),
    "strong": (strong_augment, strong_augment, True, True),
    "mixed": (augment, strong_augment, False, True),
    "mild": (augment, _MILD, False, True),
    "mild-nt": (augment, _MILD, False, False),
    "mild-nt-soft": (_softened(augment), _softened(_MILD), False, False),
}


def _cls_pos_weight(y: np.ndarray) -> torch.Tensor:
    pos = y.sum(0).astype(np.float64)
    w = (len(y) - pos) / np.maximum(pos, 1.0)
    return torch.tensor(np.clip(w, 1.0, 10.0), dtype=torch.float32)


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """Sampling weight of each image for class-balanced batches: the mean of 1/count over its
    labels (every label column, "No Finding" included, then draws about equally often)."""
    y = np.asarray(y, dtype=np.float64)
    counts = y.sum(0)
    inv = np.where(counts > 0, 1.0 / np.maximum(counts, 1.0), 0.0)
    n_lab = y.sum(1)
    w = (y @ inv) / np.maximum(n_lab, 1.0)
    return np.where(n_lab > 0, w, inv[inv > 0].mean() if (inv > 0).any() else 1.0)


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def train(cfg: TrainConfig, ds: ImageSet, log: Callable[[str], None] | None = None,
          x_all: np.ndarray | None = None,
          on_epoch: Callable[[int, AttentionHashNet], dict[str, Any] | None] | None = None) -> TrainResult:
    """Train cfg.method on ds's train split, choose the epoch on its val split (never test);
    without a val split keep the last epoch.

    x_all: the preprocessed (n, C, S, S) inputs of every image of ds, if already computed.
    on_epoch(epoch, model): called after each epoch (model in train mode; put it back if you
    change that); a returned dict is recorded in that epoch's history entry.
    """
    log = log or (lambda s: print(s, file=sys.stderr))
    spec = Preprocessing(input_size=cfg.input_size, channels=cfg.channels)
    if x_all is None:        # once, for this network and any members or teacher it trains
        x_all = to_network_input(ds, spec)
    if cfg.members > 1:
        return _train_ensemble(cfg, ds, log, x_all, on_epoch)
    t0 = time.time()
    teacher = None
    if cfg.distill > 0:      # the ensemble this network learns from: same recipe, same data, seeds as for members
        teacher = train(replace(cfg, members=cfg.distill_members, distill=0.0), ds,
                        lambda m: log(f"teacher {m}"), x_all).model.to(cfg.device).eval()
    _seed_all(cfg.seed)
    dev = torch.device(cfg.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for but torch sees no CUDA GPU; use --device cpu")
    tr, va = ds.indices("train"), ds.indices("val")
    if len(tr) < cfg.batch_size:
        raise ValueError(f"the train split has {len(tr)} images, fewer than one batch ({cfg.batch_size})")
    cl = torch.channels_last     # NHWC: ~1.9x faster training steps on the CPU too (oneDNN), same values
    x_tr = torch.from_numpy(x_all[tr]).to(dev).contiguous(memory_format=cl)
    y_tr = torch.from_numpy(ds.labels[tr].astype(np.float32)).to(dev)
    x_va = torch.from_numpy(x_all[va]) if len(va) else None

    net_cfg = net_config_for(cfg, len(ds.label_names))
    weights = cfg.backbone_weights
    if weights is None and cfg.pretrain_epochs > 0:
        from .contrastive import PretrainConfig, pretrained_backbone

        if not cfg.pretrain_data:
            raise ValueError("pretrain_epochs > 0 needs pretrain_data (.npz files of radiographs)")
        pc = PretrainConfig(input_size=cfg.input_size, backbone=cfg.backbone, width=cfg.width, stem=net_cfg.stem,
                            epochs=cfg.pretrain_epochs, seed=cfg.seed, device=cfg.device, progress=cfg.progress)
        weights = pretrained_backbone(list(cfg.pretrain_data), pc, cfg.pretrain_cache, log,
                                      extra=[ds.images[i] for i in tr] if cfg.pretrain_on_train else ())
        _seed_all(cfg.seed)          # the hashing stage starts from the same RNG state as without pretraining
    model = build_model(net_cfg, weights).to(dev).to(memory_format=cl)
    loss_fn = make_loss(cfg.method, cfg.nbits, len(ds.label_names), **cfg.loss_args).to(dev)
    mu = float(METHODS[cfg.method].get("mu", 1.0)) if cfg.mu < 0 else float(cfg.mu)
    pos_weight = _cls_pos_weight(ds.labels[tr]).to(dev)
    params = list(model.parameters())
    head = None
    if cfg.contrastive > 0 and cfg.contrastive_on == "features":
        head = ProjectionHead(model.hash.in_features).to(dev)
        params += list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sample_w = torch.from_numpy(balanced_weights(ds.labels[tr])).to(dev) if cfg.balanced else None
    steps_per_epoch = len(tr) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, steps_per_epoch)) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    warm = cfg.resolved_warmup
    first_view, second_view, classify_both, pairs_both = VIEWS[cfg.views]
    # The weight average (if any) is what is validated, reported and returned: the raw weights only train.
    ema = None
    if cfg.ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    scored = model if ema is None else ema.module
    amp = dev.type == "cuda"

    best: dict[str, Any] = {"epoch": -1, "score": -1.0, "state": None, "val": {}}
    history: list[dict[str, Any]] = []
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs, desc=f"train {cfg.method} {cfg.nbits}b", unit="epoch", file=sys.stderr)
    for epoch in range(cfg.epochs):
        model.train()
        model.set_crop(epoch >= warm)
        for p in model.backbone.parameters():      # frozen: no gradient, so AdamW leaves it alone
            p.requires_grad_(epoch >= cfg.freeze_backbone_epochs)
        if head is not None:
            head.train()
        if sample_w is None:
            perm = torch.randperm(len(tr), device=dev, generator=gen)
        else:
            perm = torch.multinomial(sample_w, steps_per_epoch * cfg.batch_size, replacement=True, generator=gen)
        run_loss = torch.zeros((), device=dev)
        for s in range(steps_per_epoch):
            idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            xb, yb = x_tr[idx], y_tr[idx]
            two = cfg.contrastive > 0
            if two:      # two views of each image (TrainConfig.views says which losses see the second)
                xb = torch.cat([first_view(xb, gen), second_view(xb, gen)] if cfg.augment else [xb, xb])
                yb = torch.cat([yb, yb])
            elif cfg.augment:
                xb = augment(xb, gen)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                u, _, _, logits, feat = model.forward_features(xb)
            paired = len(yb) if pairs_both else len(idx)
            loss = loss_fn(u[:paired].float(), yb[:paired])
            if mu > 0:
                seen = len(yb) if classify_both else len(idx)
                loss = loss + mu * F.binary_cross_entropy_with_logits(logits[:seen].float(), yb[:seen],
                                                                      pos_weight=pos_weight)
            if two:
                z = u.float() if head is None else head(feat.float())
                loss = loss + cfg.contrastive * nt_xent(z[:len(idx)], z[len(idx):], cfg.temperature)
            if teacher is not None:   # on the first (light) view: the ensemble's neighbours and probabilities
                with torch.no_grad():
                    tu, tp, _ = teacher(xb[:len(idx)])
                loss = loss + cfg.distill * (relational_distillation(u[:len(idx)], tu)
                                             + F.binary_cross_entropy_with_logits(logits[:len(idx)].float(), tp.float()))
            if cfg.pixel_distill > 0:   # on the first view: who is near whom by the raw pixels
                loss = loss + cfg.pixel_distill * relational_distillation(u[:len(idx)], standardised_pixels(xb[:len(idx)]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            run_loss += loss.detach()
        rec: dict[str, Any] = {"epoch": epoch + 1, "loss": float(run_loss) / max(1, steps_per_epoch),
                               "crop": bool(epoch >= warm) if net_cfg.use_local else None}
        if x_va is not None and epoch >= warm:
            scored.set_crop(True)
            db = torch_codes(scored, x_tr if dev.type == "cuda" else torch.from_numpy(x_all[tr]))
            q = torch_codes(scored, x_va)
            fig = code_figures(q, db, ds.labels[va], ds.labels[tr], k=cfg.val_k, seeds=(0,))
            rec["val_map"] = fig[f"map@{cfg.val_k}"]
            if rec["val_map"] > best["score"]:
                best = {"epoch": epoch + 1, "score": rec["val_map"], "val": fig,
                        "state": copy.deepcopy({k: v.detach().cpu() for k, v in scored.state_dict().items()})}
        if on_epoch is not None:
            extra = on_epoch(epoch + 1, scored)
            if extra:
                rec.update(extra)
        history.append(rec)
        if bar is not None:
            bar.set_postfix(loss=f"{rec['loss']:.3f}", val_map=f"{rec.get('val_map', float('nan')):.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    if best["state"] is None:   # no validation split: keep the last epoch
        best = {"epoch": cfg.epochs, "score": float("nan"), "val": {},
                "state": {k: v.detach().cpu() for k, v in scored.state_dict().items()}}
        log(f"no validation split: keeping the last epoch ({cfg.epochs})")
    else:
        log(f"chose epoch {best['epoch']} of {cfg.epochs} on the validation split "
            f"(val mAP@{cfg.val_k} = {best['score']:.4f}, {len(va)} val queries vs {len(tr)} train images)")
    model.load_state_dict(best["state"])
    model.set_crop(True)
    model.eval()
    return TrainResult(model, net_cfg, spec, list(ds.label_names), best["epoch"], best["val"], history,
                       time.time() - t0)


def member_seeds(cfg: TrainConfig) -> list[int]:
    """The seeds of an ensemble's members: seed * members + i, so the ensembles of two seeds
    share no member (and member 0 of seed s trains exactly as the single network of that seed)."""
    return [cfg.seed * cfg.members + i for i in range(cfg.members)]


def _train_ensemble(cfg: TrainConfig, ds: ImageSet, log: Callable[[str], None], x_all: np.ndarray,
                    on_epoch: Callable[[int, AttentionHashNet], dict[str, Any] | None] | None) -> TrainResult:
    """Train cfg.members networks, one after the other, each exactly as train() trains one
    (its own seed, pretraining included), and join them (medhash_train.ensemble)."""
    t0 = time.time()
    results = []
    for i, seed in enumerate(member_seeds(cfg)):
        def member_log(m: str, i: int = i) -> None:
            log(f"member {i + 1}/{cfg.members}: {m}")

        results.append(train(replace(cfg, members=1, seed=seed), ds, member_log, x_all, on_epoch))
    net_cfg = net_config_for(cfg, len(ds.label_names))
    model = EnsembleHashNet(net_cfg, [r.model for r in results]).eval()
    history = [dict(h, member=i) for i, r in enumerate(results) for h in r.history]
    return TrainResult(model, net_cfg, results[0].preprocessing, results[0].labels,
                       max(r.best_epoch for r in results), {}, history, time.time() - t0)


def _portable(config: dict[str, Any]) -> dict[str, Any]:
    """The config with file names instead of local paths (a shipped model names no local folder)."""
    c = dict(config)
    if c.get("backbone_weights"):
        c["backbone_weights"] = os.path.basename(str(c["backbone_weights"]))
    c["pretrain_data"] = [os.path.basename(str(p)) for p in c.get("pretrain_data") or ()]
    c["pretrain_cache"] = None
    return c


def checkpoint_dict(result: TrainResult, cfg: TrainConfig, ds: ImageSet) -> dict[str, Any]:
    """Everything `medhash export` needs, as plain types + tensors (torch.load(weights_only=True))."""
    training = {
        "data_fingerprint": ds.info.get("fingerprint", ""),
        "data_sources": [os.path.basename(str(s)) for s in ds.info.get("sources", [])],  # names only: no local paths in a shipped model
        "split": ds.info.get("split", {}),
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "chosen_epoch": result.best_epoch,
        "selection": f"best val mAP@{cfg.val_k}",
        "val": {k: float(v) for k, v in result.best_val.items()},
        "config": _portable(asdict(cfg)),
        "color": "converted to grayscale" if cfg.channels == 1 else "kept as RGB",
    }
    return {
        "format": CHECKPOINT_FORMAT,
        "net_config": result.net_config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
        "preprocessing": result.preprocessing.to_dict(),
        "labels": list(result.labels),
        "method": cfg.method,
        "nbits": result.net_config.code_bits,
        "training": training,
        "history": result.history,
    }


def save_checkpoint(path: str, ckpt: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path: str) -> dict[str, Any]:
    from medhash_sdk.exceptions import ModelFileError

    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise ModelFileError(f"{path}: cannot read checkpoint ({e})") from e
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path}: not a medhash training checkpoint (format {CHECKPOINT_FORMAT})")
    return ck


def model_from_checkpoint(ck: dict[str, Any]) -> torch.nn.Module:
    model = build_model(ck["net_config"])
    model.load_state_dict(ck["state_dict"])
    model.set_crop(True)
    return model.eval()
