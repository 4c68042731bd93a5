"""What the service does, independent of HTTP: add, replace, get, delete, search, ingest DICOM.

The routes (app.py), the C-STORE SCP (dicom.py) and STOW-RS all call these. Methods block
(decoding, the model, the database) and run in worker threads, never on the event loop; the
``*_async`` ones wait on the event loop for the decode, model and scanner threads instead.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import quote

import numpy as np

from ..exceptions import ImageReadError, MedhashError, UnsupportedImageError
from ..readers import MAX_PIXELS
from .audit import AUDIT_NAME, AuditLog
from .catalog import Catalog, Filters, LoopScanner, Scanner, norm_term
from .db import Database
from .dicom import (STATUS_CANNOT_UNDERSTAND, STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS, instance_metadata,
                    iso_date, looks_like_dicom)
from .encoding import EncodePipeline, Encoded, decode, heatmap_png, pack_attention, thumbnail, unpack_attention
from .metrics import Metrics
from .tokens import TokenCache
from .writer import ADD, DELETE, KEEP, PUT, Conflict, NewItem, NotFound, StorageError, Writer

log = logging.getLogger("medhash.serve")

MAX_K = 1000
DEFAULT_MAX_UPLOAD = 64 << 20
MAX_METADATA_BYTES = 64 << 10
_ID = re.compile(r"^[^\x00-\x1f\x7f/\\?#%]{1,256}$")
T = TypeVar("T")


class BadInput(ValueError):
    """The request is wrong; `status` is the HTTP status to answer with (4xx), the message one line."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(" ".join(str(message).split()))
        self.status = status


@dataclass
class Settings:
    data_dir: Path
    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    dicom_port: int | None = None
    ae_title: str = "MEDHASH"
    dicom_allow: list[str] | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    max_upload: int = DEFAULT_MAX_UPLOAD
    max_pixels: int = MAX_PIXELS
    dicomweb_url: str | None = None      # WADO-RS / QIDO-RS source (a PACS), e.g. http://pacs:8042/dicom-web
    kos_stow_url: str | None = None      # where Key Object Selection documents are sent (STOW-RS)
    snapshot_interval: float = 300.0     # seconds between index snapshots when items changed
    search_threads: int = 1              # cores one search scans with (concurrent requests use the others)
    max_batch: int = 32                  # images per model run
    decode_threads: int | None = None    # threads decoding uploads (None: two per core, at least 4)
    providers: Any = "auto"


@dataclass
class Query:
    """What a search runs on: a code, and where it came from."""

    code: np.ndarray
    source: str                               # "upload", "item", "dicomweb"
    item_id: str | None = None
    seq: int | None = None
    patient_hash: str | None = None
    dicom: dict[str, Any] = field(default_factory=dict)
    thumbnail: bytes | None = None
    attention: np.ndarray | None = None
    data: bytes | None = None                 # the DICOM query itself, for a KOS document


def check_id(item_id: Any) -> str:
    if not isinstance(item_id, str) or not _ID.match(item_id) or item_id != item_id.strip():
        raise BadInput(f"id {str(item_id)[:80]!r} is not allowed: 1-256 characters, no control characters, "
                       "no '/', '\\', '?', '#' or '%', no leading or trailing spaces")
    return item_id


def parse_date(value: Any, name: str) -> int | None:
    """YYYY-MM-DD or YYYYMMDD -> int YYYYMMDD (None for empty); BadInput otherwise."""
    if value is None or value == "":
        return None
    iso = iso_date(str(value))
    if iso is None:
        raise BadInput(f"{name} must be a date YYYY-MM-DD (or YYYYMMDD), got {str(value)[:40]!r}")
    return int(iso.replace("-", ""))


