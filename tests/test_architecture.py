"""The runtime's imports follow the layers drawn in docs/architecture.md (read from its table),
and the runtime never imports the training side or torch."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medhash_sdk"


def _layers() -> dict[str, int]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    layer_of: dict[str, int] = {}
    for layer, modules in re.findall(r"^\| (\d+) \| ([^|]+) \|", text, flags=re.M):
        for name in modules.split(","):
            layer_of[name.strip()] = int(layer)
    return layer_of


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name or "__init__"] = f
    return out


def _imports(name: str, path: Path) -> set[str]:
    """medhash_sdk-relative module names imported by one module (and any top-level packages)."""
    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[:len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                target = ".".join([*base, *( [node.module] if node.module else [])])
                names = [target] if node.module else [".".join([*base, a.name]) for a in node.names]
                found.update(n for n in names if n)
            elif node.module:
                found.add("/" + node.module)
        elif isinstance(node, ast.Import):
            found.update("/" + a.name for a in node.names)
    return found


def test_every_runtime_module_has_a_layer():
    layers = _layers()
    missing = sorted(set(_modules()) - set(layers) - {"__init__", "_hamming"})
    assert not missing, f"add these modules to the layer table of docs/architecture.md: {missing}"
    stale = sorted(set(layers) - set(_modules()))
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"


def test_imports_follow_the_layers():
    layers = _layers()
    modules = _modules()
    bad = []
    for name, path in modules.items():
        if name == "__init__":
            continue
        for dep in _imports(name, path):
            if dep.startswith("/"):
                continue
            dep = dep if dep in modules else dep.rsplit(".", 1)[0]   # `from . import metrics` style
            if dep in ("", "__init__", "_hamming") or dep not in layers:
                continue
            if layers[dep] > layers[name]:
                bad.append(f"{name} (layer {layers[name]}) imports {dep} (layer {layers[dep]})")
    assert not bad, "imports against docs/architecture.md:\n" + "\n".join(bad)


def test_runtime_never_imports_training_or_torch():
    for name, path in _modules().items():
        for dep in _imports(name, path):
            top = dep.lstrip("/").split(".")[0]
            assert top not in ("torch", "medhash_train", "torchvision"), f"medhash_sdk.{name} imports {dep}"
