"""The HTTP API (FastAPI): routes, bearer-token auth, one-line errors, audit and metrics.

Routes (JSON unless said; every route but GET /healthz and the viewer page GET / needs
``Authorization: Bearer TOKEN``; write routes need a write token):

    GET  /                               viewer page (static HTML + JS; holds no data)
    GET  /healthz                        process alive
    GET  /readyz                         model and index loaded
    GET  /metrics                        Prometheus text format
    GET  /openapi.json                   this API's OpenAPI document
    POST /v1/items                       multipart: file, id?, metadata? (JSON), patient_id?  -> 201
    PUT  /v1/items/{id}                  the same, replacing                                -> 201 / 200
    GET  /v1/items/{id}                  id, metadata, created, links
    DELETE /v1/items/{id}
    GET  /v1/items/{id}/thumbnail.jpg    GET /v1/items/{id}/heatmap.png
    POST /v1/search[?explain=1]          multipart (file + fields) or JSON ({"id"} or {"dicomweb"})
    GET  /v1/queries/{qid}/thumbnail.jpg GET /v1/queries/{qid}/heatmap.png (explain=1 links)
    POST /v1/dicomweb/studies            STOW-RS (multipart/related; type="application/dicom")
"""
from __future__ import annotations

import json
import logging
import time
from importlib import resources
from typing import Any, MutableMapping, Optional, Union

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from .. import __version__
from .forms import Form, parse_form
from .service import MAX_K, BadInput, Service
from .tokens import Token

log = logging.getLogger("medhash.serve")

# ------------------------------------------------------------------ request and answer models
class DicomwebRef(BaseModel):
    sop_instance_uid: str = Field(description="SOP Instance UID of the query image in the PACS")
    study_uid: Optional[str] = Field(None, description="Study Instance UID (found by QIDO-RS if absent)")
    series_uid: Optional[str] = Field(None, description="Series Instance UID (found by QIDO-RS if absent)")


class SearchFilters(BaseModel):
    k: int = Field(10, ge=1, le=MAX_K, description="matches to return")
    modality: Union[str, list[str], None] = Field(None, description="keep items of these modalities (e.g. CR, DX)")
    view_position: Union[str, list[str], None] = Field(None, description="keep items of these view positions "
                                                                          "(PA, AP, LL)")
    study_date_from: Optional[str] = Field(None, description="keep items with a study date on or after (YYYY-MM-DD)")
    study_date_to: Optional[str] = Field(None, description="keep items with a study date on or before (YYYY-MM-DD)")
    exclude_same_patient: bool = Field(False, description="skip items of the query's patient (salted hash)")
    exclude_self: bool = Field(True, description="by id: leave the query item out of its results")
    kos: bool = Field(False, description="also send the matches as Key Object Selection documents to the "
                                         "configured STOW-RS destination (--kos-stow-url)")
    patient_id: Optional[str] = Field(None, description="the query's patient id, for exclude_same_patient "
                                                         "(hashed, never stored)")


class SearchById(SearchFilters):
    id: Optional[str] = Field(None, description="search with a stored item")
    dicomweb: Optional[DicomwebRef] = Field(None, description="search with an instance fetched from the "
                                                                "configured PACS (WADO-RS)")


class Match(BaseModel):
    id: str
    distance: int
    metadata: dict[str, Any]
    thumbnail: Optional[str] = None
    heatmap: Optional[str] = None


class SearchAnswer(BaseModel):
    model: str = Field(description="fingerprint of the model that made the codes")
    k: int
    query: dict[str, Any]
    results: list[Match]


class ItemAnswer(BaseModel):
    id: str
    metadata: dict[str, Any] = {}
    created: Optional[str] = None
    links: dict[str, str] = {}


class Stored(BaseModel):
    id: str
    outcome: str = Field(description="created or replaced")


class Problem(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": Problem, "description": d} for s, d in (
        (401, "no or unknown bearer token"), (403, "a read token on a write route"),
        (404, "no such item"), (409, "the id is stored already"), (413, "upload over the limit"),
        (415, "wrong content type"), (422, "bad input: unreadable image, bad field"),
        (503, "the database refused the write"))}