def parse_metadata(text: Any) -> dict[str, Any]:
    if text is None or text == "":
        return {}
    if isinstance(text, dict):
        md = text
    else:
        if len(text) > MAX_METADATA_BYTES:
            raise BadInput(f"metadata is over {MAX_METADATA_BYTES // 1024} KiB", 413)
        try:
            md = json.loads(text)
        except ValueError as e:
            raise BadInput(f"metadata is not valid JSON ({e})") from None
    if not isinstance(md, dict):
        raise BadInput("metadata must be a JSON object")
    if len(json.dumps(md)) > MAX_METADATA_BYTES:
        raise BadInput(f"metadata is over {MAX_METADATA_BYTES // 1024} KiB", 413)
    return md


def terms(value: Any, name: str) -> list[str] | None:
    """A filter given as one string or a list of strings -> list (None: no filter)."""
    if value is None:
        return None
    vals = [value] if isinstance(value, str) else value
    if not isinstance(vals, list) or not all(isinstance(v, str) for v in vals):
        raise BadInput(f"{name} must be a string or a list of strings")
    vals = [v for v in (v.strip() for v in vals) if v]
    if not vals:
        return None
    if len(vals) > 64:
        raise BadInput(f"{name}: at most 64 values")
    return vals


def default_decode_threads() -> int:
    """Two decoding threads per core, at least 4: enough that a core is never left waiting while
    another thread holds the GIL, few enough that each keeps taking the next upload."""
    from .._system import available_cpus

    return max(4, 2 * available_cpus())


