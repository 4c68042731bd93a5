"""`medhash serve` as a real process (`python -m medhash_sdk serve`).

Nothing acknowledged is lost: kill -9 it while 32 clients add items, restart it, and check every
acknowledged item is there once and searches equal a fresh Index built from the database.
HTTPS with a certificate, a clean stop on SIGTERM, and the command's errors."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason='the serve extra is not installed: pip install "medhash-sdk[serve]"')
httpx = pytest.importorskip("httpx")

from _data import NIH_PNGS  # noqa: E402
from _serve import make_data_dir, need_data, wait_for  # noqa: E402
from test_serve import fresh_index  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 32


def start(folder: Path, model: Path, tmp: Path, name: str) -> tuple[subprocess.Popen, str]:
    ready = tmp / f"{name}.json"
    log = open(tmp / f"{name}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "medhash_sdk", "serve", "--data-dir", str(folder),
                             "--model", str(model), "--port", "0", "--ready-file", str(ready),
                             "--providers", "cpu", "--log-level", "warning"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, 120, "the server to listen")
    except AssertionError:
        proc.kill()
        raise
    if proc.poll() is not None:
        raise AssertionError(f"the server exited: {(tmp / f'{name}.log').read_text()[-2000:]}")
    return proc, f"http://127.0.0.1:{json.loads(ready.read_text())['http']}"


def small_pngs() -> list[bytes]:
    """The real radiographs at 256 px (decoding 1024 px files would only slow the test)."""
    import cv2

    out = []
    for p in NIH_PNGS:
        img = cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (256, 256), interpolation=cv2.INTER_AREA)
        out.append(cv2.imencode(".png", img)[1].tobytes())
    return out


@pytest.mark.slow
def test_kill_9_while_32_clients_add(tmp_path, model):
    need_data()
    folder = tmp_path / "data"
    tok = make_data_dir(folder)
    pngs = small_pngs()
    proc, url = start(folder, model, tmp_path, "first")
    acked: list[str] = []
    lock = threading.Lock()
    go_kill = threading.Event()
    errors: list[str] = []

    def client(c: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tok['write']}"}, timeout=60) as h:
            for i in range(1000):
                item = f"c{c:02d}-{i:04d}"
                try:
                    r = h.post("/v1/items", files={"file": ("x.png", pngs[(c * 7 + i) % len(pngs)])},
                               data={"id": item, "metadata": json.dumps({"client": c, "i": i})})
                except httpx.TransportError:
                    return                          # the server is gone: this one was not acknowledged
                if r.status_code != 201:
                    errors.append(f"{item}: {r.status_code} {r.text}")
                    return
                with lock:
                    acked.append(item)
                    if len(acked) >= 160:
                        go_kill.set()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        assert go_kill.wait(300), "the clients did not get 160 items acknowledged"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        for t in threads:
            t.join(120)
    assert not errors, errors[:3]
    assert len(acked) >= 160

    proc, url = start(folder, model, tmp_path, "second")
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tok['read']}"}, timeout=60) as h:
            con = sqlite3.connect(folder / "medhash.sqlite3")
            stored = [r[0] for r in con.execute("SELECT id FROM items ORDER BY seq")]
            con.close()
            assert len(stored) == len(set(stored))                      # none twice
            assert set(acked) <= set(stored)                            # every acknowledged item is there
            ready = h.get("/readyz").json()
            assert ready["items"] == len(stored)                        # the index holds each once
            for item in acked[:: max(1, len(acked) // 40)]:
                assert h.get(f"/v1/items/{item}").status_code == 200
            idx = fresh_index(folder)
            rng = np.random.default_rng(0)
            for item in rng.choice(stored, 12, replace=False):
                res = h.post("/v1/search", json={"id": str(item), "k": 25, "exclude_self": False}).json()["results"]
                want = idx.search(idx.get_codes([str(item)])[0], k=25)
                assert [(m["id"], m["distance"]) for m in res] == list(zip(want.ids.tolist(),
                                                                           want.distances.tolist()))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_tls_and_command_line_errors(tmp_path, model, other_model):
    """HTTPS with --tls-cert/--tls-key (a self-signed certificate made with openssl), and the
    command's one-line errors: exit 2 for bad arguments, 1 for a folder of another model."""
    import shutil

    from _serve import need
    need(shutil.which("openssl") is not None, "openssl is not installed (apt-get install openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    folder = tmp_path / "data"
    tok = make_data_dir(folder)
    ready = tmp_path / "tls.json"
    proc = subprocess.Popen([sys.executable, "-m", "medhash_sdk", "serve", "--data-dir", str(folder), "--model",
                             str(model), "--port", "0", "--ready-file", str(ready), "--tls-cert", str(cert),
                             "--tls-key", str(key), "--providers", "cpu"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, 120, "the TLS server to listen")
        port = json.loads(ready.read_text())["http"]
        import ssl
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert)), timeout=30) as h:
            assert h.get(f"https://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
            r = h.get(f"https://127.0.0.1:{port}/readyz", headers={"Authorization": f"Bearer {tok['read']}"})
            assert r.status_code == 200 and r.json()["items"] == 0
            r = h.post(f"https://127.0.0.1:{port}/v1/items", files={"file": ("x.png", NIH_PNGS[0].read_bytes())},
                       headers={"Authorization": f"Bearer {tok['write']}"})
            assert r.status_code == 201
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)       # no plain HTTP on that port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0                                             # a clean stop ...
    assert [p.name for p in (folder / "snapshots").glob("*.mhi")] == ["index-1-0.mhi"]   # ... with a snapshot

    def medhash(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "medhash_sdk", *args], capture_output=True, text=True,
                              timeout=120, cwd=ROOT)

    for args in (["--tls-cert", str(cert)], ["--port", "70000"], ["--ae-title", "A" * 17],
                 ["--max-upload-mb", "0"], ["--search-threads", "0"],
                 ["--tls-cert", str(cert), "--tls-key", str(tmp_path / "none.pem")]):
        out = medhash("serve", "--data-dir", str(folder), "--model", str(model), *args)
        last = out.stderr.strip().splitlines()[-1]
        assert out.returncode in (1, 2) and last.startswith(("medhash serve: error:", "usage:", "medhash: error")) \
            or "error:" in last, (args, out.stderr)
        assert out.returncode == (1 if "none.pem" in " ".join(args) else 2), (args, out.stderr)
    out = medhash("serve", "--data-dir", str(folder), "--model", str(other_model), "--port", "0")
    assert out.returncode == 1 and "holds codes of model" in out.stderr.strip().splitlines()[-1]
