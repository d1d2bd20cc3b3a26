"""Every error moa raises on purpose derives from `MoaError`.

    MoaError
    ├── ConfigError                   bad option, config file or environment  -> exit 2
    │   └── MissingKeyError           a provider needs an API key that is not set
    ├── ProviderError                 one model call failed (after the client's own retries)   kind
    │   ├── AuthenticationError       401 / 403                                                 auth
    │   ├── RateLimitError            429 that outlived the retries                             rate_limit
    │   ├── ModelNotFoundError        404                                                       not_found
    │   ├── ProviderTimeout           the call took longer than --timeout                       timeout
    │   │   └── DeadlineExceeded      cut at the layer deadline (--layer-deadline)              deadline
    │   ├── ProviderConnectionError   refused, reset, or the socket closed mid-body             connection
    │   │   └── StreamCutOff          the stream ended cleanly but before the answer was done   cut_off
    │   ├── BadResponse               invalid JSON, a stream far past max_tokens, ...           bad_response
    │   ├── EmptyAnswer               the model answered nothing                                empty
    │   └── ContextOverflow           the prompt cannot be shortened to fit the model's window  context
    │       │                         (never sent: fitting.py)
    │       └── ContextRefused        the provider refused the prompt as longer than its        context
    │                                 window (`window`: the one it stated, if it did); the
    │                                 engine refits the call to it and sends it again, once
    │   (ProviderError itself: any other status or failure, kind "other"; "cancelled" for a
    │    call a provider reports as cancelled on its side; "quorum" for a call the engine
    │    stopped because enough references of its layer had answered (--quorum): not a
    │    timeout and not the model's fault, so neither DeadlineExceeded nor "deadline")
    └── TurnFailed                    every reference of a layer failed, or the aggregator did -> exit 1

Every `ProviderError` carries a `kind` (one of `KINDS`) and the HTTP `status` when there
was one. `TurnFailed.failures` holds the original `ProviderError`s, and its own `kind` and
`status` summarise them for front ends.

`kind_for_status` and `error_for` are the one mapping from an HTTP status or a kind to the
error class: providers and the scripted fake build their errors through them.

Each front end maps these in one place: the CLI to exit codes (cli/errors.py).
The messages are single lines meant for users: they never carry keys or headers.
"""

from __future__ import annotations

from typing import ClassVar, Literal, get_args

ErrorKind = Literal[
    "auth",
    "rate_limit",
    "not_found",
    "timeout",
    "deadline",
    "connection",
    "cut_off",
    "bad_response",
    "empty",
    "cancelled",
    "quorum",
    "context",
    "other",
]
#: Every failure kind, in the order above.
KINDS: tuple[str, ...] = get_args(ErrorKind)


class MoaError(Exception):
    """Base class of moa's own errors."""


class ConfigError(MoaError):
    """The user's options, environment or config file are wrong. Exit code 2."""


class MissingKeyError(ConfigError):
    """A provider needs a key: the message names the env var or config entry to set."""


class ProviderError(MoaError):
    """One model call failed. `reason` is a short, user-facing description.

    `kind` is the class's kind unless given (a plain ProviderError may be "cancelled" or
    "other"); `status` is the HTTP status when the server sent one.
    """

    default_kind: ClassVar[ErrorKind] = "other"

    def __init__(self, model: str, reason: str, *, status: int | None = None, kind: ErrorKind | None = None) -> None:
        super().__init__(f"{model}: {reason}")
        self.model = model
        self.reason = reason
        self.status = status
        self.kind: ErrorKind = kind or self.default_kind
        if self.kind not in KINDS:
            raise ValueError(f"unknown failure kind {self.kind!r}")


class AuthenticationError(ProviderError):
    default_kind: ClassVar[ErrorKind] = "auth"


class RateLimitError(ProviderError):
    default_kind: ClassVar[ErrorKind] = "rate_limit"


