"""HTTP layer of a sampler replica: thin FastAPI routes, auth, body limits, error mapping.

Owns: `build_app(...)`, route paths, bearer-token checks (constant time), the request-size guard
and the mapping of errors to OpenAI-style 4xx/5xx bodies. Does not know: vLLM or how generation
and updates work (`serving.py`, `openai_routes.py`).

Routes: GET /health (public), GET /metrics, GET /v1/models, POST /v1/completions,
POST /v1/chat/completions, POST /generate (grouped, token ids) -- these need the API key when one
is set; POST /admin/weights/gloo and POST /admin/weights/path always need the admin key (without
one configured the admin routes are disabled).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sampler.openai_routes import OpenAIHandler
from sampler.protocol import (
    POLICY_VERSION_HEADER,
    ChatRequest,
    CompletionRequest,
    GlooUpdateRequest,
    GroupedRequest,
    GroupedResponse,
    HealthResponse,
    LogprobsRequest,
    LogprobsResponse,
    PathUpdateRequest,
    UpdateResponse,
    error_body,
)
from sampler.serving import RequestError, SamplerService

log = logging.getLogger(__name__)
_ROUTES = {
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/completions",
    "/v1/chat/completions",
    "/generate",
    "/logprobs",
    "/admin/weights/gloo",
    "/admin/weights/path",
}


class _BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """ASGI middleware: reject bodies over `max_body_bytes` (413) and count requests by status."""

    def __init__(
        self, app: Any, max_body_bytes: int, on_status: Callable[[str, int], None]
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.on_status = on_status

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope.get("path", "") if scope.get("path", "") in _ROUTES else "other"
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


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header[:7].lower() != "bearer ":
        return None
    return header[7:].strip()


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def build_app(
    service: SamplerService | None = None,
    *,
    start: Callable[[], Awaitable[SamplerService]] | None = None,
    stop: Callable[[SamplerService], Awaitable[None]] | None = None,
    api_key: str | None = None,
    admin_key: str | None = None,
    max_body_bytes: int = 16 << 20,
) -> FastAPI:
    """The replica's app. Pass a ready `service`, or `start` (awaited at startup, in the server's
    event loop, which vLLM's async engine needs) and optionally `stop` (awaited at shutdown)."""
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

    app = FastAPI(title="GRPO sampler", version="1", lifespan=lifespan)
    if service is not None:
        app.state.service = service
        app.state.openai = OpenAIHandler(service)

    def svc(request: Request) -> SamplerService:
        s = getattr(request.app.state, "service", None)
        if s is None:
            raise RequestError(503, "engine is starting; poll /health")
        return s

    def openai_handler(request: Request) -> OpenAIHandler:
        svc(request)  # 503 while starting
        return request.app.state.openai

    def need_api_key(request: Request) -> None:
        if api_key is not None and not _same(_token(request), api_key):
            raise RequestError(
                401, "missing or wrong API key: send 'Authorization: Bearer <api key>'"
            )

    def need_admin_key(request: Request) -> None:
        if admin_key is None:
            raise RequestError(403, "admin routes are disabled: start the server with --admin-key")
        if not _same(_token(request), admin_key):
            raise RequestError(
                401, "missing or wrong admin key: send 'Authorization: Bearer <admin key>'"
            )

    def on_status(route: str, status: int) -> None:
        s = getattr(app.state, "service", None)
        if s is not None:
            s.metrics.requests.labels(route, str(status)).inc()

    app.add_middleware(GuardMiddleware, max_body_bytes=max_body_bytes, on_status=on_status)

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
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(
            error_body(f"internal error: {type(e).__name__}: {e}", type_="server_error", code=500),
            500,
        )

    def versioned(body: Any, version: int) -> JSONResponse:
        return JSONResponse(body, headers={POLICY_VERSION_HEADER: str(version)})

    @app.get("/health", response_model=HealthResponse)
    async def health(request: Request) -> Any:
        s = svc(request)
        await s.check_engine()
        body = HealthResponse(
            status="needs_weights" if s.broken else "ok",
            detail=f"{s.broken}; push weights again" if s.broken else None,
            policy_version=s.version,
            model=s.model_name,
            updating=s.updating,
            instance_id=s.instance_id,
            workers=s.workers,
        )
        response = versioned(body.model_dump(), s.version)
        if s.broken:  # alive, but must not get generation traffic until a full push
            response.status_code = 503
        return response

    @app.get("/metrics", dependencies=[Depends(need_api_key)])
    async def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(
            generate_latest(svc(request).metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    @app.get("/v1/models", dependencies=[Depends(need_api_key)])
    async def models(request: Request) -> Any:
        s = svc(request)
        card = {
            "id": s.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "sampler",
            "max_model_len": s.max_model_len,
            "policy_version": s.version,
        }
        return versioned({"object": "list", "data": [card]}, s.version)

    async def respond(req: CompletionRequest | ChatRequest, request: Request, chat: bool) -> Any:
        """SSE stream or one JSON body; both say which policy version produced them."""
        h = openai_handler(request)
        if req.stream:
            events, version = await h.stream(req)
            return StreamingResponse(
                events,
                media_type="text/event-stream",
                headers={POLICY_VERSION_HEADER: str(version)},
            )
        body, version = await (h.chat(req) if chat else h.completion(req))
        return versioned(body, version)

    @app.post("/v1/completions", dependencies=[Depends(need_api_key)])
    async def completions(req: CompletionRequest, request: Request) -> Any:
        return await respond(req, request, chat=False)

    @app.post("/v1/chat/completions", dependencies=[Depends(need_api_key)])
    async def chat(req: ChatRequest, request: Request) -> Any:
        return await respond(req, request, chat=True)

    @app.post("/generate", response_model=GroupedResponse, dependencies=[Depends(need_api_key)])
    async def generate(req: GroupedRequest, request: Request) -> Any:
        out = await svc(request).generate_grouped(req)
        return versioned(out.model_dump(), out.policy_version)

    @app.post("/logprobs", response_model=LogprobsResponse, dependencies=[Depends(need_api_key)])
    async def logprobs(req: LogprobsRequest, request: Request) -> Any:
        out = await svc(request).score(req)
        return versioned(out.model_dump(), out.policy_version)

    @app.post(
        "/admin/weights/gloo", response_model=UpdateResponse, dependencies=[Depends(need_admin_key)]
    )
    async def update_gloo(req: GlooUpdateRequest, request: Request) -> Any:
        out = await svc(request).update_gloo(req)
        return versioned(out.model_dump(), out.policy_version)

    @app.post(
        "/admin/weights/path", response_model=UpdateResponse, dependencies=[Depends(need_admin_key)]
    )
    async def update_path(req: PathUpdateRequest, request: Request) -> Any:
        out = await svc(request).update_path(req)
        return versioned(out.model_dump(), out.policy_version)

    return app
