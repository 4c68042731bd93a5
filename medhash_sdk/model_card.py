"""The metadata a medhash model file carries, and the model fingerprint.

The fingerprint names what turns an image into a code: a trained model's is a hash of its
weights, preprocessing, code length and labels; an artefact made from it whose codes may differ
(INT8/FP16 copy, TensorRT engine) gets a fingerprint of its own from ModelCard.derive(), which
records the parent. Codes are only ever mixed under equal fingerprints.

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

#: The scope of chest radiograph models such as the bundled one (ModelCard.scope).
CHEST_RADIOGRAPH_SCOPE = {"modalities": ["CR", "DX"], "body_parts": ["CHEST", "THORAX", "LUNG", "PULMONARY"]}

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
    derived_from: dict[str, Any] = field(default_factory=dict)   # parent fingerprint + what changed; {} for a trained model
    scope: dict[str, list[str]] = field(default_factory=dict)   # inputs it was made for (scope_problems); {} = any
    format: str = CARD_FORMAT

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    @property
    def channels(self) -> int:
        return self.preprocessing.channels

    def scope_problems(self, facts: dict[str, Any]) -> list[str]:
        """Why an input lies outside the model's scope, from its DICOM facts (empty: none known).

        scope["modalities"]: accepted DICOM Modality values (e.g. CR, DX); scope["body_parts"]:
        terms one of which Body Part Examined / the anatomic region must contain (e.g. CHEST).
        A fact the file does not state is not held against it; non-DICOM inputs state none.
        """
        if facts.get("format") != "dicom" or not self.scope:
            return []
        problems = []
        modalities = [m.upper() for m in self.scope.get("modalities", [])]
        modality = (facts.get("modality") or "").upper()
        if modalities and modality not in modalities:
            problems.append(f"modality {modality or 'missing'} is not one the model was made for ({'/'.join(modalities)})")
        terms = [t.upper() for t in self.scope.get("body_parts", [])]
        part = " ".join(str(facts.get(k) or "") for k in ("body_part", "anatomic_region")).upper().strip()
        if terms and part and not any(t in part for t in terms):
            problems.append(f"body part {part} is not one the model was made for ({'/'.join(terms)})")
        return problems

    def derive(self, **changes: Any) -> "ModelCard":
        """The card of an artefact made from this model whose codes may differ from its own: an
        INT8 or FP16 copy, a TensorRT engine. `changes` (JSON values; at least `precision`) say
        what was done. The new card gets its own fingerprint, computed from this one and the
        changes, so an Index, a shard folder or the service refuses to mix the two models'
        codes; derived_from keeps the parent's fingerprint and the changes.
        """
        if "precision" not in changes:
            raise ValueError("derive() needs the artefact's precision (e.g. precision='int8')")
        derivation = json.loads(json.dumps(changes, sort_keys=True))   # JSON values only, canonical
        child = ModelCard.from_json(self.to_json())
        child.precision = str(changes["precision"])
        child.derived_from = {"fingerprint": self.fingerprint, **derivation}
        h = hashlib.sha256(b"medhash-derived/1\n")
        h.update(self.fingerprint.encode())
        h.update(json.dumps(derivation, sort_keys=True).encode())
        child.fingerprint = h.hexdigest()
        return child

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
