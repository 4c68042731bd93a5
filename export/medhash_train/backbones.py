"""Plain-torch CNN backbones (no torchvision): ResNet-18/34 style and DenseNet-121 style.

Every backbone takes (N, C, H, W) of any size >= 16 and returns three feature maps at output
strides 8, 16 and 32 (`channels` lists their widths), which the attention network needs: the
CAM comes from the stride-8 level (docs/method.md). `width` scales every channel
count (0.5 = half width). Stem: "imagenet" (7x7 stride 2 + max-pool, stride 4 after the stem)
or "small" (3x3 stride 1, no pool: for 28-48 px inputs, where a stride-32 map would be 1x1);
with "small" the three levels sit at strides 2, 4 and 8.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

BACKBONES = ("resnet18", "resnet34", "densenet121")
STEMS = ("imagenet", "small")


def _ch(c: float) -> int:
    return max(8, int(round(c / 8.0)) * 8)


class _Stem(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, stem: str):
        if stem == "imagenet":
            super().__init__(nn.Conv2d(in_ch, out_ch, 7, 2, 3, bias=False), nn.BatchNorm2d(out_ch),
                             nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        elif stem == "small":
            super().__init__(nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch),
                             nn.ReLU(inplace=True))
        else:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)), inplace=True)


class ResNet(nn.Module):
    """ResNet with BasicBlocks; layers=(2,2,2,2) is ResNet-18, (3,4,6,3) ResNet-34."""

    def __init__(self, layers: Sequence[int], in_ch: int = 1, width: float = 1.0, stem: str = "imagenet"):
        super().__init__()
        w = [_ch(64 * width), _ch(128 * width), _ch(256 * width), _ch(512 * width)]
        self.stem = _Stem(in_ch, w[0], stem)
        stages, cin = [], w[0]
        for i, (n, cout) in enumerate(zip(layers, w)):
            blocks = [BasicBlock(cin, cout, 1 if i == 0 else 2)] + [BasicBlock(cout, cout, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.channels = (w[1], w[2], w[3])
        _init(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.layer1(self.stem(x))
        f8 = self.layer2(x)
        f16 = self.layer3(f8)
        return f8, f16, self.layer4(f16)


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int = 4):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.bn1(x)))
        y = self.conv2(F.relu(self.bn2(y)))
        return torch.cat([x, y], 1)


def _transition(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False),
                         nn.AvgPool2d(2, 2, ceil_mode=True))


class DenseNet(nn.Module):
    """DenseNet-BC; blocks=(6,12,24,16), growth 32 is DenseNet-121 (CheXNet's backbone)."""

    def __init__(self, blocks: Sequence[int] = (6, 12, 24, 16), in_ch: int = 1, width: float = 1.0,
                 stem: str = "imagenet", growth: int = 32):
        super().__init__()
        g = max(4, int(round(growth * width)))
        c = _ch(64 * width)
        self.stem = _Stem(in_ch, c, stem)
        feats: list[nn.Module] = []
        outs = []
        for i, n in enumerate(blocks):
            layers = []
            for _ in range(n):
                layers.append(_DenseLayer(c, g))
                c += g
            feats.append(nn.Sequential(*layers))
            if i < len(blocks) - 1:
                feats.append(_transition(c, c // 2))
                c //= 2
            outs.append(c)
        self.block1, self.trans1, self.block2, self.trans2, self.block3, self.trans3, self.block4 = feats
        self.norm = nn.BatchNorm2d(c)
        # widths at strides 8, 16, 32: after transitions 1 and 2, and the final norm
        self.channels = (outs[0], outs[1], outs[3])
        _init(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f8 = self.trans1(self.block1(self.stem(x)))       # stride 8
        f16 = self.trans2(self.block2(f8))                 # stride 16
        x = self.trans3(self.block3(f16))
        f32 = F.relu(self.norm(self.block4(x)))
        return f8, f16, f32


def _init(m: nn.Module) -> None:
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(mod, nn.BatchNorm2d):
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)


def build_backbone(name: str = "resnet18", in_ch: int = 1, width: float = 1.0, stem: str = "imagenet",
                   weights: str | os.PathLike | None = None) -> nn.Module:
    """A backbone by name; `weights` is an optional local state_dict file (.pt/.pth)."""
    if not isinstance(width, (int, float)) or width <= 0:
        raise ValueError(f"width must be a positive number (e.g. 0.5, 1.0), got {width!r}")
    if name == "resnet18":
        net: nn.Module = ResNet((2, 2, 2, 2), in_ch, width, stem)
    elif name == "resnet34":
        net = ResNet((3, 4, 6, 3), in_ch, width, stem)
    elif name == "densenet121":
        net = DenseNet((6, 12, 24, 16), in_ch, width, stem)
    else:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")
    if weights is not None:
        load_backbone_weights(net, weights)
    return net


def load_backbone_weights(net: nn.Module, path: str | os.PathLike) -> list[str]:
    """Load a local state_dict into `net` (no downloads); returns the names left at their init.

    A 3-channel first convolution is summed over its input channels for a grayscale net.
    Tensors whose shapes disagree raise ValueError naming them (a different width or family).
    """
    from medhash_sdk.exceptions import ModelFileError

    try:
        sd = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise ModelFileError(f"{path}: cannot read backbone weights ({e})") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    own = net.state_dict()
    bad = []
    for k, v in list(sd.items()):
        if k not in own:
            continue
        if v.ndim == 4 and own[k].ndim == 4 and v.shape[1] == 3 and own[k].shape[1] == 1 and v.shape[0] == own[k].shape[0]:
            sd[k] = v.sum(1, keepdim=True)
        elif v.shape != own[k].shape:
            bad.append(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}")
    if bad:
        raise ValueError("backbone weights do not fit this backbone (check name and width): " + "; ".join(bad[:5]))
    missing, _ = net.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return list(missing)
