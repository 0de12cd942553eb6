"""The HTTP service: a thin FastAPI layer over an `Engine`.

    POST /v1/generate   multipart: a video (or video_path under --allow-dir; or none with `duration`)
                        + parameters -> the file (with keep_candidates: a zip of every candidate's)
    POST /v1/curve      multipart: a video -> the event curve as JSON
    GET  /healthz       the process is up
    GET  /readyz        the model is loaded and warmed up (503 while loading or shutting down)
    GET  /metrics       Prometheus text
    GET  /docs          OpenAPI docs

Every error is one JSON object `{"error": "<one line>", "status": N}`: 400 malformed body,
401 no or wrong API key, 403 a server-side path outside --allow-dir (or none allowed),
408 the body took longer than --upload-timeout, 413 upload too large or video longer than
--max-duration, 415 not multipart or not a video part, 422 bad parameters or a video that
cannot be read (the CLI's one-line reason), 500 internal, 503 not ready / too many uploads /
queue full (with Retry-After) / shutting down, 504 past the per-request timeout.
A request counts against --max-uploads while its body arrives, then against --max-queue.

The body is parsed as it streams in: the video part goes straight to the request's
temporary directory under a fixed name (the client's file name is never used as a
path) and the size limit is enforced on the bytes received, not on the header alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from v2m.core.errors import Cancelled, InputError, V2MError, VideoTooLong

from .config import (
    GENERATE_FIELDS,
    ZIP_MEDIA_TYPE,
    GenerateForm,
    ServeConfig,
    header_safe,
    media_type_of,
    parse_generate_fields,
    suffix_of,
)
from .engine import Abandoned, Engine, Output, Ticket
from .metrics import CONTENT_TYPE_LATEST, Metrics

__all__ = ["create_app", "ApiError", "AppState"]

log = logging.getLogger("v2m.serve")

UPLOAD_NAME = "upload"  # the video part's file name inside the request directory, whatever the client says
MAX_FIELD_BYTES = 64 * 1024  # a text field longer than this is refused without reading it whole
VIDEO_PART_TYPES = ("video/", "application/octet-stream", "application/mp4", "application/x-matroska")
ENDPOINTS = ("/v1/generate", "/v1/curve")


class ApiError(Exception):
    """An HTTP error with one clear line."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split()), "status": status}, status_code=status, headers=headers)