class ModelNotFoundError(ProviderError):
    default_kind: ClassVar[ErrorKind] = "not_found"


class ProviderTimeout(ProviderError):
    default_kind: ClassVar[ErrorKind] = "timeout"


class DeadlineExceeded(ProviderTimeout):
    default_kind: ClassVar[ErrorKind] = "deadline"


class ProviderConnectionError(ProviderError):
    default_kind: ClassVar[ErrorKind] = "connection"


class StreamCutOff(ProviderConnectionError):
    default_kind: ClassVar[ErrorKind] = "cut_off"


class BadResponse(ProviderError):
    default_kind: ClassVar[ErrorKind] = "bad_response"


class EmptyAnswer(ProviderError):
    default_kind: ClassVar[ErrorKind] = "empty"


class ContextOverflow(ProviderError):
    """The request cannot fit the model's context window, however it is shortened: not sent."""

    default_kind: ClassVar[ErrorKind] = "context"


class ContextRefused(ContextOverflow):
    """The provider refused the request as longer than the model's context window: the window
    moa assumed was wrong. `window` is the window the provider's message states (tokens), None
    when it states none. The engine fits the prompt again and sends it once more (fitting.py)."""

    def __init__(self, model: str, reason: str, *, status: int | None = None, window: int | None = None) -> None:
        super().__init__(model, reason, status=status)
        self.window = window


#: What each kind is called in a footer or a progress row.
KIND_WORDS: dict[str, str] = {
    "auth": "authentication failed",
    "rate_limit": "rate limited",
    "not_found": "not found",
    "timeout": "timed out",
    "deadline": "timed out",
    "connection": "connection failed",
    "cut_off": "cut off",
    "bad_response": "bad response",
    "empty": "empty",
    "cancelled": "cancelled",
    "quorum": "cut by the quorum",
    "context": "too long for its context",
    "other": "failed",
}


class TurnFailed(MoaError):
    """The turn produced no answer: the aggregator failed or a whole layer did.

    `failures` are the calls' own exceptions, as the providers (or the engine) raised them.
    `kind` and `status` summarise them: the shared kind (status) when every failure has the
    same one, else "other" (None). `aggregator` is True when the aggregator's call failed.
    """

    def __init__(self, message: str, failures: list[ProviderError] | None = None, *, aggregator: bool = False) -> None:
        super().__init__(message)
        self.failures: list[ProviderError] = list(failures or [])
        self.aggregator = aggregator

    @property
    def kind(self) -> ErrorKind:
        kinds = {f.kind for f in self.failures}
        return kinds.pop() if len(kinds) == 1 else "other"

    @property
    def status(self) -> int | None:
        statuses = {f.status for f in self.failures}
        return statuses.pop() if len(statuses) == 1 else None


_CLASSES: dict[str, type[ProviderError]] = {
    "auth": AuthenticationError,
    "rate_limit": RateLimitError,
    "not_found": ModelNotFoundError,
    "timeout": ProviderTimeout,
    "deadline": DeadlineExceeded,
    "connection": ProviderConnectionError,
    "cut_off": StreamCutOff,
    "bad_response": BadResponse,
    "empty": EmptyAnswer,
    "context": ContextOverflow,
}

_STATUS_KINDS: dict[int, ErrorKind] = {401: "auth", 403: "auth", 404: "not_found", 429: "rate_limit"}


def kind_for_status(status: int | None) -> ErrorKind:
    """The failure kind of an HTTP error status (any other status: "other")."""
    return _STATUS_KINDS.get(status or 0, "other")


def error_for(model: str, reason: str, *, kind: ErrorKind | None = None, status: int | None = None) -> ProviderError:
    """The `ProviderError` subclass for `kind` (else for `status`), e.g. RateLimitError for 429."""
    kind = kind or kind_for_status(status)
    cls = _CLASSES.get(kind)
    return (
        cls(model, reason, status=status) if cls is not None else ProviderError(model, reason, status=status, kind=kind)
    )