_SEARCH_BODY = {
    "requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary", "description": "PNG, JPEG, TIFF or DICOM"},
            "k": {"type": "integer", "default": 10, "minimum": 1, "maximum": MAX_K},
            "modality": {"type": "string", "description": "comma-separated"},
            "view_position": {"type": "string", "description": "comma-separated"},
            "study_date_from": {"type": "string", "format": "date"},
            "study_date_to": {"type": "string", "format": "date"},
            "exclude_same_patient": {"type": "boolean"},
            "patient_id": {"type": "string"},
            "kos": {"type": "boolean", "description": "send Key Object Selection documents (--kos-stow-url)"}}}},
        "application/json": {"schema": {"$ref": "#/components/schemas/SearchById"}}}}}

_ITEM_BODY = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary", "description": "PNG, JPEG, TIFF or DICOM"},
            "id": {"type": "string", "description": "default: the SOPInstanceUID (DICOM) or a random id"},
            "metadata": {"type": "string", "description": "a JSON object (modality, view_position, study_date, "
                                                          "labels, ...)"},
            "patient_id": {"type": "string", "description": "hashed for exclude_same_patient, never stored"}}}}}}}


def _audit(request: Request, **fields: Any) -> None:
    request.state.audit = {**getattr(request.state, "audit", {}), **fields}


def _audit_answer(request: Request, out: dict[str, Any]) -> None:
    _audit(request, returned=[r["id"] for r in out["results"]])
    if "kos" in out:
        _audit(request, kos=[d["sop_instance_uid"] for d in out["kos"]["sent"]])


def error_response(e: Exception, scope: MutableMapping[str, Any]) -> JSONResponse:
    """The one-line JSON answer to an error: BadInput and HTTPException say what is wrong (4xx);
    anything else is a bug, logged with its traceback and answered 500 without it."""
    if isinstance(e, BadInput):
        return JSONResponse({"detail": str(e)}, status_code=e.status)
    if isinstance(e, HTTPException):
        return JSONResponse({"detail": e.detail}, status_code=e.status_code, headers=e.headers)
    if isinstance(e, RequestValidationError):
        parts = []
        for err in e.errors()[:5]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)
    log.error("internal error on %s %s", scope.get("method"), scope.get("path"), exc_info=e)
    return JSONResponse({"detail": f"internal error ({type(e).__name__}); logged"}, status_code=500)


