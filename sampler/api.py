"""HTTP layer of a sampler replica: the app, auth, body limits, error mapping.

Owns: `build_app(...)`, the auth scope of every route path, bearer-token checks (constant time),
the request-size guard and the mapping of errors to OpenAI-style 4xx/5xx bodies. Does not know:
the routes' own work (`routes.py`, thin), vLLM or how generation and updates work (`serving.py`,
`openai_routes.py`).

Auth scopes (checked from the headers, before any body is read; `ROUTE_SCOPES`):
  public   GET /health
  api      GET /metrics, GET /v1/models, POST /v1/completions, POST /v1/chat/completions (and any
           other path: /docs, /openapi.json, 404s) -- the key people get to try the live policy
  trainer  POST /generate, POST /logprobs -- the trainer's key (falls back to the api key when
           the server has no trainer key, e.g. a standalone replica)
  admin    POST /admin/weights/gloo, POST /admin/weights/path -- disabled without an admin key
A scope without a configured key is open (a loopback-only server without keys).
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sampler.openai_routes import OpenAIHandler
from sampler.protocol import (
    error_body,
)
from sampler.routes import router
from sampler.serving import RequestError, SamplerService

log = logging.getLogger(__name__)
ROUTE_SCOPES = {
    "/health": "public",
    "/metrics": "api",
    "/v1/models": "api",
    "/v1/completions": "api",
    "/v1/chat/completions": "api",
    "/generate": "trainer",
    "/logprobs": "trainer",
    "/admin/weights/gloo": "admin",
    "/admin/weights/path": "admin",
}
_ROUTES = set(ROUTE_SCOPES)


@dataclass(frozen=True)
class Keys:
    """The bearer token of each scope (None: that scope is open, or for admin: disabled)."""

    api: str | None = None
    trainer: str | None = None
    admin: str | None = None

    def for_scope(self, scope: str) -> str | None:
        if scope == "trainer":
            return self.trainer if self.trainer is not None else self.api
        return {"api": self.api, "admin": self.admin}.get(scope)

    def check(self, scope: str, token: str | None) -> tuple[int, str] | None:
        """(status, message) when a request with `token` may not use `scope`, else None."""
        if scope == "public":
            return None
        if scope == "admin" and self.admin is None:
            return 403, "admin routes are disabled: start the server with --admin-key"
        expected = self.for_scope(scope)
        if expected is None or _same(token, expected):
            return None
        # Name the key this server actually wants (a standalone server's trainer routes take
        # its API key).
        name = "API" if expected == self.api else scope
        return 401, f"missing or wrong {name} key: send 'Authorization: Bearer <{name} key>'"


class _BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """ASGI middleware, in front of everything: the bearer token of the route's scope (from the
    headers, so a keyless request's body is never read or parsed: 401 at once), bodies over
    `max_body_bytes` (413), request counts by status and body bytes read by route."""

    def __init__(
        self,
        app: Any,
        max_body_bytes: int,
        keys: Keys,
        on_status: Callable[[str, int], None],
        on_body: Callable[[str, int], None],
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.keys = keys
        self.on_status = on_status
        self.on_body = on_body

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in _ROUTES else "other"
        denied = self.keys.check(ROUTE_SCOPES.get(path, "api"), _header_token(scope))
        if denied is not None:
            status, message = denied
            self.on_status(route, status)
            err = error_body(message, type_="invalid_request_error", code=status)
            await JSONResponse(err, status_code=status)(scope, receive, send)
            return
        limit = self.max_body_bytes
        too_large = JSONResponse(
            error_body(
                f"request body exceeds this server's limit max_body_bytes={limit}",
                type_="invalid_request_error",
                code=413,
            ),
            status_code=413,
        )
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                self.on_status(route, 413)
                await too_large(scope, receive, send)
                return
        seen = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                self.on_body(route, len(msg.get("body", b"")))
                if seen > limit:
                    raise _BodyTooLarge
            return msg

        async def watched_send(msg: dict) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
                self.on_status(route, msg["status"])
            await send(msg)

        try:
            await self.app(scope, limited_receive, watched_send)
        except _BodyTooLarge:
            if not started:
                self.on_status(route, 413)
                await too_large(scope, receive, send)


def _header_token(scope: dict) -> str | None:
    """The bearer token of an ASGI request's Authorization header, if any."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            header = value.decode("latin-1")
            return header[7:].strip() if header[:7].lower() == "bearer " else None
    return None


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _add_error_handlers(app: FastAPI) -> None:
    """OpenAI-style error bodies: the field and the fix for client errors, a reference id
    (never the exception's text) for server errors."""

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, e: RequestError) -> JSONResponse:
        type_ = "invalid_request_error" if e.status < 500 else "server_error"
        return JSONResponse(
            error_body(e.message, type_=type_, param=e.param, code=e.status), e.status
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        parts, first = [], None
        for err in e.errors():
            if err.get("type") == "json_invalid":
                reason = (err.get("ctx") or {}).get("error", "invalid JSON")
                msg = f"malformed JSON body: {reason}; send a JSON object"
                return JSONResponse(
                    error_body(msg, type_="invalid_request_error", param="body", code=422), 422
                )
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
            first = first or loc
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        msg = "invalid request: " + "; ".join(parts[:5])
        return JSONResponse(
            error_body(msg, type_="invalid_request_error", param=first, code=422), 422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(str(e.detail), type_="invalid_request_error", code=e.status_code),
            e.status_code,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        # The exception's text stays in the server log: it can name paths, addresses, internals.
        ref = uuid.uuid4().hex[:12]
        log.exception("unhandled error on %s (ref %s)", request.url.path, ref)
        return JSONResponse(
            error_body(
                f"internal error (ref {ref} in the server log)", type_="server_error", code=500
            ),
            500,
        )


def build_app(
    service: SamplerService | None = None,
    *,
    start: Callable[[], Awaitable[SamplerService]] | None = None,
    stop: Callable[[SamplerService], Awaitable[None]] | None = None,
    api_key: str | None = None,
    admin_key: str | None = None,
    trainer_key: str | None = None,
    max_body_bytes: int = 16 << 20,
) -> FastAPI:
    """The replica's app. Pass a ready `service`, or `start` (awaited at startup, in the server's
    event loop, which vLLM's async engine needs) and optionally `stop` (awaited at shutdown).
    The interactive docs (/docs, /openapi.json) need the api key like the routes they describe."""
    if (service is None) == (start is None):
        raise ValueError("build_app needs exactly one of service= or start=")

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        if start is not None:
            app.state.service = await start()
            app.state.openai = OpenAIHandler(app.state.service)
        try:
            yield
        finally:
            if stop is not None:
                await stop(app.state.service)

    keys = Keys(api=api_key, trainer=trainer_key, admin=admin_key)
    app = FastAPI(title="GRPO sampler", version="1", lifespan=lifespan)
    if service is not None:
        app.state.service = service
        app.state.openai = OpenAIHandler(service)

    def on_status(route: str, status: int) -> None:
        s = getattr(app.state, "service", None)
        if s is not None:
            s.metrics.requests.labels(route, str(status)).inc()

    def on_body(route: str, nbytes: int) -> None:
        s = getattr(app.state, "service", None)
        if s is not None:
            s.metrics.body_bytes.labels(route).inc(nbytes)

    app.add_middleware(
        GuardMiddleware,
        max_body_bytes=max_body_bytes,
        keys=keys,
        on_status=on_status,
        on_body=on_body,
    )

    _add_error_handlers(app)
    app.include_router(router)
    return app
