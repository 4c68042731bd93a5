"""Named training recipes (TrainConfig settings) compared in issue 10's model selection.

Every recipe trains for a fixed number of epochs and keeps the last one (no validation-based
epoch choice: the epoch count is part of the recipe, chosen by patient-grouped
cross-validation on the training patients, benchmarks/model_selection.py). "plain" is the
plain-CNN baseline (a global ResNet-18-style network at width 0.33, ~1.3M parameters, BCE +
DPSH); the "con-*" recipes add the instance-contrastive term (medhash_train.contrastive) and
change one thing at a time; "paper" is the paper's attention method as the previous default
model was trained (crop options included), at a fixed epoch count.

`medhash train --recipe NAME` starts from a recipe's settings (flags given explicitly still
override them); docs/model.md gives the shipped recipe's exact command.
"""
from __future__ import annotations

from typing import Any

_PLAIN: dict[str, Any] = dict(method="dpsh-bce", nbits=64, input_size=64, width=0.33, epochs=30, batch_size=64,
                              lr=1e-3)
_CON: dict[str, Any] = dict(_PLAIN, contrastive=1.0, contrastive_on="codes")

RECIPES: dict[str, dict[str, Any]] = {
    "plain": _PLAIN,
    "con-codes": _CON,
    "con-features": dict(_PLAIN, contrastive=1.0, contrastive_on="features"),
    "con-codes-w0.5": dict(_CON, contrastive=0.5),
    "con-codes-w2": dict(_CON, contrastive=2.0),
    "con-codes-dch": dict(_CON, method="dch-bce"),
    "con-codes-128b": dict(_CON, nbits=128),
    "con-codes-balanced": dict(_CON, balanced=True),
    "con-codes-width0.5": dict(_CON, width=0.5),
    "con-codes-e60": dict(_CON, epochs=60),
    "con-codes-t0.5": dict(_CON, temperature=0.5),
    "con-features-128b": dict(_PLAIN, contrastive=1.0, contrastive_on="features", nbits=128),
    "con-features-width0.5": dict(_PLAIN, contrastive=1.0, contrastive_on="features", width=0.5),
    "paper": dict(method="attention", nbits=64, input_size=64, width=0.5, epochs=60, batch_size=64, lr=1e-3,
                  box_jitter=1.0, min_evidence=0.1),
}


def recipe(name: str) -> dict[str, Any]:
    """A copy of recipe `name`'s TrainConfig settings."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return dict(RECIPES[name])
