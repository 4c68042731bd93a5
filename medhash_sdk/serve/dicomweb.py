"""DICOMweb: STOW-RS in (multipart/related parsing with python-multipart, the PS3.18 answer),
WADO-RS / QIDO-RS out to a configured PACS (dicomweb-client).
"""
from __future__ import annotations

import io
import logging
from typing import Any, AsyncIterator

log = logging.getLogger("medhash.serve")

# PS3.18 10.5.3 / PS3.4 failure reasons in the STOW-RS answer
FAILURE_PROCESSING = 0x0110
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_CANNOT_UNDERSTAND = 0xC000
MAX_PARTS = 10_000


class StowError(ValueError):
    """The STOW-RS request itself is wrong (not one of its instances): HTTP 4xx."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def boundary_of(content_type: str) -> bytes:
    from python_multipart.multipart import parse_options_header

    kind, opts = parse_options_header(content_type or "")
    if kind != b"multipart/related":
        raise StowError("STOW-RS needs Content-Type multipart/related; type=\"application/dicom\"", 415)
    t = opts.get(b"type", b"application/dicom").strip(b'"')
    if t != b"application/dicom":
        raise StowError(f"STOW-RS: only type=\"application/dicom\" parts are accepted, got {t.decode(errors='replace')}",
                        415)
    b = opts.get(b"boundary")
    if not b:
        raise StowError("multipart/related without a boundary")
    return b.strip(b'"')


async def parts(stream: AsyncIterator[bytes], boundary: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart body: [(headers, bytes)], read from the request stream."""
    from python_multipart.multipart import MultipartParser

    out: list[tuple[dict[str, str], bytes]] = []
    state: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "data": []}

    def on_part_begin() -> None:
        state.update(headers={}, data=[])

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].decode("latin-1").strip().lower()] = state["value"].decode("latin-1").strip()
        state["field"], state["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"].append(data[start:end])

    def on_part_end() -> None:
        if len(out) >= MAX_PARTS:
            raise StowError(f"more than {MAX_PARTS} parts in one STOW-RS request", 413)
        out.append((state["headers"], b"".join(state["data"])))

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                                        "on_header_value": on_header_value, "on_header_end": on_header_end,
                                        "on_part_data": on_part_data, "on_part_end": on_part_end})
    try:
        async for chunk in stream:
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except StowError:
        raise
    except Exception as e:  # noqa: BLE001 - python-multipart's parse errors
        raise StowError(f"malformed multipart/related body ({e})") from None
    return out


def stow_answer(stored: list[dict[str, Any]], failed: list[dict[str, Any]], base_url: str) -> dict[str, Any]:
    """The STOW-RS answer body (application/dicom+json): Referenced / Failed SOP Sequences."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.RetrieveURL = base_url
    refs = []
    for s in stored:
        item = Dataset()
        item.ReferencedSOPClassUID = s.get("sop_class_uid") or ""
        item.ReferencedSOPInstanceUID = s.get("sop_instance_uid") or ""
        refs.append(item)
    fails = []
    for f in failed:
        item = Dataset()
        item.ReferencedSOPClassUID = f.get("sop_class_uid") or ""
        item.ReferencedSOPInstanceUID = f.get("sop_instance_uid") or ""
        item.FailureReason = int(f.get("reason_code", FAILURE_CANNOT_UNDERSTAND))
        fails.append(item)
    if refs:
        ds.ReferencedSOPSequence = refs
    if fails:
        ds.FailedSOPSequence = fails
    return ds.to_json_dict()


class Source:
    """A PACS's DICOMweb endpoint (e.g. Orthanc's http://pacs:8042/dicom-web): QIDO-RS to find an
    instance's study and series, WADO-RS to fetch it."""

    def __init__(self, url: str, timeout: float = 30.0):
        try:
            from dicomweb_client.api import DICOMwebClient
        except ImportError as e:
            raise ImportError(f"--dicomweb-url needs dicomweb-client: pip install \"medhash-sdk[serve]\" ({e})") from e
        import requests

        self.url = url.rstrip("/")
        session = requests.Session()
        session.request = _with_timeout(session.request, timeout)  # type: ignore[method-assign]
        self.client = DICOMwebClient(url=self.url, session=session)

    def retrieve(self, ref: dict[str, Any]) -> bytes:
        """Bytes (a DICOM Part 10 file) of the instance named by {study_uid?, series_uid?, sop_instance_uid}."""
        from .service import BadInput

        sop = ref.get("sop_instance_uid")
        if not isinstance(sop, str) or not sop.strip():
            raise BadInput("dicomweb.sop_instance_uid is required")
        study, series = ref.get("study_uid"), ref.get("series_uid")
        try:
            if not (study and series):
                found = self.client.search_for_instances(
                    study_instance_uid=study or None,
                    search_filters={"SOPInstanceUID": sop}, fields=["StudyInstanceUID", "SeriesInstanceUID"])
                if not found:
                    raise BadInput(f"the DICOMweb source has no instance {sop}", 404)
                study = found[0]["0020000D"]["Value"][0]
                series = found[0]["0020000E"]["Value"][0]
            ds = self.client.retrieve_instance(study, series, sop)
        except BadInput:
            raise
        except Exception as e:  # noqa: BLE001 - HTTP errors, timeouts, bad answers from the PACS
            status = getattr(getattr(e, "response", None), "status_code", None)
            if status == 404:
                raise BadInput(f"the DICOMweb source has no instance {sop}", 404) from None
            raise BadInput(f"DICOMweb source {self.url}: {type(e).__name__}: {str(e)[:200]}", 502) from None
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()


