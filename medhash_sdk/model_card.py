"""The metadata a medhash model file carries, and the model fingerprint.

An ONNX model stores the card as JSON under the metadata_props key ``medhash.card`` (plus the
fingerprint under ``medhash.fingerprint`` for quick reading); a TensorRT engine stores the
same JSON in its header. The runtime needs nothing else: no side config files.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np

from .exceptions import ModelFileError
from .preprocessing import Preprocessing

CARD_KEY = "medhash.card"
FINGERPRINT_KEY = "medhash.fingerprint"
CARD_FORMAT = "medhash-model/1"

# Names of the network's outputs, in this order, in every exported model.
OUTPUT_NAMES = ("code_logits", "probabilities", "attention")
INPUT_NAME = "image"


@dataclass
class ModelCard:
    """What the runtime needs to use a model, and what a user would ask about it."""

    nbits: int
    preprocessing: Preprocessing
    labels: list[str]
    method: str
    fingerprint: str = ""
    backbone: str = ""
    training: dict[str, Any] = field(default_factory=dict)   # data fingerprint, split, seed, epochs...
    metrics: dict[str, Any] = field(default_factory=dict)    # figures measured on the test split
    versions: dict[str, str] = field(default_factory=dict)
    precision: str = "fp32"
    format: str = CARD_FORMAT

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    @property
    def channels(self) -> int:
        return self.preprocessing.channels

    def to_json(self) -> str:
        d = asdict(self)
        d["preprocessing"] = self.preprocessing.to_dict()
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str = "model") -> "ModelCard":
        try:
            d = json.loads(text)
            if d.get("format") != CARD_FORMAT:
                raise ModelFileError(f"{source}: unknown model card format {d.get('format')!r} (expected {CARD_FORMAT}); "
                                     "re-export the model with this version of medhash-sdk")
            d["preprocessing"] = Preprocessing.from_dict(d["preprocessing"])
            known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
            return cls(**known)
        except ModelFileError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise ModelFileError(f"{source}: damaged medhash model card ({e})") from e

    def to_metadata(self) -> dict[str, str]:
        return {CARD_KEY: self.to_json(), FINGERPRINT_KEY: self.fingerprint}

    @classmethod
    def from_metadata(cls, props: dict[str, str], *, source: str = "model") -> "ModelCard":
        if CARD_KEY not in props:
            raise ModelFileError(
                f"{source}: no medhash metadata ({CARD_KEY!r}) in this model; "
                "export it with `medhash export CHECKPOINT --out model.onnx`"
            )
        return cls.from_json(props[CARD_KEY], source=source)


def compute_fingerprint(weights: Iterable[tuple[str, np.ndarray]], preprocessing: Preprocessing,
                        nbits: int, labels: list[str]) -> str:
    """SHA-256 over the weights (sorted by name, with shapes and dtypes) and the preprocessing.

    Two models that would turn one image into different codes get different fingerprints.
    """
    h = hashlib.sha256()
    h.update(preprocessing.canonical_json().encode())
    h.update(json.dumps({"nbits": int(nbits), "labels": list(labels)}, sort_keys=True).encode())
    for name, arr in sorted(weights, key=lambda t: t[0]):
        a = np.ascontiguousarray(arr)
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()