def parse_flag(name: str, value: str | None) -> bool | None:
    """A true/false form field or query parameter (None: not given); BadInput otherwise."""
    v = (value or "").strip().lower()
    if not v:
        return None
    if v not in ("true", "false", "1", "0", "on", "off", "yes", "no"):
        raise BadInput(f"{name} must be true or false, got {v[:20]!r}")
    return v in ("true", "1", "on", "yes")


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="medhash similar-case service", version=__version__,
                  description="Search similar medical images by deep hashing (medhash-sdk). Every route but "
                              "/healthz needs `Authorization: Bearer TOKEN` (`medhash token create`); "
                              "adding, replacing, deleting and STOW-RS need a write token.",
                  openapi_url=None, docs_url=None, redoc_url=None)  # docs pages load JS from CDNs: off
    app.state.service = service

    def schema() -> dict[str, Any]:
        """FastAPI's OpenAPI document plus the bearer scheme the gate enforces (auth lives in Gate,
        one place for every route, not in per-route dependencies)."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            doc.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "a token from `medhash token create`"}}
            doc["security"] = [{"bearer": []}]
            for path, ops in doc["paths"].items():
                for method, op in ops.items():
                    if Gate.needs(method.upper(), path) == PUBLIC:
                        op["security"] = []
                    elif Gate.needs(method.upper(), path) == WRITE:
                        op["description"] = (op.get("description", "") + " Needs a write token.").strip()
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]

    # -------------------------------------------------------------- errors: one line, never a traceback
    @app.exception_handler(BadInput)
    async def _bad(request: Request, e: BadInput) -> JSONResponse:
        return error_response(e, request.scope)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(e, request.scope)

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception) -> JSONResponse:  # pragma: no cover - a bug
        return error_response(e, request.scope)

    # -------------------------------------------------------------- public
    @app.get("/", include_in_schema=False)
    async def viewer() -> HTMLResponse:
        html = resources.files("medhash_sdk.serve").joinpath("static/viewer.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-store",
                                           "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                                                      "style-src 'self' 'unsafe-inline'; "
                                                                      "script-src 'self' 'unsafe-inline'"})

    @app.get("/healthz", tags=["operations"], summary="the process is alive (no token needed)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # -------------------------------------------------------------- operations
    @app.get("/readyz", tags=["operations"], summary="model and index loaded", responses=ERRORS)
    async def readyz() -> JSONResponse:
        ok = service.ready
        return JSONResponse({"ready": ok, "items": len(service.catalog), "model": service.fingerprint,
                             "nbits": service.nbits, **({} if ok else {"detail": service.writer.broken})},
                            status_code=200 if ok else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", responses=ERRORS)
    async def metrics() -> Response:
        body, ctype = service.metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(schema())

    # -------------------------------------------------------------- items
    def _file_form(request: Request, body: bytes, what: str) -> Form:
        """The form of an upload (parsed off the event loop: forms.py says why)."""
        form = parse_form(body, request.headers.get("content-type", ""))
        if form.filename is None:
            raise BadInput(f"the multipart field 'file' ({what}) is missing")
        return form

    async def _multipart_body(request: Request) -> bytes:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise BadInput("send multipart/form-data with a 'file' part", 415)
        return await request.body()

    async def _store(request: Request, item_id: Optional[str], replace: bool) -> JSONResponse:
        body = await _multipart_body(request)

        def store() -> tuple[str, str]:
            form = _file_form(request, body, "an image file")
            fields, wanted = form.fields, item_id
            if wanted is None:
                wanted = fields.get("id") or None
            elif fields.get("id") not in (None, "", wanted):
                raise BadInput("the 'id' field differs from the id in the path")
            _audit(request, query=[wanted] if wanted else [form.filename])
            return service.add(form.data, form.filename or "", wanted, fields.get("metadata"),
                               fields.get("patient_id") or None, replace)

        new_id, outcome = await run_in_threadpool(store)
        _audit(request, query=[new_id])
        return JSONResponse({"id": new_id, "outcome": outcome}, status_code=200 if outcome == "replaced" else 201)

    @app.post("/v1/items", tags=["items"], status_code=201, response_model=Stored, responses=ERRORS,
              openapi_extra=_ITEM_BODY, summary="add an image (409 if its id is stored already)")
    async def add_item(request: Request) -> JSONResponse:
        return await _store(request, None, replace=False)

    @app.put("/v1/items/{item_id}", tags=["items"], status_code=201, response_model=Stored, responses=ERRORS,
             openapi_extra=_ITEM_BODY, summary="add or replace the image stored under this id")
    async def put_item(item_id: str, request: Request) -> JSONResponse:
        return await _store(request, item_id, replace=True)

    @app.get("/v1/items/{item_id}", tags=["items"], response_model=ItemAnswer, responses=ERRORS)
    async def get_item(item_id: str, request: Request) -> JSONResponse:
        _audit(request, query=[item_id])
        out = await run_in_threadpool(service.get, item_id)
        _audit(request, returned=[item_id])
        return JSONResponse(out)

    @app.delete("/v1/items/{item_id}", tags=["items"], responses=ERRORS, summary="delete an item")
    async def delete_item(item_id: str, request: Request) -> JSONResponse:
        _audit(request, query=[item_id])
        await run_in_threadpool(service.delete, item_id)
        return JSONResponse({"id": item_id, "deleted": True})

    @app.get("/v1/items/{item_id}/thumbnail.jpg", tags=["items"], responses=ERRORS,
             response_class=Response, summary="the stored image, at most 256 px")
    async def item_thumbnail(item_id: str, request: Request) -> Response:
        _audit(request, query=[item_id])
        return Response(await run_in_threadpool(service.image, item_id, "thumbnail"), media_type="image/jpeg")

    @app.get("/v1/items/{item_id}/heatmap.png", tags=["items"], responses=ERRORS,
             response_class=Response, summary="the model's attention over the stored image")
    async def item_heatmap(item_id: str, request: Request) -> Response:
        _audit(request, query=[item_id])
        return Response(await run_in_threadpool(service.image, item_id, "heatmap"), media_type="image/png")

    @app.get("/v1/queries/{qid}/thumbnail.jpg", tags=["search"], responses=ERRORS, response_class=Response)
    async def query_thumbnail(qid: str, request: Request) -> Response:
        _audit(request, query=[qid])
        return Response(await run_in_threadpool(service.query_image, qid, "thumbnail"), media_type="image/jpeg")

    @app.get("/v1/queries/{qid}/heatmap.png", tags=["search"], responses=ERRORS, response_class=Response)
    async def query_heatmap(qid: str, request: Request) -> Response:
        _audit(request, query=[qid])
        return Response(await run_in_threadpool(service.query_image, qid, "heatmap"), media_type="image/png")

    # -------------------------------------------------------------- search
    @app.post("/v1/search", tags=["search"], response_model=SearchAnswer, responses=ERRORS,
              openapi_extra=_SEARCH_BODY,
              summary="the k most similar stored items to an uploaded image or a stored item")
    async def search(request: Request,
                     explain: bool = Query(False, description="add thumbnail and heatmap links")) -> JSONResponse:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/json"):   # (the gate usually answers these two)
            return JSONResponse(await search_json(request, explain))
        if ctype.startswith("multipart/form-data"):
            return JSONResponse(await search_by_upload(request, explain))
        raise BadInput("send multipart/form-data with a 'file' part, or JSON {\"id\": ...}", 415)

    async def search_json(request: Request, explain: bool) -> dict[str, Any]:
        """POST /v1/search with JSON: by a stored item's id, or by an instance in the PACS."""
        try:
            body = SearchById.model_validate_json(await request.body())
        except ValueError as e:
            raise RequestValidationError(e.errors() if hasattr(e, "errors") else [{"msg": str(e)}]) from None
        params = body.model_dump()
        service.parse_search(params)
        if (body.id is None) == (body.dicomweb is None):
            raise BadInput("give one of 'id' (a stored item) or 'dicomweb' (an instance in the PACS); "
                           "or upload a file as multipart/form-data")
        if body.id is not None:
            _audit(request, query=[body.id])
            if params.get("kos"):
                out = await run_in_threadpool(_search_item, body.id, params, explain)
            else:   # two indexed SQLite reads and a queued scan: no worker thread needed
                out = await service.search_async(service.query_from_item(body.id), params, explain)
        else:
            assert body.dicomweb is not None
            _audit(request, query=[body.dicomweb.sop_instance_uid])
            out = await run_in_threadpool(_search_dicomweb, body.dicomweb.model_dump(), params, explain)
        _audit_answer(request, out)
        return out

    async def search_by_upload(request: Request, explain: bool) -> dict[str, Any]:
        """POST /v1/search with a multipart upload: the form is parsed and the image decoded in a
        decode thread, the model batches in its own, and the scan and the answer run here."""
        body = await request.body()
        params: dict[str, Any] = {}

        def unpack() -> tuple[bytes, str, Optional[str]]:   # in a decode thread, not on the loop
            form = _file_form(request, body, "the query image")
            params.update(_form_params(form.fields))
            service.parse_search(params)
            _audit(request, query=[form.filename or "upload"])
            return form.data, form.filename or "", params.get("patient_id")

        q = await service.query_from_upload_async(unpack, explain)
        if params.get("kos"):   # sends documents over the network: a worker thread
            out = await run_in_threadpool(service.search, q, params, explain)
        else:
            out = await service.search_async(q, params, explain)
        if out["query"].get("sop_instance_uid"):
            _audit(request, query=[out["query"]["sop_instance_uid"]])
        _audit_answer(request, out)
        return out

    app.state.search_by_upload = search_by_upload
    app.state.search_json = search_json

    def _search_item(item_id: str, params: dict[str, Any], explain: bool) -> dict[str, Any]:
        return service.search(service.query_from_item(item_id), params, explain)

    def _search_dicomweb(ref: dict[str, Any], params: dict[str, Any], explain: bool) -> dict[str, Any]:
        return service.search(service.query_from_dicomweb(ref, params.get("patient_id"), explain), params, explain)

    # -------------------------------------------------------------- STOW-RS
    @app.post("/v1/dicomweb/studies", tags=["dicomweb"], responses=ERRORS,
              summary="STOW-RS: store DICOM instances (multipart/related; type=\"application/dicom\")")
    async def stow(request: Request) -> JSONResponse:
        tok: Token = request.state.token
        from .dicomweb import FAILURE_CANNOT_UNDERSTAND, FAILURE_OUT_OF_RESOURCES, StowError, boundary_of, parts, \
            stow_answer

        try:
            boundary = boundary_of(request.headers.get("content-type", ""))
            instances = await parts(request.stream(), boundary)
        except StowError as e:
            raise BadInput(str(e), e.status) from None
        stored, failed = [], []
        for headers, data in instances:
            ctype = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
            if ctype != "application/dicom":
                failed.append({"reason_code": FAILURE_CANNOT_UNDERSTAND})
                continue
            status, msg, uids = await run_in_threadpool(service.ingest_dicom, data, "STOW-RS", "STOW-RS",
                                                        tok.name)
            if status == 0:
                stored.append(uids)
            else:
                failed.append({**uids, "reason_code": FAILURE_OUT_OF_RESOURCES if status == 0xA700
                               else FAILURE_CANNOT_UNDERSTAND})
        _audit(request, query=[u.get("sop_instance_uid") for u in stored + failed if u.get("sop_instance_uid")],
               returned=[u["sop_instance_uid"] for u in stored if u.get("sop_instance_uid")])
        if not instances:
            raise BadInput("STOW-RS request without any application/dicom part", 400)
        status = 200 if not failed else (202 if stored else 409)
        body = stow_answer(stored, failed, str(request.url))
        return JSONResponse(body, status_code=status, media_type="application/dicom+json")

    return app


