"""Several networks, trained alike from different seeds, read as one network.

The members' codes sit side by side, so the Hamming distance between two images is the sum of
the members' distances (each member ranks, the sums vote); their class probabilities and
attention maps are averaged. One ONNX graph holds every member, so the runtime sees one model
with a longer code (NetConfig.code_bits = members x the member's bits) and nothing else changes.
Seeds differ in their initialisation, batch order, augmentations and (with pretraining) their
pretrained backbone, so the members err differently and the sum ranks better than any one
(docs/model.md gives the measured gain).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from .attention import AttentionHashNet, NetConfig


def member_config(config: NetConfig) -> NetConfig:
    """The NetConfig of one member of an ensemble config."""
    return dataclasses.replace(config, members=1)


class EnsembleHashNet(nn.Module):
    """forward(x) -> (the members' code logits concatenated, mean probabilities, mean attention)."""

    def __init__(self, config: NetConfig, members: Sequence[AttentionHashNet] | None = None,
                 backbone_weights: str | None = None):
        super().__init__()
        if config.members < 2:
            raise ValueError(f"an ensemble needs members >= 2, got {config.members}")
        one = member_config(config)
        if members is None:
            members = [AttentionHashNet(one, backbone_weights) for _ in range(config.members)]
        if len(members) != config.members:
            raise ValueError(f"the config says {config.members} members, {len(members)} given")
        for m in members:
            if dataclasses.replace(m.config, extra={}) != dataclasses.replace(one, extra={}):
                raise ValueError("every member must have the ensemble's NetConfig (members=1)")
        self.config = config
        self.members = nn.ModuleList(members)

    def set_crop(self, enabled: bool) -> None:
        for m in self.members:
            m.set_crop(enabled)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        outs = [m(x) for m in self.members]
        u = torch.cat([o[0] for o in outs], 1)
        probs = torch.stack([o[1] for o in outs]).mean(0)
        attn = torch.stack([o[2] for o in outs]).mean(0)
        return u, probs, attn


def relational_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """How one network learns an ensemble's ranking at its own code length: for each image of
    the batch, the softmax over its cosine similarities to the other images (own pair left out)
    by the teacher's code logits is the target of the student's (KL divergence, batch mean).
    The two codes may differ in length; only who is near whom is transferred."""
    if student.ndim != 2 or teacher.ndim != 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(f"student and teacher must be (B, K) and (B, K') of one batch, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    def log_probs(u: torch.Tensor) -> torch.Tensor:
        z = torch.nn.functional.normalize(u.float(), dim=1, eps=1e-6)
        sim = (z @ z.t()) / temperature
        eye = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
        return torch.log_softmax(sim.masked_fill(eye, -1e4), dim=1)

    target = log_probs(teacher.detach())
    return torch.nn.functional.kl_div(log_probs(student), target, log_target=True, reduction="batchmean")