class AppState:
    """What the handlers share: the engine once loaded, readiness, draining, admission count."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.engine: Engine | None = None
        self.ready = False
        self.draining = False
        self.load_error: str | None = None
        self.in_flight = 0
        self.uploading = 0
        self.metrics = Metrics(lambda: self.engine)
        self._lock = threading.Lock()

    def attach(self, eng: Engine) -> None:
        """The engine is loaded and warmed up: feed its stages to the metrics, mark ready."""
        eng.observe_stage = self.metrics.stage
        eng.scheduler.on_batch = self.metrics.batch_size
        self.engine, self.ready = eng, True
        self.metrics.ready.set(1)

    def load(self, load: Callable[[], Engine], on_load_error: Callable[[BaseException], None] | None) -> None:
        """Build the engine (a startup thread); a failure is reported through /readyz and `on_load_error`."""
        try:
            eng = load()
            self.attach(eng)
            log.info("ready: %s", json.dumps(eng.describe()))
        except BaseException as e:  # noqa: BLE001 - reported through /readyz and on_load_error
            self.load_error = str(e) if isinstance(e, V2MError) else f"{type(e).__name__}: {e}"
            if on_load_error is not None:
                on_load_error(e)  # the CLI stops and prints it
            else:
                log.error("could not load the model: %s", self.load_error)

    def require_ready(self) -> Engine:
        if self.draining:
            raise ApiError(503, "the server is shutting down; retry on another instance", {"Retry-After": "5"})
        if not self.ready or self.engine is None:
            reason = f"the model failed to load: {self.load_error}" if self.load_error else "the model is still loading"
            raise ApiError(503, reason, {"Retry-After": "5"})
        return self.engine

    def admit_upload(self) -> None:
        """Count a request whose body is arriving against --max-uploads (503 past it)."""
        with self._lock:
            if self.uploading >= self.config.max_uploads:
                retry = max(1, round(self.config.upload_timeout_s / 10))
                raise ApiError(503, f"too many uploads in progress ({self.config.max_uploads}); retry later",
                               {"Retry-After": str(retry)})
            self.uploading += 1
            self.metrics.uploading.set(self.uploading)

    def end_upload(self) -> None:
        with self._lock:
            self.uploading -= 1
            self.metrics.uploading.set(self.uploading)

    def admit(self) -> None:
        """Count a request whose body has arrived against --max-queue (503 past it)."""
        with self._lock:
            if self.in_flight >= self.config.max_queue:
                retry = max(1, round(self.config.timeout_s / 10))
                raise ApiError(503, f"the queue is full ({self.config.max_queue} requests); retry later",
                               {"Retry-After": str(retry)})
            self.in_flight += 1
            self.metrics.in_flight.set(self.in_flight)

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self.metrics.in_flight.set(self.in_flight)


class _CleanupFileResponse(FileResponse):
    """A file response that runs `cleanup` when it is done, sent or not (client gone, cancelled)."""

    def __init__(self, *args, cleanup: Callable[[], None], **kwargs):
        super().__init__(*args, **kwargs)
        self._cleanup = cleanup

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._cleanup()


# --- the body ----------------------------------------------------------------------------
class _Form:
    """python-multipart callbacks that collect text fields and stream the `video` part to a file."""

    def __init__(self, workdir: Path, video_field: bool):
        self.workdir, self.video_field = workdir, video_field
        self.fields: dict[str, str] = {}
        self.video: Path | None = None
        self.video_file = None
        self.part: dict[str, Any] = {}

    def callbacks(self) -> dict[str, Callable]:
        return {"on_part_begin": self.begin, "on_part_data": self.data, "on_part_end": self.end,
                "on_header_field": self.header_field, "on_header_value": self.header_value,
                "on_header_end": self.header_end, "on_headers_finished": self.headers_finished}

    def begin(self):
        self.part = {"headers": {}, "name": None, "buf": bytearray(), "file": None, "hname": b"", "hvalue": b""}

    def header_field(self, data, start, end):
        self.part["hname"] += data[start:end]

    def header_value(self, data, start, end):
        self.part["hvalue"] += data[start:end]

    def header_end(self):
        self.part["headers"][self.part["hname"].lower()] = self.part["hvalue"]
        self.part["hname"], self.part["hvalue"] = b"", b""

    def headers_finished(self):
        part = self.part
        disp, opts = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = opts.get(b"name")
        if disp != b"form-data" or name is None:
            raise ApiError(400, "a multipart part without Content-Disposition: form-data; name=...")
        name = part["name"] = name.decode("utf-8", "replace")
        if b"filename" not in opts:
            if name in self.fields:
                raise ApiError(422, f"field {name[:40]!r} given twice")
            return
        if name != "video" or not self.video_field:
            raise ApiError(422, f"unexpected file part {name[:40]!r}; send the video as the 'video' part")
        if self.video is not None:
            raise ApiError(422, "more than one 'video' part")
        ctype = part["headers"].get(b"content-type", b"application/octet-stream").decode("latin-1").strip().lower()
        if not ctype.startswith(VIDEO_PART_TYPES):
            raise ApiError(415, f"the 'video' part is {ctype}; send a video file (video/* or application/octet-stream)")
        self.video = self.workdir / UPLOAD_NAME
        part["file"] = self.video_file = open(self.video, "wb")  # noqa: SIM115 - closed in `end` or by read_form

    def data(self, data, start, end):
        part = self.part
        if part["file"] is not None:
            part["file"].write(data[start:end])
            return
        if len(part["buf"]) + (end - start) > MAX_FIELD_BYTES:
            raise ApiError(422, f"field {part['name'][:40]!r} is longer than {MAX_FIELD_BYTES // 1024} KB")
        part["buf"] += data[start:end]

    def end(self):
        part = self.part
        if part["file"] is not None:
            part["file"].close()
            return
        try:
            self.fields[part["name"]] = part["buf"].decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(422, f"field {part['name'][:40]!r} is not UTF-8 text") from None


def _check_form_headers(request: Request, max_bytes: int) -> bytes:
    """The multipart boundary; 415, 400 or 413 (a declared length past the limit) before any byte is read."""
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data":
        raise ApiError(415, f"send multipart/form-data (a 'video' file part and text fields), not {kind.decode('latin-1') or 'no content type'}")
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "multipart body without a boundary")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise ApiError(413, f"the upload is {int(length)} bytes; the limit is {max_bytes} bytes ({max_bytes / 2**20:g} MB)")
    return boundary


async def read_form(request: Request, workdir: Path, max_bytes: int, video_field: bool = True,
                    timeout_s: float | None = None) -> tuple[dict[str, str], Path | None]:
    """Stream a multipart/form-data body: text fields, and the `video` file part into `workdir`.
    The whole body must arrive within `timeout_s` (None: no limit).

    Raises ApiError (400, 408, 413, 415, 422) and starlette's ClientDisconnect (aborted upload).
    """
    form = _Form(workdir, video_field)
    parser = MultipartParser(_check_form_headers(request, max_bytes), form.callbacks())
    received = 0

    async def pump() -> None:
        nonlocal received
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise ApiError(413, f"the upload is larger than the limit of {max_bytes} bytes ({max_bytes / 2**20:g} MB)")
            parser.write(chunk)

    try:
        await asyncio.wait_for(pump(), timeout_s)
        parser.finalize()
    except asyncio.TimeoutError:  # TimeoutError since 3.11; a distinct class on 3.10
        raise ApiError(408, f"the upload took longer than the server's limit of {timeout_s:g} s "
                            f"({received} bytes arrived); send it faster or in full", {"Connection": "close"}) from None
    except (ApiError, ClientDisconnect):
        raise
    except Exception as e:  # noqa: BLE001 - python-multipart's parse errors
        raise ApiError(400, f"malformed multipart body ({type(e).__name__}: {str(e)[:80]})") from None
    finally:
        if form.video_file is not None:
            form.video_file.close()
    return form.fields, form.video


def _resolve_video(config: ServeConfig, fields: dict[str, str], upload: Path | None,
                   optional: bool = False) -> Path | None:
    """The uploaded file, or `video_path` resolved inside --allow-dir; None when neither was sent
    and the video is `optional` (music without a video)."""
    rel = fields.pop("video_path", None)
    if upload is not None and rel is not None:
        raise ApiError(422, "send either a 'video' upload or 'video_path', not both")
    if upload is not None:
        return upload
    if rel is None:
        if optional:
            return None
        raise ApiError(422, "missing the 'video' file part (for music without a video, send 'duration' instead)")
    if config.allow_dir is None:
        raise ApiError(403, "server-side paths are disabled on this server; upload the video instead")
    if "\0" in rel:
        raise ApiError(422, "video_path contains a NUL byte; send a file name inside the allowed folder")
    root = config.allow_dir
    target = os.path.realpath(os.path.join(root, rel))
    if os.path.commonpath([root, target]) != root or not os.path.isfile(target):
        raise ApiError(403, f"video_path {rel[:80]!r} is not a file inside the allowed folder")
    return Path(target)


async def _until_disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _result_or_abandon(coro, request: Request, timeout_s: float, ticket: Ticket):
    """Await `coro`; on timeout (504) or client disconnect, abandon the request's work."""
    task = asyncio.ensure_future(coro)
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled (server shutdown past its grace period)
        ticket.abandon()
        task.cancel()
        watcher.cancel()
        raise
    if task in done:
        watcher.cancel()
        return task.result()
    ticket.abandon()
    task.cancel()
    await asyncio.wait({task})  # its file writes end before the directory is removed
    watcher.cancel()
    if watcher in done:
        raise ClientDisconnect()
    raise ApiError(504, f"the request took longer than the server's limit of {timeout_s:g} s")


