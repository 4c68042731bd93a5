"""`medhash serve` in process (FastAPI's TestClient): the API, tokens, errors, filters, DICOM
uploads, STOW-RS, the audit log, metrics, restarts and model identity. Real NIH radiographs,
the tiny test model (tests/_models.py)."""
from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason='the serve extra is not installed: pip install "medhash-sdk[serve]"')

from _data import NIH_PNGS  # noqa: E402
from _serve import BIRTH_DATE, PATIENT_NAME, dicom_files, labels, make_data_dir, need_data  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Svc:
    """A service on a data folder, with its TestClient and tokens."""

    def __init__(self, folder: Path, model: Path, tokens: dict[str, str] | None = None, **settings):
        from medhash_sdk.serve.app import build
        from medhash_sdk.serve.service import Service, Settings

        self.folder = folder
        self.tokens = tokens if tokens is not None else make_data_dir(folder)
        self.service = Service(Settings(data_dir=folder, model=str(model), providers="cpu", **settings))
        self.client = TestClient(build(self.service))
        self.w, self.r = auth(self.tokens["write"]), auth(self.tokens["read"])

    def add(self, path: Path, item_id: str | None = None, metadata: dict | None = None, **fields):
        data = {k: v for k, v in (("id", item_id), ("metadata", json.dumps(metadata) if metadata else None)) if v}
        data.update(fields)
        return self.client.post("/v1/items", files={"file": (path.name, path.read_bytes())}, data=data,
                                headers=self.w)

    def search(self, json_body=None, file: Path | None = None, fields=None, explain=False, token=None):
        url = "/v1/search" + ("?explain=1" if explain else "")
        headers = token if token is not None else self.r
        if file is not None:
            return self.client.post(url, files={"file": (file.name, file.read_bytes())}, data=fields or {},
                                    headers=headers)
        return self.client.post(url, json=json_body, headers=headers)

    def close(self):
        self.service.close()


@pytest.fixture
def svc(tmp_path, model):
    need_data()
    s = Svc(tmp_path / "data", model)
    yield s
    s.close()


def fresh_index(folder: Path):
    """An Index built straight from the database (seq order), as the issue's check demands."""
    from medhash_sdk import Index

    con = sqlite3.connect(folder / "medhash.sqlite3")
    rows = con.execute("SELECT id, code FROM items ORDER BY seq").fetchall()
    fp, nbits = (con.execute("SELECT value FROM meta WHERE key = ?", (k,)).fetchone()[0]
                 for k in ("model_fingerprint", "nbits"))
    con.close()
    idx = Index(int(nbits), fingerprint=fp)
    if rows:
        idx.add(np.frombuffer(b"".join(c for _, c in rows), np.uint8).reshape(len(rows), -1), ids=[i for i, _ in rows])
    return idx


# ------------------------------------------------------------------ tokens and auth

