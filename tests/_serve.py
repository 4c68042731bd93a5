"""Helpers of the service tests: data folders with tokens, DICOM files from real NIH images, a
live uvicorn server in a thread, and the real peers (dcmtk, Orthanc, Chromium) they talk to.

A peer that is not installed skips its test, saying which Debian package to install, except
when CI=true: then the test fails (issue 12's rule: CI must not pass by skipping).
"""
from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _data import NIH_PNG_DIR, NIH_PNGS

IN_CI = os.environ.get("CI", "").lower() == "true"
PATIENT_NAME = "Doe^Jane"
BIRTH_DATE = "19450317"


def need(condition: bool, reason: str) -> None:
    """Skip (outside CI) or fail (CI=true) when a peer or the data is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def need_data() -> None:
    need(len(NIH_PNGS) >= 16, f"the real NIH PNGs are not in {NIH_PNG_DIR} (set MEDHASH_DATA)")


def labels() -> dict[str, list[str]]:
    """image file name -> its NIH labels (empty: No Finding)."""
    out = {}
    with open(NIH_PNG_DIR / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            name = row.pop("image_index")
            row.pop("patient_id", None)
            out[name] = [k for k, v in row.items() if v.strip() in ("1", "1.0")]
    return out


def patients() -> dict[str, str]:
    with open(NIH_PNG_DIR / "labels.csv", newline="") as f:
        return {row["image_index"]: row["patient_id"] for row in csv.DictReader(f)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_data_dir(folder: Path) -> dict[str, str]:
    """A new data folder with a write and a read token -> {"write": token, "read": token}."""
    from medhash_sdk.serve import tokens
    from medhash_sdk.serve.db import Database

    db = Database(folder)
    try:
        return {"write": tokens.create(db, "write", "writer")[1], "read": tokens.create(db, "read", "reader")[1]}
    finally:
        db.close()


def dicom_files(folder: Path, n: int, *, study_date: str = "20240105", modality: str = "CR",
                view: str = "PA", start: int = 0) -> list[Path]:
    """n DICOM files (uncompressed CR) of real NIH radiographs, with patient name, id and birth
    date set (to prove none leaks), one study per NIH patient."""
    import cv2
    from pydicom.uid import generate_uid

    from _dicom_files import make_dataset, save

    folder.mkdir(parents=True, exist_ok=True)
    pats = patients()
    studies: dict[str, str] = {}
    out = []
    for p in NIH_PNGS[start:start + n]:
        px = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        px = cv2.resize(px, (512, 512), interpolation=cv2.INTER_AREA)   # smaller files, same anatomy
        pid = pats.get(p.name, p.stem.split("_")[0])
        study = studies.setdefault(pid, generate_uid())
        ds = make_dataset(np.ascontiguousarray(px), Modality=modality, ViewPosition=view, StudyDate=study_date,
                          StudyInstanceUID=study, SeriesInstanceUID=generate_uid(), PatientName=PATIENT_NAME,
                          PatientID=f"NIH-{pid}", PatientBirthDate=BIRTH_DATE, PatientSex="F",
                          StudyTime="101500", AccessionNumber=f"ACC{pid}", StudyID="1", SeriesNumber=1,
                          InstanceNumber=1, ReferringPhysicianName="")
        out.append(save(ds, folder / f"{p.stem}.dcm"))
    return out


class LiveServer:
    """The service under uvicorn in a thread of this process, on a free port."""

    def __init__(self, service: Any, **config: Any):
        import uvicorn

        from medhash_sdk.serve.app import build

        self.service = service
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(build(service), host="127.0.0.1", port=self.port,
                                                    log_level="warning", access_log=False, **config))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


# ---------------------------------------------------------------- peers
def dcmtk(tool: str) -> str | None:
    """Path of a dcmtk tool. pynetdicom installs Python apps with the same names (storescu, ...),
    so each candidate on PATH is asked for its version."""
    seen = set()
    for d in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin"]:
        p = os.path.join(d, tool)
        if p in seen or not os.access(p, os.X_OK):
            continue
        seen.add(p)
        try:
            v = subprocess.run([p, "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in v.lower():
            return p
    return None


def orthanc() -> tuple[str | None, str | None]:
    """(Orthanc binary, its DICOMweb plugin .so), either None when missing."""
    binary = shutil.which("Orthanc") or (("/usr/sbin/Orthanc") if os.path.exists("/usr/sbin/Orthanc") else None)
    plugin = None
    for d in ("/usr/share/orthanc/plugins", "/usr/lib/orthanc"):
        for p in sorted(Path(d).glob("libOrthancDicomWeb.so*")) if os.path.isdir(d) else []:
            plugin = str(p)
            break
        if plugin:
            break
    return binary, plugin


def chromium() -> tuple[str | None, str | None]:
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    return browser, shutil.which("chromedriver")


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
