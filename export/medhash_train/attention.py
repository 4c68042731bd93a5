"""The paper's attention-guided hashing network (docs/method.md), exportable whole to ONNX.

forward(x) -> (code_logits u in (-1,1)^K, class probabilities (N, C), attention (N, h, w)).

Our decisions where the paper is silent (summarised in docs/method.md):
- CAM level: a light feature pyramid over the backbone's stride-8/16/32 maps (1x1 convs,
  bilinear upsampling to the stride-8 grid, sum, BN, ReLU) feeds the classification branch
  (GAP -> linear -> sigmoid). With GAP + linear, Grad-CAM equals the CAM
  A = ReLU(sum_c p_c * w_c . F) (up to scale), so the CAM is forward-only and sits on a
  stride-8 grid (8 x 8 at 64 px) while still carrying the deep layers' semantics.
- A is min-max normalised per image to [0, 1] (an all-zero map stays 0); that is the
  `attention` output, at the CAM grid's resolution (upsample it to the image to display it).
- Otsu over OTSU_BINS=32 fixed bins, written with tensor ops (histogram by comparison with
  the bin indices, cumulative sums, argmax of the between-class variance; ties -> lowest bin).
- Box: rows/columns holding a mask pixel; minimum side `min_box` (fraction of the image,
  default 0.4, centred on the box and kept inside the image); an empty mask (a flat CAM)
  falls back to the whole image. No gradient flows through the box coordinates.
  box="moments" (an option) takes the box from the mean and spread of the CAM mass above the
  threshold instead: continuous in the map, it zoomed more and scored lower on validation.
  box_jitter (training only, in CAM cells) moves the box edges at random, so the codes survive
  a cell crossing the threshold between two copies of one image (1024 px file vs 256 px copy).
  min_evidence m (option): the CAM's positive peak over the largest magnitude of the signed map
  (before the ReLU) is its evidence r; the crop is blended with the whole image by min(1, r/m).
  Min-max normalisation turns a CAM with no real positive evidence (r below 0.03 for 5-10% of
  NIH test images) into amplified noise whose Otsu box lands anywhere; the blend sends such
  images to the whole image, continuously in r.
- Crop: a sampling grid built from the box (scale + shift of the output pixel centres) and
  grid_sample (bilinear), resized to the input size; everything static but the batch. The
  exported graph writes this crop and the pyramid's upsampling as matrix products (same
  values to ~1e-7; ONNX Runtime runs them ~10% faster than GridSample + Resize).
- Warm-up: the buffer `crop_enabled` (0 or 1) blends the box with the identity box, so the
  same graph trains the classifier first (crop off) and uses the crop afterwards; export
  always sets it to 1. No data-dependent Python control flow anywhere in forward().
- Local branch: shares the backbone's weights by default (local="separate" gives it its own).
- local_scale s (default 1): the network takes an s-times larger input; the global branch sees
  it averaged over s x s blocks, and the crop is resampled from the full-resolution input to
  the branches' size, so the local branch sees real detail, not upsampled pixels, at the same
  compute (as in AG-CNN, Guan et al. 2018, whose local branch crops the original image).
- Fusion: concat(GAP(global stride-32 map), GAP(local stride-32 map)) -> FC -> tanh.
- Pixel bits (option, pixel_bits > 0; not the paper's): the code gets pixel_bits more bits, the
  signs of a fixed seeded Gaussian projection of the input averaged down to PIXEL_SIZE x
  PIXEL_SIZE and standardised per image (SimHash of the raw-pixel reference: Hamming distance
  over them estimates the angle between two images' standardised 32 x 32 pixels). No weights,
  no training; the learned bits carry what the labels teach, these the appearance that raw
  pixels show to be predictive on an unseen archive (docs/model.md).
`use_local=False` gives the "global only" network that the baselines and the first ablation
use; `detach_cls=True` trains the classification branch on detached features, so a baseline
still ships meaningful probabilities and attention without the extra loss shaping its codes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import BACKBONES, STEMS, build_backbone

OTSU_BINS = 32
PIXEL_SIZE = 32            # side of the averaged input that pixel bits project (the raw-pixel reference's)
PIXEL_SCALE = 8.0          # tanh(PIXEL_SCALE * projection): code logits in (-1, 1) like the learned ones
BOX_RULES = ("extent", "moments")
KRON_RESIZE_MAX = 1 << 18   # weight-matrix elements up to which an exported resize is one product


@dataclass
class NetConfig:
    """Everything needed to rebuild the network (stored in checkpoints)."""

    nbits: int
    num_labels: int
    in_ch: int = 1
    backbone: str = "resnet18"
    width: float = 0.5
    stem: str = "imagenet"
    use_local: bool = True
    local: str = "shared"
    min_box: float = 0.4
    otsu_bins: int = OTSU_BINS
    box: str = "extent"              # "extent": the mask's bounding box; "moments": see attention_box
    box_jitter: float = 0.0          # training only: box edges moved by up to this many CAM cells
    min_evidence: float = 0.0        # crop weight = min(1, CAM evidence / this); 0: always the full crop
    local_scale: int = 1             # the input is this many times the branches' size (see AttentionHashNet)
    detach_cls: bool = False
    pixel_bits: int = 0              # appended SimHash bits of the standardised 32 x 32 input (see above)
    pixel_seed: int = 0
    members: int = 1                 # > 1: that many networks side by side (medhash_train.ensemble)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.nbits <= 0 or self.nbits % 8:
            raise ValueError(f"nbits must be a positive multiple of 8, got {self.nbits}")
        if self.num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {self.num_labels}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.local not in ("shared", "separate"):
            raise ValueError(f"local must be 'shared' or 'separate', got {self.local!r}")
        if not 0.0 < self.min_box <= 1.0:
            raise ValueError(f"min_box is a fraction of the image side in (0, 1], got {self.min_box}")
        if not isinstance(self.local_scale, int) or self.local_scale < 1:
            raise ValueError(f"local_scale must be an integer >= 1, got {self.local_scale!r}")
        if self.local_scale > 1 and not self.use_local:
            raise ValueError("local_scale > 1 needs the local branch (use_local=True): it is where the detail goes")
        if self.box not in BOX_RULES:
            raise ValueError(f"box must be one of {BOX_RULES}, got {self.box!r}")
        if not 0.0 <= self.box_jitter <= 4.0:
            raise ValueError(f"box_jitter is in CAM cells, 0 to 4, got {self.box_jitter}")
        if not 0.0 <= self.min_evidence <= 1.0:
            raise ValueError(f"min_evidence is a fraction in [0, 1], got {self.min_evidence}")
        if self.otsu_bins < 2:
            raise ValueError(f"otsu_bins must be >= 2, got {self.otsu_bins}")
        if self.pixel_bits < 0 or self.pixel_bits % 8:
            raise ValueError(f"pixel_bits must be a multiple of 8 >= 0, got {self.pixel_bits}")
        if not isinstance(self.members, int) or self.members < 1:
            raise ValueError(f"members must be an integer >= 1, got {self.members!r}")

    @property
    def code_bits(self) -> int:
        """Length of the code: the learned bits plus the pixel bits, of every member."""
        return self.members * (self.nbits + self.pixel_bits)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def otsu_threshold(a: torch.Tensor, bins: int) -> torch.Tensor:
    """Otsu threshold of each row of a (B, P) in [0, 1], over `bins` fixed bins -> (B,)."""
    idx = torch.clamp(torch.floor(a * bins), 0, bins - 1)
    levels = torch.arange(bins, device=a.device, dtype=a.dtype)
    hist = (idx.unsqueeze(-1) == levels).to(a.dtype).sum(1)              # (B, bins)
    p = hist / a.shape[1]
    centres = (levels + 0.5) / bins
    omega = torch.cumsum(p, 1)
    mu = torch.cumsum(p * centres, 1)
    mu_t = mu[:, -1:]
    between = (mu_t * omega - mu) ** 2 / torch.clamp(omega * (1.0 - omega), min=1e-12)
    t = torch.argmax(between, dim=1).to(a.dtype)
    return (t + 1.0) / bins


def _extent(any_along: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First/last index (as fractions of the length, edges) where a (B, L) bool is set; whole range if none."""
    n = any_along.shape[1]
    ar = torch.arange(n, device=any_along.device, dtype=torch.float32)
    first = torch.where(any_along, ar, torch.full_like(ar, float(n))).amin(1)
    last = torch.where(any_along, ar, torch.full_like(ar, -1.0)).amax(1)
    valid = last >= first
    lo = torch.where(valid, first / n, torch.zeros_like(first))
    hi = torch.where(valid, (last + 1.0) / n, torch.ones_like(last))
    return lo, hi