def _with_timeout(request: Any, timeout: float) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", timeout)
        return request(*args, **kwargs)
    return call


# Study-level attributes a KOS document copies from its study (read from the PACS, never stored)
_STUDY_FIELDS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                 "StudyDate", "StudyTime", "ReferringPhysicianName", "IssuerOfPatientID")


class Destination:
    """Where Key Object Selection documents go: a STOW-RS root (e.g. Orthanc's /dicom-web)."""

    def __init__(self, url: str, timeout: float = 30.0):
        from dicomweb_client.api import DICOMwebClient
        import requests

        self.url = url.rstrip("/")
        session = requests.Session()
        session.request = _with_timeout(session.request, timeout)  # type: ignore[method-assign]
        self.client = DICOMwebClient(url=self.url, session=session)

    def store(self, datasets: list[Any]) -> None:
        self.client.store_instances(datasets)


def send_kos(source: Source | None, destination: Destination | None, query: dict[str, Any],
             results: list[dict[str, Any]]) -> dict[str, Any]:
    """Send the top-k as Key Object Selection documents (highdicom) to the destination.

    A KOS lives in one study and references instances of that study (highdicom refuses more
    than one other study, and a viewer shows a KOS in its study), while similar cases come from
    many studies and patients. So each matched study gets one KOS ("Of Interest", CID 7010)
    referencing its matched instances, with the rank and distance in its description; the
    patient and study attributes it must carry are read from the PACS (QIDO-RS on the
    --dicomweb-url source) at that moment and never stored here. Results that are not DICOM
    instances (no study / series / SOP class UID in their metadata) are listed as skipped.
    """
    from .service import BadInput

    if destination is None:
        raise BadInput("kos: no STOW-RS destination is configured (--kos-stow-url)", 400)
    if source is None:
        raise BadInput("kos: the matched studies' patient module is read from the PACS: start with --dicomweb-url", 400)
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    by_study: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    skipped = []
    for rank, r in enumerate(results, start=1):
        md = r.get("metadata") or {}
        if all(md.get(k) for k in ("study_uid", "series_uid", "sop_class_uid")):
            by_study.setdefault(md["study_uid"], []).append((rank, r))
        else:
            skipped.append(r["id"])
    what = (f"query instance {query['sop_instance_uid']}" if query.get("sop_instance_uid")
            else f"query item {query['id']}" if query.get("id") else "an uploaded query image")
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name="medhash similar-case search"))
    sent = []
    for study_uid, matches in by_study.items():
        try:
            found = source.client.search_for_studies(search_filters={"StudyInstanceUID": study_uid},
                                                     fields=list(_STUDY_FIELDS))
        except Exception as e:  # noqa: BLE001
            raise BadInput(f"kos: the PACS could not describe study {study_uid} ({type(e).__name__})", 502) from None
        if not found:
            skipped += [r["id"] for _, r in matches]
            continue
        study = Dataset.from_json(found[0])
        evidence = []
        for _, r in matches:
            md = r["metadata"]
            ds = Dataset()
            for name in _STUDY_FIELDS:
                if name in study:
                    ds[name] = study[name]
                elif name != "IssuerOfPatientID":
                    setattr(ds, name, "")       # type 2 in the KOS: present, may be empty
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, md["series_uid"]
            ds.SOPInstanceUID, ds.SOPClassUID = r["id"], md["sop_class_uid"]
            evidence.append(ds)
        ranks = ", ".join(f"#{rank} distance {r['distance']}" for rank, r in matches)
        content = hd.ko.KeyObjectSelection(
            document_title=codes.DCM.OfInterest, referenced_objects=evidence, observer_device_context=observer,
            description=f"medhash: similar to {what} ({ranks})"[:1024])
        doc = hd.ko.KeyObjectSelectionDocument(
            evidence=evidence, content=content, series_instance_uid=generate_uid(), series_number=9001,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer="medhash-sdk",
            institution_name=None)
        try:
            destination.store([doc])
        except Exception as e:  # noqa: BLE001
            raise BadInput(f"kos: STOW-RS to {destination.url} failed ({type(e).__name__}: {str(e)[:200]})",
                           502) from None
        sent.append({"study_uid": study_uid, "sop_instance_uid": str(doc.SOPInstanceUID),
                     "references": [r["id"] for _, r in matches]})
    return {"sent": sent, "skipped": skipped}
