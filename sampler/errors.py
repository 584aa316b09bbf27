"""Errors of the sampler service and how vLLM's exceptions map onto them.

Owns: `RequestError` (a client-facing status and a message naming the field and the fix),
`Preempted` (a request aborted by a weight update, re-run by the admission gate), and the tuples
of vLLM exceptions that mean "bad input" or "engine gone". Does not know: HTTP routing (api.py
turns RequestError into a response), the engine itself.
"""

from __future__ import annotations


class RequestError(Exception):
    """A client error: `status` (4xx/503) and a message that names the field and the fix."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


class Preempted(Exception):
    """A request aborted by a weight update's drain timeout; it is re-run on the new weights."""


def client_errors() -> tuple[type[BaseException], ...]:
    """Exceptions by which vLLM rejects a request's input (they map to 400, not 500)."""
    from vllm.exceptions import VLLMClientError

    return (ValueError, TypeError, VLLMClientError)


def engine_gone() -> tuple[type[BaseException], ...]:
    """Exceptions by which vLLM says its engine core is gone (they map to 503, not 500)."""
    from vllm.v1.engine.exceptions import EngineDeadError

    return (EngineDeadError,)
