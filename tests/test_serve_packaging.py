"""The serve extra: permissively licensed all the way down, and the viewer page ships."""
from __future__ import annotations

import pytest
from packaging.requirements import Requirement

from test_packaging import _GPL, _OK, PYPROJECT, ROOT, _closure


def _with_extras(reqs: list[str]) -> list[str]:
    """Names of the requirements plus what their extras pull in (uvicorn[standard] -> uvloop...)."""
    import importlib.metadata as md

    names = []
    for text in reqs:
        req = Requirement(text)
        names.append(req.name)
        for extra in req.extras:
            try:
                needs = md.metadata(req.name).get_all("Requires-Dist") or []
            except md.PackageNotFoundError:
                continue
            names += [Requirement(r).name for r in needs
                      if Requirement(r).marker is not None and Requirement(r).marker.evaluate({"extra": extra})]
    return names


def test_serve_extra_is_not_gpl():
    names = _with_extras(PYPROJECT["project"]["optional-dependencies"]["serve"])
    assert "httptools" in names and "uvloop" in names
    assert {"fastapi", "uvicorn", "python-multipart", "pynetdicom", "prometheus-client"} <= set(names)
    licences = _closure(names)
    missing = [k for k, v in licences.items() if v == "NOT INSTALLED"]
    if missing:
        pytest.skip(f'the serve extra is not installed (pip install "medhash-sdk[serve]"): {missing}')
    unknown = [k for k, v in licences.items() if not v]
    assert not unknown, f"no licence metadata: {unknown}"
    gpl = {k: v for k, v in licences.items() if _GPL.search(v) and not _OK.search(v)}
    assert not gpl, f"GPL/AGPL dependencies of the serve extra: {gpl}"


def test_viewer_page_ships_and_loads_nothing_from_elsewhere():
    assert "serve/static/*" in PYPROJECT["tool"]["setuptools"]["package-data"]["medhash_sdk"]
    html = (ROOT / "medhash_sdk" / "serve" / "static" / "viewer.html").read_text()
    for outside in ("http://", "https://", "//cdn", "@import"):
        assert outside not in html, outside
