"""``rlhf-lightning label DB``: the labelling web page, served from one labelling database.

    rlhf-lightning label labels.sqlite [--port 8765] [--host 127.0.0.1] [--token T] [--annotators_per_item 2]

Open the printed address in a browser, enter your name once, and rank each prompt's responses best to worst
(drag and drop, or the keyboard: the page lists the keys). Every submission is on disk before the page moves
on; stop the server with Ctrl+C at any time, and start it again to continue. ``rlhf-lightning label export
DB OUT.jsonl`` writes the rankings for the reward stage.

Served on a loopback address (the default) the page is reachable from this machine only; with ``--host
0.0.0.0`` (or any other address) a token is required, generated when none is given, and the printed address
carries it (``?token=...``). Without a token, requests must name a loopback host (``Host: localhost:PORT``),
so other web sites cannot reach the server through DNS tricks.

Routes (JSON answers; errors are ``{"error": message}`` with the status below):

- ``GET /``: the page; ``GET /static/...``: its script and style sheet.
- ``GET /api/next?annotator=NAME``: the item NAME should rank now (the same one again after a reload):
  ``{"done": false, "item": id, "round", "prompt", "conversation", "tools", "version", "candidates": [{"key":
  "A", "text": ..., "cut_off": false}]}`` (``prompt``: the last user message; ``conversation``: every turn as
  ``{"role", "content"}`` messages; ``cut_off``: the answer stopped at the length limit), or ``{"done": true}``
  when nothing is left for NAME.
- ``GET /api/progress?annotator=NAME``: ``{"items", "complete", "annotators_per_item", "annotators", "you"}``.
- ``POST /api/submit`` ``{"annotator", "item", "version", "ranking": [["B"], ["A", "D"], ["C"]],
  "none_acceptable": false, "comment": ""}``: the ranking groups the candidates' keys best to worst, a
  group of several keys being a tie. Answers ``{"judgement": {...}}``.
- ``POST /api/skip`` ``{"annotator", "item", "comment"}``: skip an item (it is not shown to NAME again).
- ``POST /api/unskip`` ``{"annotator", "item"}``: undo NAME's skip of an item: ``/api/next`` gives it to NAME
  again. Answers ``{"judgement": {...}}`` (the skip, now deleted).

Errors: 400 malformed request (not JSON, bad annotator name) or no skip to undo, 401 missing or wrong token, 404
unknown item, 409 stale item (its candidates changed: load it again) or already judged (the answer carries the
stored ``"judgement"``; nothing was changed; for an undo: the item was ranked, not skipped), 415 a POST that is
not ``application/json``, 422 a field of the wrong type or a ranking that does not order every candidate exactly
once.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rlhf_lightning.data.errors import OptionError
from rlhf_lightning.data.labels import AlreadyJudged, LabelError, LabelStore

STATIC = Path(__file__).with_name("label_static")
TOKEN_COOKIE = "rlhf_label_token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class RequestError(Exception):
    """A malformed request: ``status`` 400 (not JSON) or 422 (a field missing or of the wrong type)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address) is this machine only: ``localhost``, ``127.x.x.x`` or ``::1``."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The host of a ``Host`` header, without its port: ``localhost:8765`` -> ``localhost``, ``[::1]:80`` -> ``::1``."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class _Guard(BaseHTTPMiddleware):
    """Token check, loopback ``Host`` check (without a token), ``application/json`` POSTs, security headers."""

    def __init__(self, app, token: str | None) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        refusal = self._refusal(request)
        if refusal is not None:
            response: Response = JSONResponse({"error": refusal[1]}, status_code=refusal[0])
        else:
            response = await call_next(request)
            if self.token and request.url.path == "/" and self._matches(request.query_params.get("token")):
                # the page's own requests (script, style sheet) then carry the token as a cookie
                response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
        response.headers.update(SECURITY_HEADERS)
        if request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-cache"
        else:
            response.headers["Cache-Control"] = "no-store"
        return response

    def _matches(self, given: str | None) -> bool:
        return bool(self.token and given and secrets.compare_digest(given.encode(), self.token.encode()))

    def _refusal(self, request: Request) -> tuple[int, str] | None:
        if request.headers.get("sec-fetch-site") == "cross-site":  # another web site's page, in this browser
            return 403, "requests from other web sites are refused"
        if self.token is None:
            if not is_loopback(_host_name(request.headers.get("host", ""))):
                return 403, (
                    "without a token this server answers requests for localhost only; to reach it under another "
                    "name, start it with --token SECRET (--host 0.0.0.0 makes one)"
                )
        else:
            given = [
                request.query_params.get("token"),
                request.headers.get("x-token"),
                request.cookies.get(TOKEN_COOKIE),
            ]
            if not any(self._matches(t) for t in given):
                return 401, (
                    "missing or wrong token: open the address the server printed when it started "
                    "(it ends with ?token=...)"
                )
        if request.method == "POST":
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type != "application/json":
                return 415, "send the request body as JSON (Content-Type: application/json)"
        return None


# --- request checks ------------------------------------------------------------------------------------------
async def _json_body(request: Request) -> dict:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestError(f"the request body is not valid JSON: {error}", status=400) from error
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", status=400)
    return body