def test_token_cli_prints_once_and_stores_only_a_hash(tmp_path):
    from medhash_sdk.cli import main

    folder = tmp_path / "d"
    out = subprocess.run([sys.executable, "-m", "medhash_sdk", "token", "create", "--data-dir", str(folder),
                          "--role", "write", "--name", "pacs"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert token.startswith("mh_") and len(token) > 40 and "once" in out.stderr
    raw = b"".join(p.read_bytes() for p in folder.iterdir() if p.is_file())
    assert token.encode() not in raw                     # only the SHA-256 is kept
    import hashlib
    con = sqlite3.connect(folder / "medhash.sqlite3")
    assert con.execute("SELECT name, role, hash FROM tokens").fetchall() == [
        ("pacs", "write", hashlib.sha256(token.encode()).hexdigest())]
    con.close()
    assert main(["token", "create", "--data-dir", str(folder), "--role", "read", "--name", "pacs"]) == 2  # taken
    assert main(["token", "create", "--data-dir", str(folder), "--role", "admin"]) == 2    # bad argument
    assert main(["token", "revoke", "--data-dir", str(folder), "--name", "nobody"]) == 1


def test_auth_401_403_and_public_routes(svc):
    png = NIH_PNGS[0]
    c = svc.client
    assert c.get("/healthz").status_code == 200                       # no token needed
    assert c.get("/").status_code == 200 and "<script>" in c.get("/").text
    for headers in ({}, auth("mh_not-a-token"), {"Authorization": "Basic dXNlcjpwYXNz"}):
        r = c.post("/v1/search", json={"id": "x"}, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        for path in ("/readyz", "/metrics", "/openapi.json", "/v1/items/x"):
            assert c.get(path, headers=headers).status_code == 401, path
    # a read token may not write
    assert c.post("/v1/items", files={"file": (png.name, png.read_bytes())}, headers=svc.r).status_code == 403
    assert c.put("/v1/items/a", files={"file": (png.name, png.read_bytes())}, headers=svc.r).status_code == 403
    assert c.delete("/v1/items/a", headers=svc.r).status_code == 403
    assert c.post("/v1/dicomweb/studies", content=b"", headers={**svc.r, "Content-Type": 'multipart/related; '
                  'type="application/dicom"; boundary=x'}).status_code == 403
    assert svc.add(png, "a").status_code == 201                       # the write token may
    # a token created while the service runs is accepted, a revoked one is not
    from medhash_sdk.serve import tokens
    _, late = tokens.create(svc.service.db, "read", "late")
    assert c.get("/readyz", headers=auth(late)).status_code == 200
    tokens.revoke(svc.service.db, "late")
    svc.service.tokens._loaded = 0.0
    assert c.get("/readyz", headers=auth(late)).status_code == 401


def test_openapi_names_the_fixed_routes(svc):
    doc = svc.client.get("/openapi.json", headers=svc.r).json()
    paths = doc["paths"]
    for path, method in (("/v1/items", "post"), ("/v1/items/{item_id}", "put"), ("/v1/items/{item_id}", "get"),
                         ("/v1/items/{item_id}", "delete"), ("/v1/search", "post"), ("/healthz", "get"),
                         ("/readyz", "get"), ("/metrics", "get"), ("/v1/dicomweb/studies", "post")):
        assert method in paths[path], (path, method)
    body = paths["/v1/search"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer" and doc["security"] == [{"bearer": []}]
    assert paths["/healthz"]["get"]["security"] == [] and "write token" in paths["/v1/items"]["post"]["description"]


# ------------------------------------------------------------------ items

def test_add_get_put_delete(svc):
    a, b = NIH_PNGS[0], NIH_PNGS[1]
    r = svc.add(a, "case-1", {"modality": "DX", "labels": ["Hernia"]})
    assert r.status_code == 201 and r.json() == {"id": "case-1", "outcome": "created"}
    r = svc.add(b, "case-1")
    assert r.status_code == 409 and "exists already" in r.json()["detail"]
    got = svc.client.get("/v1/items/case-1", headers=svc.r).json()
    assert got["metadata"] == {"modality": "DX", "labels": ["Hernia"]} and got["links"]["heatmap"]
    r = svc.client.put("/v1/items/case-1", files={"file": (b.name, b.read_bytes())},
                       data={"metadata": json.dumps({"modality": "CR"})}, headers=svc.w)
    assert r.status_code == 200 and r.json()["outcome"] == "replaced"
    assert svc.client.get("/v1/items/case-1", headers=svc.r).json()["metadata"] == {"modality": "CR"}
    r = svc.client.put("/v1/items/case-2", files={"file": (a.name, a.read_bytes())}, headers=svc.w)
    assert r.status_code == 201
    # the replaced code is b's: a search with b finds case-1 at distance 0
    res = svc.search(file=b).json()["results"]
    assert res[0] == {"id": "case-1", "distance": 0, "metadata": {"modality": "CR"}}
    auto = svc.add(NIH_PNGS[2])
    assert auto.status_code == 201 and len(auto.json()["id"]) == 32     # a random id when none is given
    assert svc.client.delete("/v1/items/case-1", headers=svc.w).status_code == 200
    assert svc.client.get("/v1/items/case-1", headers=svc.r).status_code == 404
    assert svc.client.delete("/v1/items/case-1", headers=svc.w).status_code == 404
    assert "case-1" not in [m["id"] for m in svc.search(file=b, fields={"k": "10"}).json()["results"]]


def test_bad_input_is_4xx_with_one_line_never_500(tmp_path, model):
    need_data()
    s = Svc(tmp_path / "data", model, max_upload=1 << 20, max_pixels=800 * 800)
    try:
        png = NIH_PNGS[0].read_bytes()
        cases = [
            (s.client.post("/v1/items", files={"file": ("x.png", b"not an image")}, headers=s.w), 422, "unreadable image"),
            (s.client.post("/v1/items", files={"file": ("x.png", png[: len(png) // 2])}, headers=s.w), 422, "truncated PNG"),
            (s.client.post("/v1/items", files={"file": ("x.png", b"")}, headers=s.w), 422, "empty"),
            (s.client.post("/v1/items", files={"file": ("x.png", png)}, headers=s.w), 422, "exceeds the limit"),  # pixels
            (s.client.post("/v1/items", files={"file": ("x.png", b"\0" * (2 << 20))}, headers=s.w), 413, "over the limit"),
            (s.client.post("/v1/items", files={"id": (None, "a")}, headers=s.w), 422, "'file'"),
            (s.client.post("/v1/items", content=png, headers={**s.w, "Content-Type": "image/png"}), 415, "multipart"),
            (s.client.post("/v1/items", content=b"garbage", headers={**s.w, "Content-Type": "multipart/form-data"}),
             400, "boundary"),
            (s.client.post("/v1/items", content=b"--b\r\nno headers end", headers={
                **s.w, "Content-Type": "multipart/form-data; boundary=b"}), 400, "malformed"),
            (s.client.post("/v1/search", files=[("file", ("a.png", png)), ("file", ("b.png", png))], headers=s.r),
             400, "one file"),
            (s.client.post("/v1/items", files={"file": ("x.png", png)}, data={"metadata": "{oops"}, headers=s.w), 422, "JSON"),
            (s.client.post("/v1/items", files={"file": ("x.png", png)}, data={"metadata": "[1]"}, headers=s.w), 422, "object"),
            (s.client.post("/v1/items", files={"file": ("x.png", png)}, data={"id": "a/b"}, headers=s.w), 422, "not allowed"),
            (s.client.post("/v1/items", files={"file": ("x.png", png)},
                           data={"metadata": json.dumps({"study_date": "yesterday"})}, headers=s.w), 422, "study_date"),
            (s.search({"id": "a", "k": 0}), 422, "k"),
            (s.search({"id": "a", "k": 1001}), 422, "k"),
            (s.search({"id": "a", "k": "ten"}), 422, "k"),
            (s.search({"k": 3}), 422, "one of"),
            (s.search({"id": "nope"}), 404, "no item"),
            (s.search({"id": "a", "study_date_from": "2024-13-01"}), 422, "date"),
            (s.search(file=NIH_PNGS[0], fields={"k": "x"}), 422, "k must be"),
            (s.client.post("/v1/search", content=b"{", headers={**s.r, "Content-Type": "application/json"}), 422, ""),
            (s.client.post("/v1/search", content=b"id=a", headers={**s.r, "Content-Type": "text/plain"}), 415, ""),
            (s.search({"dicomweb": {"sop_instance_uid": "1.2.3"}}), 400, "--dicomweb-url"),
            (s.client.post("/v1/search?explain=maybe", json={"id": "a"}, headers=s.r), 422, "explain"),
            # searches (JSON above, uploads below) are answered by the gate itself (app.Gate.direct):
            # the same answers as through FastAPI
            (s.client.post("/v1/search", files={"file": ("x.png", b"not an image")}, headers=s.r), 422,
             "unreadable image"),
            (s.client.post("/v1/search", files={"file": ("x.png", png)}, headers=s.r), 422, "exceeds the limit"),
            (s.client.post("/v1/search", files={"file": ("x.png", b"\0" * (2 << 20))}, headers=s.r), 413,
             "over the limit"),
            (s.client.post("/v1/search", files={"k": (None, "3")}, headers=s.r), 422, "'file'"),
            (s.client.post("/v1/search?explain=maybe", files={"file": ("x.png", png)}, headers=s.r), 422, "explain"),
            (s.client.post("/v1/search", files={"file": ("x.png", png)}, data={"kos": "1"}, headers=s.r), 400,
             "--kos-stow-url"),
            (s.client.post("/v1/search", content=b"--b\r\nno headers end", headers={
                **s.r, "Content-Type": "multipart/form-data; boundary=b"}), 400, "malformed"),
        ]
        for r, status, words in cases:
            assert r.status_code == status, (r.status_code, r.text)
            detail = r.json()["detail"]
            assert isinstance(detail, str) and "\n" not in detail and words in detail, detail
    finally:
        s.close()


# ------------------------------------------------------------------ search

def test_encode_pipeline_batches_waiting_images_and_fails_only_the_bad_one():
    """EncodePipeline: what waits while the model runs goes in one model call; an input the
    model refuses fails alone (the batch is retried one by one); a prepare() error is its own."""
    import threading

    from medhash_sdk.serve.encoding import EncodePipeline
    from medhash_sdk.serve.service import BadInput

    class Model:
        def __init__(self) -> None:
            self.batches: list[int] = []
            self.hold = threading.Event()

        def outputs_preprocessed(self, x: np.ndarray) -> dict[str, np.ndarray]:
            self.batches.append(len(x))
            self.hold.wait(10)
            if (x[:, 0, 0, 0] < 0).any():
                raise ValueError("the model refuses a negative pixel")
            logits = np.where(np.arange(16)[None, :] < x[:, 0, 0, :1], 1.0, -1.0)   # value v: v leading ones
            return {"code_logits": logits, "attention": np.ones((len(x), 1, 2, 2), np.float32)}

    model = Model()
    pipe = EncodePipeline(model, decode_threads=3, max_batch=8)
    try:
        first = pipe.submit(lambda: (np.full((1, 2, 2), 1.0, np.float32), "first"))
        while not model.batches:      # the model thread now holds the first image
            threading.Event().wait(0.01)

        def failing() -> tuple[np.ndarray, str]:
            raise BadInput("unreadable image: test")

        values = [3.0, -1.0, 5.0, 8.0]
        futures = [pipe.submit(lambda v=v: (np.full((1, 2, 2), v, np.float32), f"v{v}")) for v in values]
        bad = pipe.submit(failing)
        with pytest.raises(BadInput, match="unreadable"):
            bad.result(10)
        while pipe._q.qsize() < len(values):
            threading.Event().wait(0.01)
        model.hold.set()
        assert first.result(10).context == "first"
        for v, f in zip(values, futures):
            if v < 0:
                with pytest.raises(ValueError, match="refuses"):
                    f.result(10)
                continue
            enc = f.result(10)
            bits = np.unpackbits(enc.code)
            assert enc.context == f"v{v}" and bits.sum() == v and bits[: int(v)].all()
            assert enc.attention.shape == (2, 2)
        assert model.batches[:2] == [1, 4] and sorted(model.batches[2:]) == [1, 1, 1, 1]
    finally:
        model.hold.set()
        pipe.close()


@pytest.mark.parametrize("gather_s", [0.0, 5.0])
def test_encode_pipeline_waits_for_images_being_decoded_but_not_for_a_lone_one(gather_s):
    """The model thread waits (up to gather_s) for images a decode thread is working on, so
    they share one model run; a lone image waits for nobody, whatever gather_s is."""
    import threading
    import time

    from medhash_sdk.serve.encoding import EncodePipeline

    class Model:
        def __init__(self) -> None:
            self.batches: list[int] = []

        def outputs_preprocessed(self, x: np.ndarray) -> dict[str, np.ndarray]:
            self.batches.append(len(x))
            return {"code_logits": np.ones((len(x), 8)), "attention": np.ones((len(x), 1, 2, 2), np.float32)}

    model = Model()
    pipe = EncodePipeline(model, decode_threads=2, max_batch=8, gather_s=gather_s)
    try:
        t0 = time.perf_counter()
        pipe.submit(lambda: (np.zeros((1, 2, 2), np.float32), "lone")).result(10)
        assert time.perf_counter() - t0 < 2.0 and model.batches == [1]
        slow_started = threading.Event()

        def slow() -> tuple[np.ndarray, str]:
            slow_started.set()
            time.sleep(0.3)
            return np.zeros((1, 2, 2), np.float32), "slow"

        b = pipe.submit(slow)
        slow_started.wait(10)
        a = pipe.submit(lambda: (np.zeros((1, 2, 2), np.float32), "fast"))
        assert a.result(10).context == "fast" and b.result(10).context == "slow"
        assert model.batches[1:] == ([2] if gather_s else [1, 1])
    finally:
        pipe.close()


def test_search_equals_a_fresh_index_and_filters_apply_inside_the_scan(svc):
    from medhash_sdk import Encoder

    lab = labels()
    files = NIH_PNGS[:24]
    for i, p in enumerate(files):
        md = {"modality": "DX" if i % 3 else "CR", "view_position": "PA" if i % 2 else "AP",
              "study_date": f"2024-01-{i + 1:02d}", "labels": lab.get(p.name, [])}
        assert svc.add(p, p.stem, md, patient_id=f"P{i % 4}").status_code == 201
    idx = fresh_index(svc.folder)
    enc = Encoder(svc.service.encoder.model_path, providers="cpu")
    q = NIH_PNGS[30]
    code = enc.encode(q)[0]
    # by upload: the same ids and distances as the fresh index (ties in insertion order)
    got = svc.search(file=q, fields={"k": "10"}).json()
    want = idx.search(code, k=10)
    assert [(m["id"], m["distance"]) for m in got["results"]] == list(zip(want.ids.tolist(), want.distances.tolist()))
    assert got["model"] == enc.fingerprint
    # by stored id: itself left out unless asked
    res = svc.search({"id": files[5].stem, "k": 5}).json()["results"]
    want = idx.search(idx.get_codes([files[5].stem])[0], k=5, deny=[files[5].stem])
    assert [m["id"] for m in res] == want.ids.tolist()
    res = svc.search({"id": files[5].stem, "k": 1, "exclude_self": False}).json()["results"]
    assert res[0]["id"] == files[5].stem and res[0]["distance"] == 0
    # filters: k results whenever k rows qualify (applied in the scan, not after it)
    ids = np.array([p.stem for p in files], dtype=object)
    rows = np.arange(len(files))
    allowed = (rows % 3 == 0) & (rows % 2 == 1) & (rows + 1 >= 3) & (rows + 1 <= 20) & (rows % 4 != 1)
    body = {"id": files[1].stem, "k": 2, "modality": ["cr"], "view_position": "PA", "study_date_from": "2024-01-03",
            "study_date_to": "20240120", "exclude_same_patient": True}
    res = svc.search(body).json()["results"]
    want = idx.search(idx.get_codes([files[1].stem])[0], k=2, allow=allowed)
    assert int(allowed.sum()) == 2 and [m["id"] for m in res] == want.ids.tolist()    # all that qualify
    assert len(svc.search({**body, "k": 5}).json()["results"]) == 2                  # fewer than k: no padding
    for m in res:
        md = m["metadata"]
        assert md["modality"] == "CR" and md["view_position"] == "PA" and "2024-01-03" <= md["study_date"] <= "2024-01-20"
    assert set(res[0]) == {"id", "distance", "metadata"}
    # the same filters as multipart fields of an upload
    res = svc.search(file=files[1], fields={"k": "2", "modality": "CR", "view_position": "PA",
                                            "study_date_from": "2024-01-03", "study_date_to": "2024-01-20",
                                            "exclude_same_patient": "true", "patient_id": "P1"}).json()["results"]
    assert [m["id"] for m in res] == want.ids.tolist()
    assert svc.search({"id": files[1].stem, "modality": "MR"}).json()["results"] == []
    assert ids.size == 24


def test_explain_links_give_heatmaps(svc):
    for p in NIH_PNGS[:4]:
        svc.add(p, p.stem)
    out = svc.search(file=NIH_PNGS[5], fields={"k": "2"}, explain=True).json()
    q = out["query"]
    for link in (q["thumbnail"], q["heatmap"], out["results"][0]["heatmap"], out["results"][0]["thumbnail"]):
        r = svc.client.get(link, headers=svc.r)
        assert r.status_code == 200, link
        import cv2
        img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and max(img.shape[:2]) == 256
    heat = cv2.imdecode(np.frombuffer(svc.client.get(q["heatmap"], headers=svc.r).content, np.uint8), cv2.IMREAD_COLOR)
    plain = cv2.imdecode(np.frombuffer(svc.client.get(q["thumbnail"], headers=svc.r).content, np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(heat.astype(int) - plain.astype(int)).mean() > 5       # the heat is drawn
    assert svc.client.get(q["heatmap"]).status_code == 401
    assert svc.client.get("/v1/queries/qnope/heatmap.png", headers=svc.r).status_code == 404


# ------------------------------------------------------------------ DICOM

def test_dicom_upload_and_stow_keep_no_patient_fields(svc, tmp_path):
    files = dicom_files(tmp_path / "dcm", 5)
    import pydicom
    uids = [pydicom.dcmread(f).SOPInstanceUID for f in files]
    r = svc.add(files[0])
    assert r.status_code == 201 and r.json()["id"] == uids[0]          # SOPInstanceUID by default
    md = svc.client.get(f"/v1/items/{uids[0]}", headers=svc.r).json()["metadata"]
    assert md["modality"] == "CR" and md["view_position"] == "PA" and md["study_date"] == "2024-01-05"
    assert md["body_part"] == "CHEST" and md["study_uid"] and md["series_uid"] and md["sop_class_uid"]
    # STOW-RS: three instances and one damaged part
    boundary = "medhash-test-boundary"
    body = io.BytesIO()
    for f in files[1:4] + [None]:
        data = f.read_bytes() if f is not None else files[4].read_bytes()[:400]
        body.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    r = svc.client.post("/v1/dicomweb/studies", content=body.getvalue(),
                        headers={**svc.w, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 202 and r.headers["content-type"].startswith("application/dicom+json")
    ans = r.json()
    stored = [x["00081155"]["Value"][0] for x in ans["00081199"]["Value"]]
    assert stored == uids[1:4]
    assert ans["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    # searching with a DICOM file of the same patient, excluding that patient
    r = svc.search(file=files[1], fields={"k": "10", "exclude_same_patient": "true"})
    assert uids[1] not in [m["id"] for m in r.json()["results"]]
    # nothing anywhere says the patient's name, id or birth date
    everything = [r.text, json.dumps(svc.search({"id": uids[0], "k": 10}, explain=True).json())]
    svc.service.audit.flush()
    everything.append((svc.folder / "audit.jsonl").read_text())
    con = sqlite3.connect(svc.folder / "medhash.sqlite3")
    everything += [json.dumps(row) for row in con.execute("SELECT id, metadata, modality, view_position, study_date, "
                                                           "patient_hash FROM items")]
    con.close()
    for text in everything:
        for secret in (PATIENT_NAME, "Doe", BIRTH_DATE, "NIH-"):
            assert secret not in text


# ------------------------------------------------------------------ audit and metrics

def test_audit_log_records_every_request_of_a_mixed_run(svc):
    from medhash_sdk.serve import tokens
    p = NIH_PNGS
    calls = [
        lambda: svc.add(p[0], "a1"),
        lambda: svc.add(p[1], "a2"),
        lambda: svc.add(p[1], "a2"),                                               # 409
        lambda: svc.search({"id": "a1", "k": 1}),
        lambda: svc.search(file=p[2], fields={"k": "2"}),
        lambda: svc.client.get("/v1/items/a2", headers=svc.r),
        lambda: svc.client.get("/v1/items/zz", headers=svc.r),                     # 404
        lambda: svc.client.delete("/v1/items/a2", headers=svc.r),                  # 403
        lambda: svc.client.delete("/v1/items/a2", headers=svc.w),
        lambda: svc.client.get("/readyz", headers=auth("mh_wrong")),               # 401
        lambda: svc.client.post("/v1/items", files={"file": ("x.png", b"junk")}, headers=svc.w),   # 422
        lambda: svc.client.get("/metrics", headers=svc.r),
    ]
    start = len((svc.folder / "audit.jsonl").read_text().splitlines()) if (svc.folder / "audit.jsonl").exists() else 0
    statuses = [f().status_code for f in calls]
    svc.service.audit.flush()
    lines = [json.loads(x) for x in (svc.folder / "audit.jsonl").read_text().splitlines()[start:]]
    assert [x["status"] for x in lines] == statuses == [201, 201, 409, 200, 200, 200, 404, 403, 200, 401, 422, 200]
    assert [x["token"] for x in lines] == ["writer"] * 3 + ["reader"] * 5 + ["writer", None, "writer", "reader"]
    assert [x["route"] for x in lines][:6] == ["/v1/items", "/v1/items", "/v1/items", "/v1/search", "/v1/search",
                                               "/v1/items/{item_id}"]
    assert lines[3]["query"] == ["a1"] and lines[3]["returned"] == ["a2"]
    assert lines[4]["query"] == [p[2].name] and len(lines[4]["returned"]) == 2
    assert lines[0]["query"] == ["a1"] and lines[8]["query"] == ["a2"]
    for x in lines:
        assert set(x) >= {"time", "token", "route", "status", "query", "returned", "method"}
    assert tokens.ROLES
    text = svc.client.get("/metrics", headers=svc.r).text
    assert 'medhash_requests_total{method="POST",route="/v1/items",status="201"} 2.0' in text
    assert "medhash_items 1.0" in text
    assert 'medhash_encode_errors_total{source="http"} 1.0' in text
    assert 'medhash_request_seconds_bucket{le="+Inf",method="POST",route="/v1/search"} 2.0' in text


# ------------------------------------------------------------------ restarts and model identity

def test_restart_uses_the_snapshot_and_equals_the_database(tmp_path, model, other_model):
    from medhash_sdk.serve.db import DataFolderError

    need_data()
    folder = tmp_path / "data"
    s = Svc(folder, model)
    for p in NIH_PNGS[:12]:
        s.add(p, p.stem)
    s.close()                                                   # writes a snapshot
    snaps = list((folder / "snapshots").glob("index-*.mhi"))
    assert len(snaps) == 1
    s = Svc(folder, model, tokens=s.tokens)
    assert len(s.service.catalog) == 12
    for p in NIH_PNGS[12:16]:
        s.add(p, p.stem)                                        # after the snapshot
    s.service.writer.close()                                    # as if killed: no new snapshot
    s.service.audit.close()
    s.service.db.close()
    s = Svc(folder, model, tokens=s.tokens)
    assert len(s.service.catalog) == 16
    idx = fresh_index(folder)
    for p in NIH_PNGS[:16:5]:
        res = s.search({"id": p.stem, "k": 16, "exclude_self": False}).json()["results"]
        want = idx.search(idx.get_codes([p.stem])[0], k=16)
        assert [(m["id"], m["distance"]) for m in res] == list(zip(want.ids.tolist(), want.distances.tolist()))
    assert s.client.delete(f"/v1/items/{NIH_PNGS[0].stem}", headers=s.w).status_code == 200
    s.close()
    s = Svc(folder, model, tokens=s.tokens)                     # the newest snapshot matches again
    assert len(s.service.catalog) == 15
    s.close()
    # a folder made with one model refuses another, saying why
    from medhash_sdk.serve.service import Service, Settings
    with pytest.raises(DataFolderError, match="holds codes of model"):
        Service(Settings(data_dir=folder, model=str(other_model), providers="cpu"))


def test_runtime_imports_no_service_dependency_and_a_missing_extra_says_how_to_install(tmp_path):
    code = """
import sys
import medhash_sdk, medhash_sdk.cli
from medhash_sdk import Encoder, Index
medhash_sdk.cli.build_parser()
bad = [m for m in ('fastapi', 'uvicorn', 'starlette', 'pynetdicom', 'prometheus_client', 'python_multipart',
                   'highdicom', 'dicomweb_client', 'torch') if m in sys.modules]
assert not bad, bad
print('OK')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "OK", out.stderr[-2000:]
    code = ("import sys; sys.modules['fastapi'] = None; sys.modules['pynetdicom'] = None\n"
            "from medhash_sdk.cli import main\n"
            f"sys.exit(main(['serve', '--data-dir', {str(tmp_path / 'd')!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == ('medhash serve: error: `medhash serve` needs fastapi, pynetdicom: '
                                  'pip install "medhash-sdk[serve]"')
