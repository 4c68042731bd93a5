"""`medhash serve`: the similar-case service (HTTP + DICOM) above the runtime.

Layers (each module imports only those above it in this list, plus the runtime):

    groups    take what waits on a queue as one group (writer, encoder, scanner share it)
    db        SQLite data folder: items (the source of truth), images, tokens, meta
    tokens    bearer tokens: created once, stored as SHA-256, roles read / write
    catalog   the in-memory Index plus the filter columns, rebuilt from the database
    writer    one thread that commits writes in groups (durable before anyone is answered)
    encoding  decode threads feeding one micro-batching model thread; thumbnails and heatmaps
    dicom     metadata of DICOM instances (no patient fields kept), the C-STORE SCP
    dicomweb  STOW-RS parsing and answers, the WADO-RS / QIDO-RS client, KOS output
    audit     the append-only JSON-lines audit log
    metrics   Prometheus metrics
    service   the operations (add, get, delete, search) that the routes and the SCP share
    forms     multipart/form-data uploads parsed off the event loop, in one call
    app       the FastAPI application (routes, errors, the viewer page) inside the gate (auth,
              upload limit, audit, metrics; it answers searches by upload itself)
    server    start-up: data folder, model, SCP, uvicorn

The runtime (``medhash_sdk`` without this subpackage) never imports it; its dependencies are
the ``serve`` extra: ``pip install "medhash-sdk[serve]"``.
"""
from __future__ import annotations

import importlib

INSTALL_HINT = 'pip install "medhash-sdk[serve]"'

#: import name -> distribution, for the install hint
_REQUIRED = {
    "fastapi": "fastapi",
    "uvicorn": "uvicorn",
    "python_multipart": "python-multipart",
    "pynetdicom": "pynetdicom",
    "prometheus_client": "prometheus-client",
}


def require() -> None:
    """Raise ImportError naming the missing packages and the install command, if any is missing."""
    missing = []
    for module, dist in _REQUIRED.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(dist)
    if missing:
        raise ImportError(f"`medhash serve` needs {', '.join(missing)}: {INSTALL_HINT}")