def _field(body: dict, name: str, kind: type | tuple[type, ...], what: str, default: object = ...) -> object:
    if name not in body:
        if default is ...:
            raise RequestError(f"field {name!r} is missing: it must be {what}")
        return default
    value = body[name]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise RequestError(f"field {name!r} must be {what}, got {value!r}")
    if not isinstance(value, kind):
        raise RequestError(f"field {name!r} must be {what}, got {json.dumps(value)[:80]}")
    return value


def _ranking(body: dict) -> list[list[str]]:
    ranking = _field(body, "ranking", list, 'a list of groups of candidate keys, best first: [["B"], ["A", "C"]]')
    if not all(isinstance(g, list) and all(isinstance(k, str) for k in g) for g in ranking):
        raise RequestError('field "ranking" must be a list of groups (lists) of candidate keys (text)')
    return ranking


def _item_id(body: dict) -> int:
    item = _field(body, "item", int, "an item id (integer)")
    if not 0 <= item < 2**63:
        raise RequestError(f"field 'item' must be an item id (0 <= id < 2**63), got {item}")
    return item


def _annotator_param(request: Request) -> str:
    annotator = request.query_params.get("annotator")
    if annotator is None:
        raise RequestError("query parameter 'annotator' is missing: ?annotator=YOUR_NAME")
    return annotator


# --- the app -------------------------------------------------------------------------------------------------
def create_app(database: str, token: str | None = None) -> Starlette:
    """The web app serving ``database`` (an existing labelling database). With ``token``, every request must
    carry it: ``?token=`` (the page then keeps it in a cookie), header ``X-Token`` or that cookie."""
    store = LabelStore(database)
    token = token or None

    def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    def next_item(request: Request) -> Response:
        item = store.next_item(_annotator_param(request))
        return JSONResponse({"done": True} if item is None else {"done": False, **item.public()})

    def progress(request: Request) -> Response:
        return JSONResponse(store.progress(_annotator_param(request)))

    async def submit(request: Request) -> Response:
        body = await _json_body(request)
        args = (
            _item_id(body),
            _field(body, "annotator", str, "the annotator's name (text)"),
            _field(body, "version", str, "the item's version (text) as /api/next gave it"),
            _ranking(body),
            _field(body, "none_acceptable", bool, "true or false", False),
            _field(body, "comment", str, "text", ""),
        )
        return await _run(store.submit, *args)

    async def skip(request: Request) -> Response:
        body = await _json_body(request)
        item = _item_id(body)
        annotator = _field(body, "annotator", str, "the annotator's name (text)")
        comment = _field(body, "comment", str, "text", "")
        return await _run(store.submit, item, annotator, None, None, comment=comment, skip=True)

    async def unskip(request: Request) -> Response:
        body = await _json_body(request)
        item = _item_id(body)
        return await _run(store.unskip, item, _field(body, "annotator", str, "the annotator's name (text)"))

    async def _run(function, *args, **kwargs) -> Response:
        judgement = await run_in_threadpool(function, *args, **kwargs)
        return JSONResponse({"judgement": judgement})

    def label_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, LabelError)
        body: dict = {"error": str(error), "type": type(error).__name__}
        if isinstance(error, AlreadyJudged):
            body["judgement"] = error.judgement
        return JSONResponse(body, status_code=error.status)

    def request_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestError)
        return JSONResponse({"error": str(error)}, status_code=error.status)

    routes = [
        Route("/", page),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/api/next", next_item),
        Route("/api/progress", progress),
        Route("/api/submit", submit, methods=["POST"]),
        Route("/api/skip", skip, methods=["POST"]),
        Route("/api/unskip", unskip, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(_Guard, token=token)],
        exception_handlers={LabelError: label_error, RequestError: request_error},
    )


def _address(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(
    database: str,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    annotators_per_item: int | None = None,
) -> None:
    """Serve the ranking page for DATABASE until Ctrl+C (also: label export DB OUT.jsonl, label judge DB).

    Args:
        database: The labelling database (``rlhf-lightning generate`` writes one).
        host: The address to listen on: a loopback address (default) serves this machine only; ``0.0.0.0``
            serves every machine that can reach this one, and then needs a token.
        port: The port to listen on.
        token: A secret every request must carry (``?token=`` in the printed address). Generated when
            ``host`` is not a loopback address and none is given.
        annotators_per_item: How many people rank each item; stored in the database (default: as stored
            there, 1 for a new database).
    """
    import uvicorn

    if not 0 < port < 65536:
        raise OptionError(f"--port must be in 1..65535, got {port}")
    try:  # fail here, with the option named, rather than after printing an address that another server holds
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.create_server((host, port), family=family):
            pass
    except OSError as error:
        raise OptionError(
            f"--host {host} --port {port}: cannot listen there ({error.strerror}); another label server may be "
            "running: choose another --port"
        ) from error
    store = LabelStore(database)
    if annotators_per_item is not None:
        store.annotators_per_item = annotators_per_item
    if token is not None and len(token) < 8:
        raise OptionError("--token must be at least 8 characters (or leave it out: one is generated)")
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(16)
    app = create_app(database, token)
    counts, needed = store.progress(), store.annotators_per_item
    address = _address(host, port) + (f"?token={token}" if token else "")
    print(
        f"label: {database}: {counts['complete']} / {counts['items']} items complete "
        f"(each asked of {needed} annotator{'s' if needed != 1 else ''})\n"
        f"label: open {address}\n"
        "label: stop with Ctrl+C (every acknowledged ranking is already saved)",
        flush=True,
    )
    # No access log: it would print the token of every request that carries it in the address.
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
