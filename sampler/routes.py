"""The sampler's routes: each one parses its request model, calls the service, and labels the
answer with the policy version that produced it (`X-Policy-Version`).

Owns: the route functions and their response models. Does not know: auth, body limits, error
mapping (`api.py` wraps these routes in them) or how generation and updates work
(`serving.py`, `openai_routes.py`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

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
)
from sampler.serving import RequestError, SamplerService

log = logging.getLogger("sampler.api")
router = APIRouter()


def svc(request: Request) -> SamplerService:
    s = getattr(request.app.state, "service", None)
    if s is None:
        raise RequestError(503, "engine is starting; poll /health")
    return s


def openai_handler(request: Request) -> OpenAIHandler:
    svc(request)  # 503 while starting
    return request.app.state.openai


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read by then, so the
    next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _log_admin(request: Request, what: str, version: int | None) -> None:
    peer = request.client.host if request.client else "?"
    log.info("admin %s from %s: version %s", what, peer, version)


def versioned(body: Any, version: int) -> JSONResponse:
    return JSONResponse(body, headers={POLICY_VERSION_HEADER: str(version)})


@router.get("/health", response_model=HealthResponse)
async def health(request: Request) -> Any:
    s = svc(request)
    await s.check_engine()
    body = HealthResponse(
        status="needs_weights" if s.broken else "ok",
        # Public route: no error text (the admin caller got it; the log has it).
        detail="a weight update failed; push weights again" if s.broken else None,
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


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(svc(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
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
    work = asyncio.ensure_future(h.chat(req) if chat else h.completion(req))
    gone = asyncio.ensure_future(_disconnected(request))
    done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    if work not in done and gone.exception() is None:  # nobody will read the answer
        work.cancel()
        svc(request).metrics.client_disconnects.inc()
        log.info("client of %s left before its answer: request aborted", request.url.path)
        return Response(status_code=499)
    gone.cancel()
    body, version = await work
    return versioned(body, version)


@router.post("/v1/completions")
async def completions(req: CompletionRequest, request: Request) -> Any:
    return await respond(req, request, chat=False)


@router.post("/v1/chat/completions")
async def chat(req: ChatRequest, request: Request) -> Any:
    return await respond(req, request, chat=True)


@router.post("/generate", response_model=GroupedResponse)
async def generate(req: GroupedRequest, request: Request) -> Any:
    out = await svc(request).generate_grouped(req)
    return versioned(out.model_dump(), out.policy_version)


@router.post("/logprobs", response_model=LogprobsResponse)
async def logprobs(req: LogprobsRequest, request: Request) -> Any:
    out = await svc(request).score(req)
    return versioned(out.model_dump(), out.policy_version)


@router.post("/admin/weights/gloo", response_model=UpdateResponse)
async def update_gloo(req: GlooUpdateRequest, request: Request) -> Any:
    _log_admin(request, "update_gloo", req.version)
    out = await svc(request).update_gloo(req)
    return versioned(out.model_dump(), out.policy_version)


@router.post("/admin/weights/path", response_model=UpdateResponse)
async def update_path(req: PathUpdateRequest, request: Request) -> Any:
    _log_admin(request, "update_path", req.version)
    out = await svc(request).update_path(req)
    return versioned(out.model_dump(), out.policy_version)
