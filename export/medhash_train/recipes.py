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

PRETRAIN_DATA = ("kermany_pneumonia_128.npz", "covid_hannover_128.npz")

_PLAIN: dict[str, Any] = dict(method="dpsh-bce", nbits=64, input_size=64, width=0.33, epochs=30, batch_size=64,
                              lr=1e-3)
_CON: dict[str, Any] = dict(_PLAIN, contrastive=1.0, contrastive_on="codes")
_FEAT: dict[str, Any] = dict(_PLAIN, contrastive=1.0, contrastive_on="features")
# SimCLR pretraining of the backbone on the radiographs that carry no NIH label (Kermany's
# paediatric films without its test split, and the adult COVID-19 films): no NIH image, so no
# held-out fold or collection is ever seen, even unlabelled
_PRE: dict[str, Any] = dict(_FEAT, pretrain_data=list(PRETRAIN_DATA), pretrain_epochs=30)

RECIPES: dict[str, dict[str, Any]] = {
    "plain": _PLAIN,
    "plain-x2": dict(_PLAIN, members=2),     # the anchor with the ensemble's doubled cost, for a fair comparison
    "con-codes": _CON,
    "con-features": _FEAT,
    "con-codes-w0.5": dict(_CON, contrastive=0.5),
    "con-codes-w2": dict(_CON, contrastive=2.0),
    "con-codes-dch": dict(_CON, method="dch-bce"),
    "con-codes-128b": dict(_CON, nbits=128),
    "con-codes-balanced": dict(_CON, balanced=True),
    "con-codes-width0.5": dict(_CON, width=0.5),
    "con-codes-e60": dict(_CON, epochs=60),
    "con-codes-t0.5": dict(_CON, temperature=0.5),
    "con-features-128b": dict(_FEAT, nbits=128),
    "con-features-width0.5": dict(_FEAT, width=0.5),
    "con-features-w2": dict(_FEAT, contrastive=2.0),
    "con-features-mu3": dict(_FEAT, mu=3.0),
    "con-features-e60": dict(_FEAT, epochs=60),
    "con-features-pre": _PRE,
    # the two that each helped in cross-validation, together; then weights averaged (EMA)
    "con-features-pre-128b": dict(_PRE, nbits=128),
    "con-features-pre-128b-ema": dict(_PRE, nbits=128, ema=0.99),
    "con-features-pre-256b-ema": dict(_PRE, nbits=256, ema=0.99),
    "con-features-pre-128b-ema0.995": dict(_PRE, nbits=128, ema=0.995),   # the default model until 2026-12-06
    "con-features-pre60-128b-ema0.995": dict(_PRE, nbits=128, ema=0.995, pretrain_epochs=60),
    "con-features-pre-128b-ema0.998": dict(_PRE, nbits=128, ema=0.998),
    # the pretraining pool also holds the training split's own NIH radiographs (per fold in
    # cross-validation: a held-out fold is never seen, not even unlabelled)
    "con-features-pretr-128b-ema0.995": dict(_PRE, nbits=128, ema=0.995, pretrain_on_train=True),
    # half the learning rate when hashing: the pretrained features move less
    "con-features-pre-128b-ema0.995-lr5e-4": dict(_PRE, nbits=128, ema=0.995, lr=5e-4),
    # linear probe, then fine-tune (LP-FT, Kumar et al. 2022): the heads learn on frozen
    # pretrained features first, so fine-tuning distorts them less (better out of distribution)
    "con-features-pre-128b-ema0.995-lpft5": dict(_PRE, nbits=128, ema=0.995, freeze_backbone_epochs=5),
    # regularisers aimed at another collection (chosen by --scheme cross-source as well as CV)
    "con-features-pre-128b-ema0.995-wd0.05": dict(_PRE, nbits=128, ema=0.995, weight_decay=0.05),
    "con-features-pre-128b-ema0.995-strong": dict(_PRE, nbits=128, ema=0.995, views="strong"),
    "con-features-pre-128b-ema0.995-mixed": dict(_PRE, nbits=128, ema=0.995, views="mixed"),
    "con-features-pre-128b-ema0.995-mild": dict(_PRE, nbits=128, ema=0.995, views="mild"),
    "con-features-pre-128b-ema0.995-mild-nt": dict(_PRE, nbits=128, ema=0.995, views="mild-nt"),   # the default model until 2026-12-06, evening
    # the shipped view recipe on the twice-as-long pretraining (probe for the nih_extra_128 -> nih1000_64 direction)
    "con-features-pre60-128b-ema0.995-mild-nt": dict(_PRE, nbits=128, ema=0.995, views="mild-nt", pretrain_epochs=60),
    # the shipped view recipe, its pretraining also on the training side's own (adult) NIH radiographs: the
    # unlabelled pool is otherwise 95% paediatric
    "con-features-pretr-128b-ema0.995-mild-nt": dict(_PRE, nbits=128, ema=0.995, views="mild-nt", pretrain_on_train=True),
    "con-features-pre-128b-ema0.995-balanced": dict(_PRE, nbits=128, ema=0.995, balanced=True),
    # two networks of mild-nt from different seeds, codes side by side (medhash_train.ensemble): 256 bits
    "con-features-pre-128b-ema0.995-mild-nt-x2": dict(_PRE, nbits=128, ema=0.995, views="mild-nt", members=2),   # the shipped default model
    # one 128-bit network that also learns the two-network ensemble's ranking and probabilities
    # (medhash_train.ensemble.relational_distillation), at one network's cost and code length (docs/model.md: level
    # with the untaught network over two seeds)
    "con-features-pre-128b-ema0.995-mild-nt-soft": dict(_PRE, nbits=128, ema=0.995, views="mild-nt-soft"),
    # probes for the collection the labels carry over worst to (trained on nih_extra_128): more weight on
    # the instance term, less on the labels
    "con-features-pre-128b-ema0.995-mild-nt-w2": dict(_PRE, nbits=128, ema=0.995, views="mild-nt", contrastive=2.0),
    "con-features-pre-128b-ema0.995-mild-nt-mu0.5": dict(_PRE, nbits=128, ema=0.995, views="mild-nt", mu=0.5),
    # the codes also learn the raw-pixel reference's ranking of each batch (trainer.TrainConfig.pixel_distill): raw
    # pixels carry over between collections where the labels do not
    "con-features-pre-128b-ema0.995-mild-nt-pix": dict(_PRE, nbits=128, ema=0.995, views="mild-nt", pixel_distill=1.0),
    "con-features-pre-128b-ema0.995-mild-nt-kd": dict(_PRE, nbits=128, ema=0.995, views="mild-nt", distill=1.0),   # the default model until 2026-12-06, late evening
    # two networks of 64 bits each: the ensemble at the one network's code length (128 bits), so
    # an index holds as many codes per GB and scans them as fast as before
    "con-features-pre-64b-ema0.995-mild-nt-x2": dict(_PRE, nbits=64, ema=0.995, views="mild-nt", members=2),
    "paper": dict(method="attention", nbits=64, input_size=64, width=0.5, epochs=60, batch_size=64, lr=1e-3,
                  box_jitter=1.0, min_evidence=0.1),
}


def recipe(name: str) -> dict[str, Any]:
    """A copy of recipe `name`'s TrainConfig settings."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return dict(RECIPES[name])


def resolve(settings: dict[str, Any], data_dir: str, pretrain_cache: str | None = None) -> dict[str, Any]:
    """settings with pretrain_data names found in data_dir (names that exist as given are kept)
    and pretrain_cache set: what TrainConfig(**...) takes."""
    import os

    out = dict(settings)
    if out.get("pretrain_data"):
        out["pretrain_data"] = [p if os.path.exists(p) else os.path.join(data_dir, p) for p in out["pretrain_data"]]
        if pretrain_cache is not None:
            out["pretrain_cache"] = pretrain_cache
    return out
