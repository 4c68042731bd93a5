"""Packaging: base dependencies are not GPL, the runtime never imports torch, assets ship."""
from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from _data import NIH_PNG_DIR, requires_data

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PNG = sorted(NIH_PNG_DIR.glob("*.png"))

_GPL = re.compile(r"\b(A?GPL|GNU (AFFERO )?GENERAL PUBLIC LICEN[CS]E)", re.I)
_OK = re.compile(r"\b(LGPL|LESSER|LIBRARY GENERAL|EXCEPTION)\b", re.I)


def _licence(dist: md.PackageMetadata) -> str:
    parts = [dist.get("License-Expression") or "", (dist.get("License") or "").splitlines()[0] if dist.get("License") else ""]
    parts += [c for c in (dist.get_all("Classifier") or []) if c.startswith("License ::")]
    return " | ".join(p for p in parts if p)


def _closure(names: list[str]) -> dict[str, str]:
    """Licence of every installed distribution the given ones need (no extras)."""
    seen: dict[str, str] = {}
    stack = list(names)
    while stack:
        name = stack.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = md.metadata(name)
        except md.PackageNotFoundError:
            seen[key] = "NOT INSTALLED"
            continue
        seen[key] = _licence(dist)
        for r in dist.get_all("Requires-Dist") or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                stack.append(req.name)
    return seen


def test_base_and_cpu_runtime_dependencies_are_not_gpl():
    names = [Requirement(d).name for d in PYPROJECT["project"]["dependencies"]]
    names += [Requirement(d).name for d in PYPROJECT["project"]["optional-dependencies"]["cpu"]]
    licences = _closure(names)
    missing = [k for k, v in licences.items() if v == "NOT INSTALLED"]
    assert not missing, f"install the base dependencies to check their licences: {missing}"
    unknown = [k for k, v in licences.items() if not v]
    assert not unknown, f"no licence metadata: {unknown}"
    gpl = {k: v for k, v in licences.items() if _GPL.search(v) and not _OK.search(v)}
    assert not gpl, f"GPL/AGPL runtime dependencies: {gpl}"


def test_gpl_codec_is_opt_in_only():
    base = {Requirement(d).name for d in PYPROJECT["project"]["dependencies"]}
    assert "pylibjpeg-libjpeg" not in base
    assert any(Requirement(d).name == "pylibjpeg-libjpeg" for d in PYPROJECT["project"]["optional-dependencies"]["gpl-codecs"])


def test_licence_check_catches_gpl():
    assert _GPL.search("GPL-3.0-or-later") and _GPL.search("License :: OSI Approved :: GNU Affero General Public License v3")
    assert _OK.search("LGPL-2.1") and not _GPL.search("MIT | Apache-2.0")


@requires_data(bool(PNG), "real NIH PNGs not found")
def test_runtime_works_with_torch_unimportable(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from _models import tiny_model

    tiny_model(tmp_path / "tiny.onnx")
    code = f"""
import sys, pkgutil, importlib
sys.modules['torch'] = None          # any 'import torch' now raises ImportError
import medhash_sdk
from medhash_sdk import Encoder
enc = Encoder({str(tmp_path / 'tiny.onnx')!r}, providers='cpu')
codes = enc.encode([{str(PNG[0])!r}, {str(PNG[1])!r}])
assert codes.shape == (2, 8), codes.shape
res = enc.analyze({str(PNG[0])!r})
skip = {{'medhash_sdk.backends.tensorrt', 'medhash_sdk.__main__'}}  # tensorrt: imported lazily inside; __main__ runs the CLI
for m in pkgutil.walk_packages(medhash_sdk.__path__, 'medhash_sdk.'):
    if m.name not in skip and not m.name.startswith('medhash_sdk.commands'):
        importlib.import_module(m.name)
import medhash_sdk.cli
medhash_sdk.cli.build_parser()
bad = [k for k, v in sys.modules.items() if (k == 'torch' or k.startswith('torch.')) and v is not None]
assert not bad, bad
print('OK', codes.tobytes().hex())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.startswith("OK"), out.stderr[-3000:]


def test_assets_ship():
    data = PYPROJECT["tool"]["setuptools"]["package-data"]["medhash_sdk"]
    assert "assets/*" in data
    assets = ROOT / "medhash_sdk" / "assets"
    for name in ("MODEL_CARD.md", "ATTRIBUTION.md", "samples/labels.csv"):
        assert (assets / name).is_file(), name
    samples = sorted((assets / "samples").glob("*.png"))
    assert 6 <= len(samples) <= 12
    assert "assets/**/*" in data   # samples/ is a sub-folder
    total = sum(p.stat().st_size for p in assets.rglob("*") if p.is_file())
    assert total <= 25 * 2**20, f"assets weigh {total / 2**20:.1f} MB; the wheel must stay <= 25 MB"


@pytest.mark.slow
def test_wheels_split_runtime_from_training(tmp_path):
    """The runtime wheel holds no training code; the training wheel (export/) holds only it and
    registers its commands in the entry-point group the runtime CLI reads."""
    import zipfile

    for src in (ROOT, ROOT / "export"):
        out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                              "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
    runtime = zipfile.ZipFile(next(tmp_path.glob("medhash_sdk-*.whl"))).namelist()
    training = zipfile.ZipFile(next(tmp_path.glob("medhash_train-*.whl"))).namelist()
    assert any(n.startswith("medhash_sdk/_hamming") for n in runtime)
    assert not [n for n in runtime if n.startswith("medhash_train")]
    assert not [n for n in training if n.startswith("medhash_sdk")]
    entry_points = next(n for n in training if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(next(tmp_path.glob("medhash_train-*.whl"))).read(entry_points).decode()
    assert "[medhash.commands]" in text and "train" in text and "export" in text