class QueryCache:
    """Recent uploaded queries (thumbnail + attention) for their heatmap links; newest 512, 15 min."""

    def __init__(self, size: int = 512, ttl: float = 900.0):
        self.size, self.ttl = size, ttl
        self._d: OrderedDict[str, tuple[float, bytes, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, thumb: bytes, attention: np.ndarray) -> str:
        qid = "q" + secrets.token_hex(12)
        with self._lock:
            self._d[qid] = (time.monotonic(), thumb, attention)
            while len(self._d) > self.size:
                self._d.popitem(last=False)
        return qid

    def get(self, qid: str) -> tuple[bytes, np.ndarray] | None:
        with self._lock:
            v = self._d.get(qid)
        if v is None or time.monotonic() - v[0] > self.ttl:
            return None
        return v[1], v[2]


class Service:
    def __init__(self, settings: Settings, encoder: Any = None):
        from ..encoder import Encoder

        self.settings = settings
        self.encoder = encoder if encoder is not None else Encoder(
            settings.model, providers=settings.providers, max_pixels=settings.max_pixels)
        self.fingerprint = self.encoder.fingerprint
        self.nbits = self.encoder.nbits
        self.pad_to_square = bool(self.encoder.card.preprocessing.pad_to_square)
        self.db = Database(settings.data_dir)
        self.db.check_model(self.fingerprint, self.nbits, os.path.abspath(self.encoder.model_path))
        self.catalog = Catalog.rebuild(self.db, self.nbits, self.fingerprint)
        self.metrics = Metrics(lambda: len(self.catalog))
        self.pipeline = EncodePipeline(self.encoder, decode_threads=settings.decode_threads or default_decode_threads(),
                                       max_batch=settings.max_batch, on_batch=self.metrics.on_batch)
        self._to_network_input = self.encoder.loader()
        self.writer = Writer(self.db, self.catalog, on_commit=self.metrics.on_commit)
        self.scanner = Scanner(self.catalog, settings.search_threads, on_scan=self.metrics.scan.observe)
        self.loop_scanner = LoopScanner(self.catalog, settings.search_threads, on_scan=self.metrics.scan.observe)
        self.audit = AuditLog(Path(settings.data_dir) / AUDIT_NAME)
        self.tokens = TokenCache(self.db)
        self.queries = QueryCache()
        self._snap_changes = 0
        self._stop = threading.Event()
        self._snapper = threading.Thread(target=self._snapshot_loop, name="medhash-snapshots", daemon=True)
        self._snapper.start()
        self.dicomweb: Any = None
        self.kos_destination: Any = None
        if settings.dicomweb_url:
            from .dicomweb import Source

            self.dicomweb = Source(settings.dicomweb_url)
        if settings.kos_stow_url:
            from .dicomweb import Destination

            self.kos_destination = Destination(settings.kos_stow_url)

    # ------------------------------------------------------------ state
    @property
    def ready(self) -> bool:
        return self.writer.broken is None

    def close(self) -> None:
        self._stop.set()
        self.writer.close()
        self.pipeline.close()
        self.scanner.close()
        self._snapper.join(5)
        try:
            if self.writer.changes != self._snap_changes:
                self.catalog.snapshot(self.db.folder)
        except OSError as e:
            log.warning("no snapshot at shutdown: %s", e)
        self.audit.close()
        self.db.close()

    def _snapshot_loop(self) -> None:
        while not self._stop.wait(self.settings.snapshot_interval):
            changes = self.writer.changes
            if changes != self._snap_changes:
                try:
                    self.catalog.snapshot(self.db.folder)
                    self._snap_changes = changes
                except OSError as e:
                    log.warning("snapshot failed: %s", e)

    # ------------------------------------------------------------ building items
    def _decode(self, data: bytes, filename: str, via: str) -> Any:
        if not data:
            raise BadInput("the file is empty")
        try:
            return decode(data, filename or "upload", max_pixels=self.settings.max_pixels,
                          suffix=os.path.splitext(filename or "")[1])
        except UnsupportedImageError as e:   # too many pixels, a transfer syntax without a decoder
            self.metrics.encode_errors.labels(via).inc()
            raise BadInput(f"image refused: {e.reason}", 422) from None
        except ImageReadError as e:
            self.metrics.encode_errors.labels(via).inc()
            raise BadInput(f"unreadable image: {e.reason}", 422) from None
        except ValueError as e:   # a bad frame number and the like
            self.metrics.encode_errors.labels(via).inc()
            raise BadInput(f"unreadable image: {e}", 422) from None

    def _preparer(self, via: str, read: Callable[[], tuple[bytes, str]],
                  describe: Callable[[Any, bytes], T]) -> Callable[[], tuple[np.ndarray, T]]:
        """The decode thread's part for EncodePipeline: read() -> (file bytes, file name), decode
        them, describe(image, bytes) (the result's context), the network input."""
        def prepare() -> tuple[np.ndarray, T]:
            data, filename = read()
            img = self._decode(data, filename, via)
            context = describe(img, data)
            try:
                x = self._to_network_input(img.pixels)
            except (MedhashError, ValueError, TypeError) as e:
                raise self._not_encoded(e, via) from None
            return x, context
        return prepare

    def _not_encoded(self, e: Exception, via: str) -> BadInput:
        if isinstance(e, BadInput):
            return e
        self.metrics.encode_errors.labels(via).inc()
        return BadInput(f"the image could not be encoded: {e}", 422)

    def _encoded(self, future: Future[Encoded[T]], via: str) -> Encoded[T]:
        """Wait for a pipeline result in a worker thread; model failures become BadInput (422)."""
        try:
            return future.result()
        except (MedhashError, ValueError, TypeError) as e:
            raise self._not_encoded(e, via) from None

    def prepare(self, data: bytes, filename: str = "", item_id: str | None = None,
                metadata: dict[str, Any] | None = None, patient_id: str | None = None,
                via: str = "http") -> NewItem:
        """Decode, encode and describe one uploaded file (nothing is stored yet)."""
        if item_id is not None:
            check_id(item_id)
        for key in ("modality", "view_position"):
            if (metadata or {}).get(key) is not None and not isinstance(metadata[key], str):  # type: ignore[index]
                raise BadInput(f"metadata.{key} must be a string")
        parse_date((metadata or {}).get("study_date"), "metadata.study_date")   # cheap checks first

        def describe(img: Any, data: bytes) -> NewItem:
            """Everything but the code, in the decode thread (the DICOM header, checks, thumbnail)."""
            md: dict[str, Any] = {}
            dicom_patient = None
            if img.facts.get("format") == "dicom" or looks_like_dicom(data, filename):
                try:
                    md, dicom_patient = instance_metadata(data)
                except Exception as e:  # noqa: BLE001 - decoded pixels but unreadable header fields
                    raise BadInput(f"unreadable DICOM header ({type(e).__name__})") from None
            caller = dict(metadata or {})
            given_patient = caller.pop("patient_id", None)
            patient = patient_id if patient_id is not None or given_patient is None else str(given_patient)
            md.update(caller)
            new_id = item_id if item_id is not None else md.get("sop_instance_uid")
            if new_id is None:
                new_id = secrets.token_hex(16)
            check_id(new_id)
            modality, view = norm_term(md.get("modality")), norm_term(md.get("view_position"))
            study_date = None
            if md.get("study_date") is not None:
                study_date = parse_date(md["study_date"], "metadata.study_date")
                if study_date is not None:
                    md["study_date"] = f"{study_date // 10000:04d}-{study_date // 100 % 100:02d}-{study_date % 100:02d}"
            return NewItem(id=new_id, code=b"", metadata=md, modality=modality, view_position=view,
                           study_date=study_date, patient_hash=self.db.patient_hash(patient or dicom_patient),
                           thumbnail=thumbnail(img.pixels), attention=b"", att_h=0, att_w=0)

        enc = self._encoded(self.pipeline.submit(self._preparer(via, lambda: (data, filename), describe)), via)
        item = enc.context
        item.code = enc.code.tobytes()
        item.attention, item.att_h, item.att_w = pack_attention(enc.attention)
        return item

    def store(self, item: NewItem, mode: str) -> str:
        """Commit one item; returns created / replaced / exists once it is durable."""
        return self._wait(self.writer.submit(mode, item.id, item))

    @staticmethod
    def _wait(future: Any) -> Any:
        try:
            return future.result()
        except StorageError as e:
            raise BadInput(str(e), 503) from None

    def add(self, data: bytes, filename: str, item_id: str | None, metadata: Any, patient_id: str | None,
            replace: bool = False) -> tuple[str, str]:
        item = self.prepare(data, filename, item_id, parse_metadata(metadata), patient_id)
        try:
            outcome = self.store(item, PUT if replace else ADD)
        except Conflict as e:
            raise BadInput(str(e), 409) from None
        return item.id, outcome

    def delete(self, item_id: str) -> None:
        try:
            self._wait(self.writer.submit(DELETE, check_id(item_id)))
        except NotFound as e:
            raise BadInput(str(e), 404) from None

    def get(self, item_id: str) -> dict[str, Any]:
        row = self.db.get(check_id(item_id))
        if row is None:
            raise BadInput(f"no item {item_id!r}", 404)
        return {"id": row.id, "metadata": json.loads(row.metadata), "created": row.created,
                "links": self.links(row.id)}

    @staticmethod
    def links(item_id: str) -> dict[str, str]:
        q = quote(item_id, safe="")
        return {"thumbnail": f"/v1/items/{q}/thumbnail.jpg", "heatmap": f"/v1/items/{q}/heatmap.png"}

    def image(self, item_id: str, kind: str) -> bytes:
        """An item's thumbnail (JPEG) or attention heatmap (PNG)."""
        found = self.db.image_of(check_id(item_id))
        if found is None:
            raise BadInput(f"no image stored for {item_id!r}", 404)
        thumb, att, h, w = found
        return thumb if kind == "thumbnail" else heatmap_png(thumb, unpack_attention(att, h, w), self.pad_to_square)

    def query_image(self, qid: str, kind: str) -> bytes:
        found = self.queries.get(qid)
        if found is None:
            raise BadInput("this query's images have expired (kept 15 minutes): search again", 404)
        thumb, att = found
        return thumb if kind == "thumbnail" else heatmap_png(thumb, att, self.pad_to_square)

    # ------------------------------------------------------------ DICOM in (C-STORE, STOW-RS)
    def ingest_dicom(self, data: bytes, source: str, via: str, who: str) -> tuple[int, str, dict[str, Any]]:
        """Store one DICOM instance -> (C-STORE status, outcome or reason, its UIDs). Never raises."""
        t0 = time.perf_counter()
        uids: dict[str, Any] = {}
        try:
            try:
                md, _ = instance_metadata(data)
                uids = {k: md.get(k) for k in ("sop_instance_uid", "sop_class_uid", "study_uid", "series_uid")}
            except Exception:  # noqa: BLE001 - prepare() reports what is wrong with the file
                pass
            item = self.prepare(data, "instance.dcm", None, None, None, via=via)
            outcome = self.store(item, KEEP)
            status, msg = STATUS_SUCCESS, outcome
        except BadInput as e:
            status = STATUS_OUT_OF_RESOURCES if e.status == 503 else STATUS_CANNOT_UNDERSTAND
            msg = str(e)
            log.warning("%s: instance %s refused: %s", source, uids.get("sop_instance_uid", "?"), msg)
        except Exception as e:  # noqa: BLE001 - one bad instance must not end the association
            status, msg = STATUS_CANNOT_UNDERSTAND, f"{type(e).__name__}: {e}"
            log.error("%s: instance %s failed", source, uids.get("sop_instance_uid", "?"), exc_info=True)
        self.metrics.dicom.labels(via, "stored" if status == STATUS_SUCCESS else "refused").inc()
        self.audit.write({"token": who, "role": "dicom", "method": via, "route": via,
                          "status": status, "ms": round((time.perf_counter() - t0) * 1e3, 2),
                          "query": [uids["sop_instance_uid"]] if uids.get("sop_instance_uid") else [],
                          "returned": [], **({"reason": msg} if status != STATUS_SUCCESS else {})})
        return status, msg, uids

    # ------------------------------------------------------------ search
    def _upload_preparer(self, unpack: Callable[[], tuple[bytes, str, str | None]],
                         explain: bool) -> Callable[[], tuple[np.ndarray, Query]]:
        """The query of a search by upload, none of it on the event loop: unpack() gives (file
        bytes, file name, patient id) in a decode thread (parsing the form there), then the
        decoding; query_of() turns the pipeline's result into the Query."""
        patient: list[str | None] = [None]

        def read() -> tuple[bytes, str]:
            data, filename, patient[0] = unpack()
            return data, filename

        def describe(img: Any, data: bytes) -> Query:
            dicom_md: dict[str, Any] = {}
            patient_id = patient[0]
            if img.facts.get("format") == "dicom":
                try:
                    dicom_md, dicom_patient = instance_metadata(data)
                except Exception:  # noqa: BLE001
                    dicom_patient = None
                patient_id = patient_id or dicom_patient
            return Query(np.zeros(0, np.uint8), "upload", patient_hash=self.db.patient_hash(patient_id),
                         dicom=dicom_md, thumbnail=thumbnail(img.pixels) if explain else None,
                         data=data if dicom_md else None)

        return self._preparer("search", read, describe)

    @staticmethod
    def query_of(enc: Encoded[Query]) -> Query:
        q = enc.context
        q.code, q.attention = enc.code, enc.attention
        return q

    def query_from_upload(self, data: bytes, filename: str, patient_id: str | None, explain: bool) -> Query:
        """Blocking: for worker threads."""
        prepare = self._upload_preparer(lambda: (data, filename, patient_id), explain)
        return self.query_of(self._encoded(self.pipeline.submit(prepare), "search"))

    async def query_from_upload_async(self, unpack: Callable[[], tuple[bytes, str, str | None]],
                                      explain: bool) -> Query:
        """On the event loop: waits for the decode and model threads without holding a worker thread."""
        try:
            enc = await self.pipeline.encode_async(self._upload_preparer(unpack, explain))
        except (MedhashError, ValueError, TypeError) as e:
            raise self._not_encoded(e, "search") from None
        return self.query_of(enc)

    def query_from_item(self, item_id: str) -> Query:
        row = self.db.get(check_id(item_id))
        if row is None:
            raise BadInput(f"no item {item_id!r}", 404)
        return Query(np.frombuffer(row.code, np.uint8), "item", item_id=row.id, seq=row.seq,
                     patient_hash=row.patient_hash, dicom=json.loads(row.metadata))

    def query_from_dicomweb(self, ref: dict[str, Any], patient_id: str | None, explain: bool) -> Query:
        if self.dicomweb is None:
            raise BadInput("no DICOMweb source is configured: start `medhash serve` with --dicomweb-url", 400)
        data = self.dicomweb.retrieve(ref)
        q = self.query_from_upload(data, "instance.dcm", patient_id, explain)
        q.source = "dicomweb"
        return q

    def parse_search(self, params: dict[str, Any]) -> tuple[int, Filters]:
        """k and the metadata filters of a search request (BadInput if wrong); checked before any work."""
        if params.get("kos") and (self.kos_destination is None or self.dicomweb is None):
            raise BadInput("kos needs a STOW-RS destination (--kos-stow-url) and the PACS to read the matched "
                           "studies from (--dicomweb-url)", 400)
        k = params.get("k", 10)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise BadInput(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        f = Filters(modality=terms(params.get("modality"), "modality"),
                    view_position=terms(params.get("view_position"), "view_position"),
                    study_date_from=parse_date(params.get("study_date_from"), "study_date_from"),
                    study_date_to=parse_date(params.get("study_date_to"), "study_date_to"))
        return k, f

    def _plan(self, q: Query, params: dict[str, Any]) -> tuple[int, Filters]:
        k, f = self.parse_search(params)
        if params.get("exclude_same_patient"):
            if q.patient_hash is None:
                raise BadInput("exclude_same_patient: the query has no patient id (DICOM PatientID, or the "
                               "stored item's, or patient_id in the request)")
            f.exclude_patient = q.patient_hash
        if q.seq is not None and params.get("exclude_self", True):
            f.exclude_seq, f.exclude_id = q.seq, q.item_id
        return k, f

    def search(self, q: Query, params: dict[str, Any], explain: bool) -> dict[str, Any]:
        """Blocking: for worker threads."""
        k, f = self._plan(q, params)
        hits = self.scanner.submit(q.code, k, f).result()
        return self._answer(q, k, hits, params, explain)

    async def search_async(self, q: Query, params: dict[str, Any], explain: bool) -> dict[str, Any]:
        """On the event loop: waits for the scanner thread without holding a worker thread."""
        import asyncio

        k, f = self._plan(q, params)
        if Catalog.plain(f):
            hits = await self.loop_scanner.search(q.code, k, f)
        else:   # a mask over every row: built in the scanner thread, not on the loop
            hits = await asyncio.wrap_future(self.scanner.submit(q.code, k, f))
        return self._answer(q, k, hits, params, explain)

    def _answer(self, q: Query, k: int, hits: list[tuple[str, int]], params: dict[str, Any],
                explain: bool) -> dict[str, Any]:
        metas = self.db.metadata_of([i for i, _ in hits])
        results = []
        for item_id, dist in hits:
            md = metas.get(item_id)
            if md is None:
                continue        # deleted since the scan
            r: dict[str, Any] = {"id": item_id, "distance": dist, "metadata": json.loads(md)}
            if explain:
                r.update(self.links(item_id))
            results.append(r)
        query: dict[str, Any] = {"source": q.source}
        if q.item_id is not None:
            query["id"] = q.item_id
        if q.dicom.get("sop_instance_uid"):
            query["sop_instance_uid"] = q.dicom["sop_instance_uid"]
        if explain:
            if q.item_id is not None:
                query.update(self.links(q.item_id))
            elif q.attention is not None and q.thumbnail is not None:
                qid = self.queries.put(q.thumbnail, q.attention)
                query.update({"thumbnail": f"/v1/queries/{qid}/thumbnail.jpg",
                              "heatmap": f"/v1/queries/{qid}/heatmap.png"})
        out = {"model": self.fingerprint, "k": k, "query": query, "results": results}
        if params.get("kos"):
            out["kos"] = self.send_kos(q, results)
        return out

    def send_kos(self, q: Query, results: list[dict[str, Any]]) -> dict[str, Any]:
        from .dicomweb import send_kos

        query = {"sop_instance_uid": q.dicom.get("sop_instance_uid"), "id": q.item_id}
        return send_kos(self.dicomweb, self.kos_destination, query, results)