def _status_of(e: BaseException) -> tuple[int, str]:
    if isinstance(e, ApiError):
        return e.status, e.message
    if isinstance(e, VideoTooLong):
        return 413, str(e)
    if isinstance(e, Cancelled):
        return 503, str(e)
    if isinstance(e, InputError):
        return 422, str(e)
    if isinstance(e, V2MError):
        return 500, str(e)
    if isinstance(e, RuntimeError) and "shutting down" in str(e):
        return 503, str(e)
    msg = str(e).splitlines()[0] if str(e) else ""
    return 500, f"internal error: {type(e).__name__}: {msg}"


def _multipart_doc(fields: dict[str, str]) -> dict[str, Any]:
    props = {k: ({"type": "string", "format": "binary", "description": v} if k == "video" else
                 {"type": "string", "description": v}) for k, v in fields.items()}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {"type": "object", "properties": props}}}}}


# --- the app -----------------------------------------------------------------------------
class _Admission:
    """One admitted request's holds (an upload slot, then a queue slot), its ticket and folder."""

    def __init__(self, state: AppState, eng: Engine, join_batch: bool):
        state.admit_upload()
        self.state, self.eng = state, eng
        self.ticket = Ticket()
        if join_batch:
            eng.expect(self.ticket)
        self.workdir = eng.temp.new()
        self.upload, self.queue = True, False

    def uploaded(self) -> None:
        """The body has arrived: the upload slot becomes a queue slot (--max-queue)."""
        self.upload = False
        self.state.end_upload()
        self.state.admit()
        self.queue = True

    def cleanup(self) -> None:
        """Release what is held, abandon the ticket, remove the folder (idempotent)."""
        if self.upload:
            self.upload = False
            self.state.end_upload()
        if self.queue:
            self.queue = False
            self.state.release()
        self.ticket.abandon()
        self.eng.temp.remove(self.workdir)
        self.eng.unexpect(self.ticket)


