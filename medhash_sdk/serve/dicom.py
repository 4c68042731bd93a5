"""DICOM in the service: what is kept of an instance, and the C-STORE SCP (pynetdicom).

Kept as metadata: modality, view position, body part, laterality, study date, and the study,
series and SOP instance / class UIDs. Never kept: the patient's name, birth date or id; the
patient id (with its issuer) only becomes a salted hash, for ``exclude_same_patient``.
"""
from __future__ import annotations

import io
import logging
from typing import Any, Callable

from ..readers import DICOM_SUFFIXES

log = logging.getLogger("medhash.serve")


# C-STORE failure statuses (PS3.4 Annex B.2.3 / PS3.7 Annex C)
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000


def looks_like_dicom(data: bytes, filename: str = "") -> bool:
    return data[128:132] == b"DICM" or filename.lower().endswith(tuple(DICOM_SUFFIXES))


def _text(ds: Any, name: str) -> str | None:
    v = ds.get(name)
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def iso_date(da: str | None) -> str | None:
    """DICOM DA (YYYYMMDD) -> YYYY-MM-DD, or None when it is not a valid date."""
    if not da:
        return None
    s = da.strip().replace("-", "").replace(".", "")
    if len(s) != 8 or not s.isdigit():
        return None
    from datetime import date

    try:
        date(int(s[:4]), int(s[4:6]), int(s[6:]))
    except ValueError:
        return None
    return f"{s[:4]}-{s[4:6]}-{s[6:]}"


def instance_metadata(data: bytes) -> tuple[dict[str, Any], str | None]:
    """(metadata kept for a DICOM instance, patient id or None) from its header (pixels not read).

    Raises pydicom's errors on a damaged header; the pixel decoder reports those better, so
    callers decode first.
    """
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    md: dict[str, Any] = {
        "modality": _text(ds, "Modality"),
        "view_position": _text(ds, "ViewPosition"),
        "body_part": _text(ds, "BodyPartExamined"),
        "laterality": _text(ds, "ImageLaterality") or _text(ds, "Laterality"),
        "study_date": iso_date(_text(ds, "StudyDate")),
        "study_uid": _text(ds, "StudyInstanceUID"),
        "series_uid": _text(ds, "SeriesInstanceUID"),
        "sop_instance_uid": _text(ds, "SOPInstanceUID"),
        "sop_class_uid": _text(ds, "SOPClassUID"),
    }
    pid = _text(ds, "PatientID")
    issuer = _text(ds, "IssuerOfPatientID")
    patient = None if pid is None else (f"{issuer}\\{pid}" if issuer else pid)
    return {k: v for k, v in md.items() if v is not None}, patient


class StoreSCP:
    """A C-STORE SCP: every storage SOP class, every transfer syntax pydicom can decode.

    ``ingest(data, source, calling_ae) -> (status, message)`` does the work (the service's add
    path); an instance it cannot read gets a failure status and the association goes on.
    """

    def __init__(self, ingest: Callable[[bytes, str, str], tuple[int, str]], *, ae_title: str,
                 host: str, port: int, allowed_callers: list[str] | None = None):
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        self.ingest = ingest
        ae = AE(ae_title=ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.maximum_pdu_size = 0          # no limit on what we receive
        if allowed_callers:
            ae.require_calling_aet = list(allowed_callers)
        self.ae = ae
        self.host, self.port = host, int(port)
        self._server = ae.start_server((host, int(port)), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = int(self._server.server_address[1])
        log.info("DICOM C-STORE SCP %s listening on %s:%d", ae_title, host, self.port)

    def _on_store(self, event: Any) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception as e:  # noqa: BLE001 - a dataset pynetdicom cannot hand over
            log.warning("C-STORE from %s: unreadable dataset (%s)", calling, type(e).__name__)
            return STATUS_CANNOT_UNDERSTAND
        status, message = self.ingest(data, f"C-STORE from {calling}", calling)
        return status

    def close(self) -> None:
        self._server.shutdown()
