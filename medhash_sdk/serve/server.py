"""Start-up of `medhash serve`: the service, the DICOM SCP, uvicorn (HTTP or HTTPS)."""
from __future__ import annotations

import logging
import signal
import sys
from typing import Any

from .service import Service, Settings

log = logging.getLogger("medhash.serve")


def run(settings: Settings, *, log_level: str = "info", ready_file: str | None = None) -> int:
    import uvicorn

    from .app import build

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    service = Service(settings)
    import gc

    gc.collect()
    gc.freeze()   # what start-up built stays: keep it out of every later collection
    scp = None
    try:
        if settings.dicom_port is not None:
            from .dicom import StoreSCP

            scp = StoreSCP(lambda data, source, calling: service.ingest_dicom(data, source, "C-STORE",
                                                                                 f"dicom:{calling}")[:2],
                           ae_title=settings.ae_title, host=settings.host, port=settings.dicom_port,
                           allowed_callers=settings.dicom_allow)
        config = uvicorn.Config(build(service), host=settings.host, port=settings.port, log_level="warning",
                                access_log=False, ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key,
                                timeout_keep_alive=30, backlog=2048, server_header=False)
        server = uvicorn.Server(config)
        scheme = "https" if settings.tls_cert else "http"
        log.info("medhash serve: %d items, model %s, %s://%s:%d/ (data folder %s)", len(service.catalog),
                 service.fingerprint[:12], scheme, settings.host, settings.port, settings.data_dir)
        if ready_file:
            _announce(ready_file, server, scp)
        # uvicorn shuts down gracefully on SIGTERM, then raises the signal again with the handler
        # it found installed; the default one would end the process before the finally below
        # (snapshot, closing the database and the audit log). Ours lets it return.
        signal.signal(signal.SIGTERM, _stopped)
        server.run()
    finally:
        if scp is not None:
            scp.close()
        service.close()
    return 0


def _stopped(signum: int, frame: Any) -> None:
    """SIGTERM after uvicorn's graceful shutdown: nothing left to do but return."""


def _announce(path: str, server: Any, scp: Any) -> None:
    """Write the bound ports to `path` once uvicorn listens (for tests and scripts with port 0)."""
    import json
    import os
    import threading
    import time

    def wait() -> None:
        while not server.started:
            if server.should_exit:
                return
            time.sleep(0.02)
        ports = [s.getsockname()[1] for srv in server.servers for s in srv.sockets]
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:   # written whole, then renamed: a reader never sees half of it
            json.dump({"http": ports[0] if ports else None, "dicom": scp.port if scp is not None else None}, f)
        os.replace(tmp, path)

    threading.Thread(target=wait, daemon=True).start()