def _failure(request: Request, state: AppState, e: BaseException) -> Response:
    """The JSON answer of a request that failed (or 499 for a client that went away)."""
    if isinstance(e, ClientDisconnect):
        log.info("%s: the client went away", request.url.path)
        return Response(status_code=499)
    if isinstance(e, asyncio.CancelledError):
        if not state.draining:
            raise e
        # uvicorn cancels what outlasts --shutdown-grace: say so in JSON, not its plain-text 500
        return _error(503, "the server shut down before the request finished; retry on another instance",
                      {"Retry-After": "5"})
    status, message = _status_of(e)
    if status >= 500 and not isinstance(e, (ApiError, V2MError, Abandoned)):
        log.exception("%s failed", request.url.path)
    headers = e.headers if isinstance(e, ApiError) else ({"Retry-After": "5"} if status == 503 else None)
    return _error(status, message, headers)


def _authorize(config: ServeConfig, request: Request) -> None:
    if config.api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    ok = scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), config.api_key.encode())
    if not ok:
        raise ApiError(401, "missing or wrong API key; send 'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"})


async def _admitted(state: AppState, request: Request, handler, join_batch: bool):
    """Auth, readiness, admission (--max-uploads while the body arrives, then --max-queue), the
    form, then `handler(eng, ticket, workdir, fields, upload, cleanup)`; the request's folder is
    removed when the response is done (or at once on failure)."""
    config = state.config
    _authorize(config, request)
    adm = _Admission(state, state.require_ready(), join_batch)
    try:
        t0 = time.perf_counter()
        fields, upload = await read_form(request, adm.workdir, config.max_upload_bytes, timeout_s=config.upload_timeout_s)
        state.metrics.stage("upload", time.perf_counter() - t0)
        adm.uploaded()
        return await handler(adm.eng, adm.ticket, adm.workdir, fields, upload, adm.cleanup)
    except BaseException as e:
        adm.cleanup()
        return _failure(request, state, e)


def _install_error_handlers(app: FastAPI) -> None:
    """Every error the app answers is one JSON line with its status."""

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return _error(e.status, e.message, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e: StarletteHTTPException):
        return _error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request, e: Exception):  # a bug outside the handlers: still one JSON line
        log.error("%s failed", request.url.path, exc_info=e)
        status, message = _status_of(e)
        return _error(status, message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")


def _add_status_routes(app: FastAPI, state: AppState) -> None:
    @app.get("/healthz", summary="the process is up")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="the model is loaded and warmed up")
    async def readyz():
        eng = state.require_ready()
        return {"ready": True, **eng.describe()}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics(request: Request):
        _authorize(state.config, request)
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _generate_headers(eng: Engine, out: Output, form: GenerateForm) -> dict[str, str]:
    timings = {k: round(v, 4) for k, v in out.timings.items()}
    headers = {
        "X-V2M-Seed": str(out.seed),
        "X-V2M-Model": eng.model_name,
        "X-V2M-Batch-Size": str(out.batch_size),
        "X-V2M-Duration": f"{out.duration_s:.4f}",
        "X-V2M-Timings": json.dumps(timings, separators=(",", ":")),
        "Server-Timing": ", ".join(f"{k};dur={v * 1e3:.1f}" for k, v in timings.items()),
    }
    if out.candidates is not None:
        headers["X-V2M-Candidates"] = json.dumps(out.candidates, separators=(",", ":"))
    if form.auto_prompt:
        headers["X-V2M-Prompt"] = header_safe(out.prompt)
    return headers


