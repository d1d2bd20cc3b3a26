"""Every failure of a request becomes an HTTP status, headers and one OpenAI-style body, here.

    {"error": {"message": "...", "type": "...", "param": "..." | null, "code": "..." | null}}

    400  invalid_request_error   bad JSON, a missing or wrong field (the message names it)
    401  authentication_error    a missing or wrong key, when keys are set
    404  not_found_error         an unknown model or path
    405  invalid_request_error   a wrong method
    413  invalid_request_error   a body over the size limit
    429  rate_limit_error        the concurrency limit and the queue are full        Retry-After
    502  upstream_error          a permanent upstream failure (401/403/404/400, a bad or empty
                                 answer): x-should-retry: false, as a retry pays for the references again
    502  upstream_error          the answer failed its JSON Schema (code invalid_json_output) or its tool
                                 calls their check (invalid_tool_call), after one repair round
    503  upstream_error          a transient upstream failure (429, 5xx, timeouts)   Retry-After
    503  server_unavailable      the server is draining                              Retry-After
    503  server_unavailable      past --max-connections (code too_many_connections,  Retry-After
                                 answered by connections.py, the connection closed)
    504  timeout_error           the turn outlived --turn-timeout                    x-should-retry: false

After a stream has started the same body goes out as one `data:` event, then the stream
ends (sse.py). Messages are single lines with keys masked (`redact`); never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moa_cli.errors import ProviderError, TurnFailed
from moa_cli.redact import redact

#: Seconds a client is asked to wait after a 429 or 503.
RETRY_AFTER_SECONDS = 5

PERMANENT_KINDS = frozenset({"auth", "not_found", "bad_response", "empty", "context", "other", "cancelled"})
_PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 422})
TRANSIENT_KINDS = frozenset({"rate_limit", "timeout", "deadline", "connection", "cut_off", "quorum"})


@dataclass
class ApiError(Exception):
    """A request that ends in an error response (or an error event, mid-stream)."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)
        self.message = redact(" ".join(self.message.split()))

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def not_found(message: str, code: str = "not_found") -> ApiError:
    return ApiError(404, message, type="not_found_error", code=code)


def overloaded() -> ApiError:
    return ApiError(
        429,
        "the server is at its limit of concurrent turns and its queue is full; retry later",
        type="rate_limit_error",
        code="server_overloaded",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def draining() -> ApiError:
    return ApiError(
        503,
        "the server is shutting down; retry on another replica",
        type="server_unavailable",
        code="shutting_down",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def too_many_connections(limit: int) -> ApiError:
    """Past --max-connections: uvicorn's limit_concurrency, answered in this shape (connections.py)."""
    return ApiError(
        503,
        f"the server is at its limit of {limit} open connections and requests in flight; retry later",
        type="server_unavailable",
        code="too_many_connections",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS), "Connection": "close"},
    )


def ended_by_shutdown() -> ApiError:
    return ApiError(
        503,
        "the server shut down before the turn finished",
        type="server_unavailable",
        code="shutting_down",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def turn_timed_out(seconds: float) -> ApiError:
    return ApiError(
        504,
        f"the turn took longer than the server's limit of {seconds:g}s",
        type="timeout_error",
        code="turn_timeout",
        headers={"x-should-retry": "false"},
    )


def internal(message: str = "internal server error") -> ApiError:
    return ApiError(500, message, type="server_error", code="internal_error", headers={"x-should-retry": "false"})


def invalid_output(message: str, what: str) -> ApiError:
    """The aggregator's JSON or tool calls failed their check twice (structured.py)."""
    code = "invalid_json_output" if what == "json" else "invalid_tool_call"
    return ApiError(502, message, type="upstream_error", code=code, headers={"x-should-retry": "false"})


def is_transient(kind: str, status: int | None) -> bool:
    """A failure a later retry may not meet: rate limits, 5xx, timeouts, dropped connections."""
    if status is not None and status in _PERMANENT_STATUSES:
        return False
    if status is not None and (status == 408 or status == 429 or status >= 500):
        return True
    return kind in TRANSIENT_KINDS


def from_turn_failed(exc: TurnFailed) -> ApiError:
    """502 (permanent, do not retry) or 503 (transient, Retry-After) for a failed turn.

    Mixed failures (say one reference 401, another 429) count as transient only when every
    one of them is.
    """
    failures = exc.failures or []
    transient = bool(failures) and all(is_transient(f.kind, f.status) for f in failures)
    code = f"upstream_{exc.kind}"
    if transient:
        return ApiError(
            503, str(exc), type="upstream_error", code=code, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        )
    return ApiError(502, str(exc), type="upstream_error", code=code, headers={"x-should-retry": "false"})


def from_provider_error(exc: ProviderError) -> ApiError:
    """A passthrough call's failure, mapped as a turn whose only call failed."""
    return from_turn_failed(TurnFailed(str(exc), [exc], aggregator=True))