def _form_params(raw: dict[str, str]) -> dict[str, Any]:
    """Search fields of a multipart form -> the JSON body's types."""
    p: dict[str, Any] = {}
    if raw.get("k", "").strip():
        try:
            p["k"] = int(raw["k"])
        except ValueError:
            raise BadInput(f"k must be an integer from 1 to {MAX_K}, got {raw['k'][:20]!r}") from None
    for name in ("modality", "view_position"):
        if raw.get(name, "").strip():
            p[name] = [v for v in (x.strip() for x in raw[name].split(",")) if v]
    for name in ("study_date_from", "study_date_to", "patient_id"):
        if raw.get(name, "").strip():
            p[name] = raw[name].strip()
    for name in ("exclude_same_patient", "kos"):
        flag = parse_flag(name, raw.get(name))
        if flag is not None:
            p[name] = flag
    return p


PUBLIC, READ, WRITE = "public", "read", "write"
_PUBLIC = {("GET", "/"), ("GET", "/healthz"), ("HEAD", "/"), ("HEAD", "/healthz")}


class Gate:
    """Pure ASGI middleware around the app, the one place of: bearer-token auth (401 / 403), the
    upload limit (413 before reading past it), and after each request one audit line and the
    request metrics.

    It also answers the hot route itself, POST /v1/search (by upload, multipart, or by a stored
    id, JSON), with the app's own handlers but without FastAPI's middleware and routing on the
    event loop: under 32 concurrent uploads on 2 cores that loop work delayed every thread
    waiting for the GIL (~6% more uploads/s without it, benchmarks/bench_serve.py), and it was
    most of the event loop's time in a search by id."""

    def __init__(self, app: FastAPI, service: Service):
        self.app, self.service = app, service
        self.max_body = int(service.settings.max_upload)
        self.handlers = {b"multipart/form-data": app.state.search_by_upload, b"application/json": app.state.search_json}
        self.search_route = next(r for r in app.routes if getattr(r, "path", None) == "/v1/search")

    def direct(self, scope: dict[str, Any]) -> Any:
        """The handler of a search the gate answers itself (see the class), or None."""
        if scope.get("method") != "POST" or scope.get("path") != "/v1/search":
            return None
        ctype = _header(scope, b"content-type")
        return next((h for prefix, h in self.handlers.items() if ctype.startswith(prefix)), None)

    async def _search(self, handler: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["route"] = self.search_route       # for the metrics and the audit line, as FastAPI would
        request = Request(scope, receive)
        try:
            explain = bool(parse_flag("explain", request.query_params.get("explain")))
            response = JSONResponse(await handler(request, explain))
        except Exception as e:  # noqa: BLE001 - every error is answered in one line
            response = error_response(e, scope)
        await response(scope, receive, send)

    @staticmethod
    def needs(method: str, path: str) -> str:
        """What a request needs: public (the viewer page, /healthz), a write token (adding,
        replacing, deleting, STOW-RS) or a read token (everything else, unknown paths too)."""
        if (method, path) in _PUBLIC:
            return PUBLIC
        if (method == "POST" and (path == "/v1/items" or path.startswith("/v1/dicomweb/"))) or \
                (method in ("PUT", "DELETE") and path.startswith("/v1/items/")):
            return WRITE
        return READ

    def _auth(self, scope: dict[str, Any]) -> tuple[int, str] | None:
        """None if the request may go on (the token in scope["state"]), else (status, reason)."""
        need = self.needs(scope.get("method", ""), scope.get("path", ""))
        if need == PUBLIC:
            return None
        header = _header(scope, b"authorization").decode("latin-1")
        scheme, _, credentials = header.partition(" ")
        tok = self.service.tokens.lookup(credentials.strip()) if scheme.lower() == "bearer" and credentials else None
        if tok is None:
            return 401, "missing or unknown bearer token (Authorization: Bearer TOKEN)"
        scope.setdefault("state", {})["token"] = tok
        if need == WRITE and not tok.can_write:
            return 403, f"token {tok.name!r} may only read; this route needs a write token"
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [0]
        limit = self.max_body

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        refused = self._auth(scope)
        if refused is not None:
            try:
                await _refuse(send_status, *refused)
            finally:
                self._record(scope, status[0], time.perf_counter() - t0)
            return
        length = _header(scope, b"content-length") or None
        try:
            too_big = length is not None and int(length) > limit
        except ValueError:
            too_big = None
        if too_big is None or too_big:
            try:
                await _refuse(send_status, *((400, "bad Content-Length") if too_big is None else
                                             (413, f"upload of {int(length):,} bytes is over the limit of {limit:,}")))
            finally:
                self._record(scope, status[0], time.perf_counter() - t0)
            return
        seen = [0]

        async def counted() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    raise HTTPException(413, f"upload is over the limit of {limit:,} bytes")
            return message

        try:
            handler = self.direct(scope)
            if handler is not None:
                await self._search(handler, scope, counted, send_status)
            else:
                await self.app(scope, counted, send_status)
        finally:
            self._record(scope, status[0] or 500, time.perf_counter() - t0)

    def _record(self, scope: dict[str, Any], status: int, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        method = scope.get("method", "")
        state = scope.get("state") or {}
        tok = state.get("token")
        audit = state.get("audit") or {}
        client = scope.get("client")
        self.service.metrics.observe_request(method, template, status, seconds)
        if template in ("/healthz",):
            return
        self.service.audit.write({"token": tok.name if tok else None, "role": tok.role if tok else None,
                                  "client": client[0] if client else None, "method": method, "route": template,
                                  "status": status, "ms": round(seconds * 1e3, 2),
                                  "query": audit.get("query", []), "returned": audit.get("returned", []),
                                  **{k: v for k, v in audit.items() if k not in ("query", "returned")}})


def _header(scope: dict[str, Any], name: bytes) -> bytes:
    """A request header's raw value (b"" when absent); `name` in lower case."""
    return next((v for k, v in scope.get("headers", ()) if k == name), b"")


async def _refuse(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if status == 413:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build(service: Service) -> Any:
    """The ASGI application to serve: the FastAPI app inside the gate."""
    return Gate(create_app(service), service)