def _add_work_routes(app: FastAPI, state: AppState) -> None:
    config = state.config

    @app.post("/v1/generate", summary="music for a video (or of a set length without one)",
              openapi_extra=_multipart_doc(GENERATE_FIELDS), response_class=FileResponse,
              responses={200: {"description": "the file (with keep_candidates a zip of every candidate's); headers "
                                              "X-V2M-Seed, X-V2M-Model, X-V2M-Batch-Size, X-V2M-Timings (JSON seconds "
                                              "per stage), Server-Timing, X-V2M-Candidates (JSON, with candidates), "
                                              "X-V2M-Prompt (prompt=auto, percent-encoded where not printable ASCII)",
                               "content": {"video/mp4": {}, "video/x-matroska": {}, "audio/wav": {}, "audio/flac": {},
                                           ZIP_MEDIA_TYPE: {}}}})
    async def generate(request: Request):
        async def handle(eng: Engine, ticket, workdir, fields, upload, cleanup):
            video = _resolve_video(config, fields, upload, optional="duration" in fields)
            form = parse_generate_fields(fields, config.max_prompt_chars, has_video=video is not None,
                                         max_candidates=config.max_candidates, max_duration_s=config.max_duration_s)
            form.request.options(eng.pipe.config.sampler)  # the bundle's defaults fill in: a bad combination is a 422 now
            work = eng.generate(ticket, video, form.request, workdir, form.fmt, candidates=form.candidates,
                                keep_candidates=form.keep_candidates, auto_prompt=form.auto_prompt)
            out = await _result_or_abandon(work, request, config.timeout_s, ticket)
            name = f"v2m-{out.seed}-candidates.zip" if form.keep_candidates else f"v2m-{out.seed}{suffix_of(form.fmt)}"
            media = ZIP_MEDIA_TYPE if form.keep_candidates else media_type_of(form.fmt)
            return _CleanupFileResponse(out.path, media_type=media, headers=_generate_headers(eng, out, form),
                                        cleanup=cleanup, filename=name)

        return await _admitted(state, request, handle, join_batch=True)

    @app.post("/v1/curve", summary="the event curve of a video (JSON)",
              openapi_extra=_multipart_doc({k: GENERATE_FIELDS[k] for k in ("video", "video_path")}))
    async def curve(request: Request):
        async def handle(eng: Engine, ticket, workdir, fields, upload, cleanup):
            video = _resolve_video(config, fields, upload)
            if fields:
                raise ApiError(422, f"unknown fields {sorted(fields)}; /v1/curve takes only the video")
            res = await _result_or_abandon(eng.run_device(eng.curve, video, ticket), request, config.timeout_s, ticket)
            cleanup()
            return {**res.to_json(), "timings": {k: round(v, 4) for k, v in res.timings.items()}}

        return await _admitted(state, request, handle, join_batch=False)


def create_app(config: ServeConfig, load: Callable[[], Engine] | None = None, engine: Engine | None = None,
               on_load_error: Callable[[BaseException], None] | None = None) -> FastAPI:
    """The FastAPI app.

    Args:
        config: limits, auth, folders.
        load: builds and starts the engine (called in a thread at startup; /readyz says ready after).
        engine: an engine already started (Ray Serve replicas); `load` is then not used.
        on_load_error: called if `load` fails (the CLI stops the server with the error's line).
    """
    state = AppState(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if engine is None and load is not None:
            threading.Thread(target=state.load, args=(load, on_load_error), name="v2m-load", daemon=True).start()
        yield
        state.draining = True
        if state.engine is not None:
            await asyncio.to_thread(state.engine.close)

    if engine is not None:
        state.attach(engine)
    app = FastAPI(title="v2m", version="0.1.0", lifespan=lifespan,
                  description="Video-to-music generation (V2M-Zero). See docs/serving.md.")
    app.state.v2m = state
    _install_error_handlers(app)
    _add_status_routes(app, state)
    _add_work_routes(app, state)
    app.add_middleware(_MetricsMiddleware, metrics=state.metrics)
    return app


class _MetricsMiddleware:
    def __init__(self, app, metrics: Metrics):
        self._app = metrics.middleware(app, ENDPOINTS)

    async def __call__(self, scope, receive, send):
        await self._app(scope, receive, send)
