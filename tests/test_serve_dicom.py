"""The service against real DICOM peers: dcmtk's storescu sends a folder to the C-STORE SCP;
Orthanc (with its DICOMweb plugin, own config in a temp folder) pushes a study to the SCP
through its REST API, and the service fetches an instance from Orthanc over WADO-RS to search
with it. Missing peers skip with the Debian package to install (fail when CI=true)."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason='the serve extra is not installed: pip install "medhash-sdk[serve]"')
pytest.importorskip("pynetdicom", reason='the serve extra is not installed: pip install "medhash-sdk[serve]"')

from _serve import BIRTH_DATE, PATIENT_NAME, dicom_files, dcmtk, free_port, need, need_data, orthanc, wait_for  # noqa: E402
from test_serve import Svc  # noqa: E402


def scp_for(svc: Svc, **kw):
    from medhash_sdk.serve.dicom import StoreSCP

    service = svc.service
    return StoreSCP(lambda data, source, calling: service.ingest_dicom(data, source, "C-STORE", f"dicom:{calling}")[:2],
                    ae_title="MEDHASH", host="127.0.0.1", port=0, **kw)


def broken_instance(src: Path, dst: Path) -> Path:
    """A well-formed DICOM file whose pixel data is a quarter of what Rows x Columns need."""
    import pydicom

    ds = pydicom.dcmread(src)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 4]
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(dst, enforce_file_format=True)
    return dst


def test_storescu_sends_a_folder(tmp_path, model, caplog):
    need_data()
    storescu = dcmtk("storescu")
    need(storescu is not None, "dcmtk's storescu is not installed (apt-get install dcmtk)")
    import pydicom

    folder = tmp_path / "outgoing"
    files = dicom_files(folder / "a", 6) + dicom_files(folder / "b", 4, start=6, study_date="20231224", view="AP")
    bad = broken_instance(files[0], folder / "b" / "broken.dcm")
    svc = Svc(tmp_path / "data", model)
    scp = scp_for(svc)
    try:
        out = subprocess.run([storescu, "-v", "-aet", "MODALITY1", "-aec", "MEDHASH", "+sd", "+r", "-nh",
                              "127.0.0.1", str(scp.port), str(folder)], capture_output=True, text=True, timeout=300)
        uids = {pydicom.dcmread(f).SOPInstanceUID for f in files}
        bad_uid = pydicom.dcmread(bad, stop_before_pixels=True).SOPInstanceUID
        # storescu's own account: one association; the broken file answered "Cannot understand"
        # (0xC000), every other file "Success", in the same association
        log = out.stderr.splitlines()
        sent = [ln.split("Sending file: ")[1] for ln in log if "Sending file: " in ln]
        answers = [ln.split("Received Store Response ")[1] for ln in log if "Received Store Response" in ln]
        assert len(sent) == len(answers) == len(files) + 1, out.stderr[-2000:]
        assert dict(zip(sent, answers))[str(bad)] == "(Error: CannotUnderstand)"
        assert sorted(answers) == ["(Error: CannotUnderstand)"] + ["(Success)"] * len(files)
        assert sum("Requesting Association" in ln for ln in log) == 1
        for uid in uids:
            assert svc.client.get(f"/v1/items/{uid}", headers=svc.r).status_code == 200, uid
        assert svc.client.get(f"/v1/items/{bad_uid}", headers=svc.r).status_code == 404
        assert len(svc.service.catalog) == len(uids)
        md = svc.client.get(f"/v1/items/{pydicom.dcmread(files[7]).SOPInstanceUID}", headers=svc.r).json()["metadata"]
        assert md["view_position"] == "AP" and md["study_date"] == "2023-12-24" and md["modality"] == "CR"
        # the refusal is logged and audited; nothing names the patient
        assert any(bad_uid in r.getMessage() and "refused" in r.getMessage() for r in caplog.records)
        svc.service.audit.flush()
        audit = [json.loads(x) for x in (svc.folder / "audit.jsonl").read_text().splitlines()]
        stores = [a for a in audit if a["route"] == "C-STORE"]
        assert len(stores) == len(uids) + 1 and {a["token"] for a in stores} == {"dicom:MODALITY1"}
        assert [a["status"] for a in stores if a["query"] == [bad_uid]] == [0xC000]
        text = (svc.folder / "audit.jsonl").read_text() + caplog.text
        assert PATIENT_NAME not in text and BIRTH_DATE not in text and "NIH-" not in text
        # sending the same folder again changes nothing (an instance is kept once)
        subprocess.run([storescu, "-aet", "MODALITY1", "-aec", "MEDHASH", "+sd", "+r", "-nh", "127.0.0.1",
                        str(scp.port), str(folder / "a")], capture_output=True, timeout=300)
        assert len(svc.service.catalog) == len(uids)
    finally:
        scp.close()
        svc.close()


def test_scp_refuses_callers_not_allowed(tmp_path, model):
    need_data()
    storescu = dcmtk("storescu")
    need(storescu is not None, "dcmtk's storescu is not installed (apt-get install dcmtk)")
    files = dicom_files(tmp_path / "out", 1)
    svc = Svc(tmp_path / "data", model)
    scp = scp_for(svc, allowed_callers=["PACS1"])
    try:
        out = subprocess.run([storescu, "-aet", "INTRUDER", "-aec", "MEDHASH", "127.0.0.1", str(scp.port),
                              str(files[0])], capture_output=True, text=True, timeout=120)
        assert out.returncode != 0 and len(svc.service.catalog) == 0
        out = subprocess.run([storescu, "-aet", "PACS1", "-aec", "MEDHASH", "127.0.0.1", str(scp.port),
                              str(files[0])], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr and len(svc.service.catalog) == 1
    finally:
        scp.close()
        svc.close()


class Orthanc:
    """Orthanc with its own configuration and storage in a temp folder, on free ports."""

    def __init__(self, folder: Path, binary: str, plugin: str, modalities: dict[str, list]):
        folder.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        config = {"Name": "medhash-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
                  "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "ORTHANC",
                  "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpServerEnabled": True,
                  "DicomModalities": modalities, "Plugins": [plugin],
                  "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "wb")
        self.proc = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=self.log, stderr=subprocess.STDOUT)
        import httpx

        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.http_port}", timeout=60)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"Orthanc exited: {(folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                return self.http.get("/system").status_code == 200
            except Exception:  # noqa: BLE001 - not listening yet
                return False
        wait_for(up, 60, "Orthanc to start")

    @property
    def dicomweb(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def test_orthanc_pushes_a_study_and_the_service_fetches_by_uid(tmp_path, model):
    need_data()
    binary, plugin = orthanc()
    need(binary is not None, "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    need(plugin is not None, "Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
    import pydicom

    files = dicom_files(tmp_path / "dcm", 9)
    uids = [pydicom.dcmread(f).SOPInstanceUID for f in files]
    svc = Svc(tmp_path / "data", model)
    scp = scp_for(svc)
    pacs = Orthanc(tmp_path / "orthanc", binary, plugin, {"medhash": ["MEDHASH", "127.0.0.1", scp.port]})
    svc.service.dicomweb = None
    try:
        from medhash_sdk.serve.dicomweb import Source

        svc.service.dicomweb = Source(pacs.dicomweb)
        ids = [pacs.http.post("/instances", content=f.read_bytes()).json() for f in files]
        studies = sorted({x["ParentStudy"] for x in ids[:8]})
        # Orthanc pushes the studies of the first 8 instances to the SCP (C-STORE)
        r = pacs.http.post("/modalities/medhash/store", json={"Resources": studies, "Synchronous": True})
        assert r.status_code == 200, r.text
        for uid in uids[:8]:
            assert svc.client.get(f"/v1/items/{uid}", headers=svc.r).status_code == 200
        assert len(svc.service.catalog) == 8
        # the ninth stays in the PACS: the service fetches it by UID (QIDO-RS then WADO-RS) and searches
        got = svc.search({"dicomweb": {"sop_instance_uid": uids[8]}, "k": 5}, explain=True)
        assert got.status_code == 200, got.text
        by_file = svc.search(file=files[8], fields={"k": "5"}).json()
        body = got.json()
        assert body["query"]["source"] == "dicomweb" and body["query"]["sop_instance_uid"] == uids[8]
        assert [(m["id"], m["distance"]) for m in body["results"]] == \
            [(m["id"], m["distance"]) for m in by_file["results"]]
        assert svc.client.get(body["query"]["heatmap"], headers=svc.r).status_code == 200
        # with study and series given, WADO-RS directly; an unknown UID is a 404 with a reason
        ds = pydicom.dcmread(files[3])
        direct = svc.search({"dicomweb": {"sop_instance_uid": uids[3], "study_uid": ds.StudyInstanceUID,
                                          "series_uid": ds.SeriesInstanceUID}, "k": 3, "exclude_same_patient": True})
        assert direct.status_code == 200 and uids[3] not in [m["id"] for m in direct.json()["results"]]
        missing = svc.search({"dicomweb": {"sop_instance_uid": "1.2.3.4.5.6.7"}})
        assert missing.status_code == 404 and "no instance" in missing.json()["detail"]
        assert PATIENT_NAME not in got.text + direct.text
        # Key Object Selection documents of the top-k, sent back to Orthanc over STOW-RS (highdicom)
        assert svc.search({"id": uids[0], "kos": True}).status_code == 400          # no destination yet
        from medhash_sdk.serve.dicomweb import Destination
        svc.service.kos_destination = Destination(pacs.dicomweb)
        r = svc.search({"id": uids[0], "k": 4, "kos": True})
        assert r.status_code == 200, r.text
        kos = r.json()["kos"]
        top = [m["id"] for m in r.json()["results"]]
        assert sorted(x for d in kos["sent"] for x in d["references"]) == sorted(top) and not kos["skipped"]
        by_uid = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: pydicom.dcmread(f, stop_before_pixels=True)
                  for f in files}
        for d in kos["sent"]:
            found = pacs.http.post("/tools/find", json={"Level": "Instance", "Query": {"SOPInstanceUID": d["sop_instance_uid"]}}).json()
            assert len(found) == 1
            tags = pacs.http.get(f"/instances/{found[0]}/tags", params={"simplify": ""}).json()
            assert tags["Modality"] == "KO" and tags["StudyInstanceUID"] == d["study_uid"]
            refs = [x["ReferencedSOPInstanceUID"] for st in tags["CurrentRequestedProcedureEvidenceSequence"]
                    for se in st["ReferencedSeriesSequence"] for x in se["ReferencedSOPSequence"]]
            assert sorted(refs) == sorted(d["references"])
            original = by_uid[d["references"][0]]
            assert tags["PatientID"] == original.PatientID                  # filed under the right patient
            assert tags["ConceptNameCodeSequence"][0]["CodeMeaning"] == "Of Interest"
        assert PATIENT_NAME not in r.text and BIRTH_DATE not in r.text
    finally:
        pacs.stop()
        scp.close()
        svc.close()
        time.sleep(0)