def _moment_extent(mass: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) of a (B, L) non-negative mass over L cells along a line, each cell's mass spread
    evenly over its width: centre = the mean, side = sqrt(12) x the standard deviation (so a
    uniform mass over [lo, hi] gives exactly [lo, hi]); the whole range where the mass is 0."""
    n = mass.shape[1]
    pos = (torch.arange(n, device=mass.device, dtype=mass.dtype) + 0.5) / n
    total = mass.sum(1)
    has = total > 0
    m = mass / torch.where(has, total, torch.ones_like(total)).unsqueeze(1)
    centre = (m * pos).sum(1)
    var = (m * (pos - centre.unsqueeze(1)) ** 2).sum(1) + 1.0 / (12.0 * n * n)   # + a cell's own spread
    side = torch.sqrt(12.0 * var)
    lo = torch.where(has, centre - 0.5 * side, torch.zeros_like(centre))
    hi = torch.where(has, centre + 0.5 * side, torch.ones_like(centre))
    return lo.clamp(0.0, 1.0), hi.clamp(0.0, 1.0)


def attention_box(attn: torch.Tensor, bins: int, min_box: float, rule: str = "extent") -> torch.Tensor:
    """Crop box (B, 4) = (scale_x, shift_x, scale_y, shift_y) in grid_sample coordinates.

    rule "extent": the rows/columns holding a cell at or above the Otsu threshold (the paper's
    bounding box; a cell crossing the threshold moves an edge by a whole cell, so a barely
    changed image can get a very different crop). "moments": the box of the CAM mass above the
    threshold, relu(A - t), from its mean and spread per axis; a continuous function of A.
    """
    b, h, w = attn.shape
    thr = otsu_threshold(attn.reshape(b, h * w), bins)
    if rule == "moments":
        above = torch.relu(attn - thr.view(b, 1, 1))
        y0, y1 = _moment_extent(above.sum(2))
        x0, x1 = _moment_extent(above.sum(1))
    else:
        mask = attn >= thr.view(b, 1, 1)
        y0, y1 = _extent(mask.any(2))
        x0, x1 = _extent(mask.any(1))
    return _box_from_edges(x0, x1, y0, y1, min_box)


def _box_from_edges(x0: torch.Tensor, x1: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor,
                    min_box: float) -> torch.Tensor:
    """(B, 4) grid_sample box from edges in [0, 1]: sides at least min_box, kept inside the image."""
    out = []
    for lo, hi in ((x0, x1), (y0, y1)):
        size = torch.clamp(hi - lo, min=min_box, max=1.0)
        centre = torch.minimum(torch.maximum((lo + hi) * 0.5, size * 0.5), 1.0 - size * 0.5)
        out += [size, 2.0 * centre - 1.0]
    return torch.stack(out, 1)


def jitter_box(box: torch.Tensor, shift: float, min_box: float) -> torch.Tensor:
    """Training-time box augmentation: every edge moved by U(-shift, shift) (fractions of the
    image), so the local branch learns codes that survive a box edge moving by a CAM cell, as it
    does when a cell crosses the Otsu threshold between two copies of one image."""
    sx, tx, sy, ty = box.unbind(1)
    d = (torch.rand(box.shape[0], 4, device=box.device, dtype=box.dtype) * 2.0 - 1.0) * shift
    cx, cy = (tx + 1.0) * 0.5, (ty + 1.0) * 0.5
    x0, x1 = (cx - sx * 0.5 + d[:, 0]).clamp(0.0, 1.0), (cx + sx * 0.5 + d[:, 1]).clamp(0.0, 1.0)
    y0, y1 = (cy - sy * 0.5 + d[:, 2]).clamp(0.0, 1.0), (cy + sy * 0.5 + d[:, 3]).clamp(0.0, 1.0)
    return _box_from_edges(x0, x1, y0, y1, min_box)


def bilinear_weights(src: torch.Tensor, n_in: int) -> torch.Tensor:
    """Bilinear weights (..., n_out, n_in) for source coordinates (..., n_out) in pixel units,
    clamped to the edge pixels (grid_sample's "border" padding, interpolate's edge rule)."""
    src = src.clamp(0.0, n_in - 1.0)
    i = torch.arange(n_in, device=src.device, dtype=src.dtype)
    return torch.clamp(1.0 - (src.unsqueeze(-1) - i).abs(), min=0.0)


def crop_resize(x: torch.Tensor, box: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Crop box (B, 4) from x (B, C, H, W) and resample it to `size` (default H x W; bilinear,
    border padding).

    Eager torch uses grid_sample. The exported graph uses the same sampling written as two
    matrix products (rows, then columns; the box is axis-aligned, so bilinear is separable):
    ONNX Runtime's CPU GridSample is a slow per-pixel loop, its MatMul is not."""
    _, _, h, w = x.shape
    oh, ow = size or (h, w)
    gx = (torch.arange(ow, device=x.device, dtype=x.dtype) + 0.5) * (2.0 / ow) - 1.0
    gy = (torch.arange(oh, device=x.device, dtype=x.dtype) + 0.5) * (2.0 / oh) - 1.0
    box = box.to(x.dtype)
    if torch.onnx.is_in_onnx_export():
        sx, tx, sy, ty = (box[:, i].view(-1, 1) for i in range(4))
        # grid_sample, align_corners=False: pixel coordinate = ((g + 1) * size - 1) / 2
        wx = bilinear_weights((sx * gx + tx + 1.0) * (w * 0.5) - 0.5, w).unsqueeze(1)   # (B, 1, ow, W)
        wy = bilinear_weights((sy * gy + ty + 1.0) * (h * 0.5) - 0.5, h).unsqueeze(1)   # (B, 1, oh, H)
        return wy @ x @ wx.transpose(-1, -2)
    sx, tx, sy, ty = (box[:, i].view(-1, 1, 1) for i in range(4))
    grid_x = (sx * gx.view(1, 1, ow) + tx).expand(-1, oh, ow)
    grid_y = (sy * gy.view(1, oh, 1) + ty).expand(-1, oh, ow)
    grid = torch.stack([grid_x, grid_y], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def resize_bilinear(f: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """F.interpolate(f, size, bilinear, align_corners=False). Exported, a small map becomes one
    matrix product with a constant (oh*ow, h*w) weight matrix: same values, and ONNX Runtime's
    Resize on maps of a few pixels costs more than the whole product."""
    (h, w), (oh, ow) = f.shape[-2:], size
    if not torch.onnx.is_in_onnx_export() or oh * ow * h * w > KRON_RESIZE_MAX:
        return F.interpolate(f, size=size, mode="bilinear", align_corners=False)
    ry = bilinear_weights((torch.arange(oh, device=f.device, dtype=f.dtype) + 0.5) * (h / oh) - 0.5, h)
    rx = bilinear_weights((torch.arange(ow, device=f.device, dtype=f.dtype) + 0.5) * (w / ow) - 0.5, w)
    k = (ry[:, None, :, None] * rx[None, :, None, :]).reshape(oh * ow, h * w)
    return (f.flatten(2) @ k.T).unflatten(2, (oh, ow))


def pixel_projection(bits: int, seed: int) -> torch.Tensor:
    """The fixed Gaussian matrix (PIXEL_SIZE^2, bits) of the pixel bits (seeded, float32)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(PIXEL_SIZE * PIXEL_SIZE, bits, generator=g) / float(PIXEL_SIZE)


def pixel_code_logits(x: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """tanh(PIXEL_SCALE * v @ proj) with v = standardised_pixels(x)."""
    v = standardised_pixels(x)
    return torch.tanh(PIXEL_SCALE * (v @ proj.to(v.dtype)))


def standardised_pixels(x: torch.Tensor) -> torch.Tensor:
    """The raw-pixel reference's vectors (N, PIXEL_SIZE^2): the input (N, C, S, S) averaged over
    channels and down to PIXEL_SIZE^2 (S a multiple of it), centred and scaled to unit norm per
    image, so a dot product is the reference's cosine."""
    side = x.shape[-1]
    if side % PIXEL_SIZE or x.shape[-2] != side:
        raise ValueError(f"the raw-pixel reference needs a square input whose side is a multiple of {PIXEL_SIZE}, got {tuple(x.shape)}")
    v = x.float().mean(1, keepdim=True)
    if side > PIXEL_SIZE:
        v = F.avg_pool2d(v, side // PIXEL_SIZE)
    v = v.flatten(1)
    v = v - v.mean(1, keepdim=True)
    return v / torch.clamp(torch.sqrt((v * v).sum(1, keepdim=True)), min=1e-6)


class ClassificationBranch(nn.Module):
    """Feature pyramid on the stride-8 grid -> GAP -> linear -> sigmoid, and its CAM."""

    def __init__(self, channels: tuple[int, int, int], num_labels: int):
        super().__init__()
        d = channels[2]
        self.lat = nn.ModuleList([nn.Conv2d(c, d, 1, bias=False) for c in channels])
        self.bn = nn.BatchNorm2d(d)
        self.fc = nn.Linear(d, num_labels)

    def forward(self, feats: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f8 = feats[0]
        size = (f8.shape[-2], f8.shape[-1])
        fmap = self.lat[0](f8)
        for lat, f in zip(self.lat[1:], feats[1:]):
            fmap = fmap + resize_bilinear(lat(f), size)
        fmap = F.relu(self.bn(fmap))
        logits = self.fc(fmap.mean((2, 3)))
        probs = torch.sigmoid(logits)
        # CAM weighted by the predicted probabilities (forward-only Grad-CAM of a GAP+linear head)
        w = probs.detach().float() @ self.fc.weight.detach().float()                 # (B, D)
        signed = torch.einsum("bd,bdhw->bhw", w, fmap.detach().float())
        cam = F.relu(signed)
        b = cam.shape[0]
        flat = cam.reshape(b, -1)
        lo = flat.amin(1).view(b, 1, 1)
        hi = flat.amax(1).view(b, 1, 1)
        attn = (cam - lo) / torch.clamp(hi - lo, min=1e-6)
        # positive evidence: the CAM's peak over the signed map's largest magnitude, in [0, 1]
        # (near 0 when the normalised map is only amplified noise)
        evidence = flat.amax(1) / torch.clamp(signed.reshape(b, -1).abs().amax(1), min=1e-12)
        return logits, probs, attn, evidence


class AttentionHashNet(nn.Module):
    """Backbone -> classification branch + CAM -> Otsu box -> crop -> local branch -> hash head."""

    def __init__(self, config: NetConfig, backbone_weights: str | None = None):
        super().__init__()
        self.config = config
        c = config
        self.backbone = build_backbone(c.backbone, c.in_ch, c.width, c.stem, backbone_weights)
        chans = self.backbone.channels
        self.local_backbone = None
        if c.use_local and c.local == "separate":
            self.local_backbone = build_backbone(c.backbone, c.in_ch, c.width, c.stem, backbone_weights)
        self.cls = ClassificationBranch(chans, c.num_labels)
        feat = chans[2] * (2 if c.use_local else 1)
        self.hash = nn.Linear(feat, c.nbits)
        self.register_buffer("crop_enabled", torch.ones(()))
        if c.pixel_bits:
            self.register_buffer("pixel_proj", pixel_projection(c.pixel_bits, c.pixel_seed))

    def set_crop(self, enabled: bool) -> None:
        self.crop_enabled.fill_(1.0 if enabled else 0.0)

    def crop_box(self, attn: torch.Tensor, evidence: torch.Tensor) -> torch.Tensor:
        """The (B, 4) box the local branch crops: the attention box (jittered in training),
        blended with the whole image while the crop is off (warm-up) or the evidence is weak."""
        c = self.config
        box = attention_box(attn.detach(), c.otsu_bins, c.min_box, c.box)
        if self.training and c.box_jitter > 0:     # module state, not data: export is eval
            box = jitter_box(box, c.box_jitter / attn.shape[-1], c.min_box)
        identity = torch.tensor([1.0, 0.0, 1.0, 0.0], device=box.device, dtype=box.dtype)
        e = self.crop_enabled.to(box.dtype)
        if c.min_evidence > 0:   # weak evidence: towards the whole image, continuously
            e = e * torch.clamp(evidence / c.min_evidence, max=1.0).unsqueeze(1).to(box.dtype)
        return e * box + (1.0 - e) * identity

    def boxes(self, x: torch.Tensor) -> torch.Tensor:
        """The crop boxes of a batch (what the local branch sees), for statistics and viewers."""
        s = self.config.local_scale
        feats = self.backbone(x if s == 1 else F.avg_pool2d(x, s))
        _, _, attn, evidence = self.cls(feats)
        return self.crop_box(attn, evidence)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(code logits: the learned bits, then the pixel bits if any; probabilities; attention)."""
        u, probs, attn, _ = self.forward_all(x)
        if self.config.pixel_bits:
            u = torch.cat([u, pixel_code_logits(x, self.pixel_proj).to(u.dtype)], 1)
        return u, probs, attn

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """forward() plus the classification logits (for the training loss)."""
        u, probs, attn, logits, _ = self.forward_features(x)
        return u, probs, attn, logits

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """forward_all() plus the pooled features the hash layer reads (for a contrastive head)."""
        s = self.config.local_scale
        xg = x if s == 1 else F.avg_pool2d(x, s)      # the global view: the input averaged over s x s blocks
        feats = self.backbone(xg)
        cls_in = tuple(f.detach() for f in feats) if self.config.detach_cls else feats
        logits, probs, attn, evidence = self.cls(cls_in)
        g = feats[2].mean((2, 3))
        if self.config.use_local:
            box = self.crop_box(attn, evidence)
            crop = crop_resize(x, box, (xg.shape[-2], xg.shape[-1]))   # from the full-resolution input
            local_net = self.backbone if self.local_backbone is None else self.local_backbone
            g = torch.cat([g, local_net(crop)[2].mean((2, 3))], 1)
        u = torch.tanh(self.hash(g))
        return u, probs, attn, logits, g


def build_model(config: NetConfig | dict[str, Any], backbone_weights: str | None = None) -> nn.Module:
    """The network a NetConfig describes: an AttentionHashNet, or an EnsembleHashNet of
    `members` of them (each from backbone_weights, if given)."""
    if isinstance(config, dict):
        config = NetConfig(**config)
    if config.members > 1:
        from .ensemble import EnsembleHashNet

        return EnsembleHashNet(config, backbone_weights=backbone_weights)
    return AttentionHashNet(config, backbone_weights)
