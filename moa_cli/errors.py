"""Every error moa raises on purpose derives from `MoaError`.

    MoaError
    ├── ConfigError              bad option, config file or environment  -> exit 2
    │   └── MissingKeyError      a provider needs an API key that is not set
    ├── ProviderError            one model call failed (after the client's own retries)
    │   ├── AuthenticationError  401 / 403
    │   ├── ModelNotFoundError   404
    │   ├── RateLimitError       429 that outlived the retries
    │   ├── ProviderTimeout      connect or read timeout (the SDK's --timeout)
    │   └── ProviderConnectionError   refused, reset, or a stream cut mid-way
    └── TurnFailed               every reference of a layer failed, or the aggregator did -> exit 1

Front ends map these to exit codes (cli) or HTTP statuses (server) in one place each.
The messages are single lines meant for users: they never carry keys or headers.
"""

from __future__ import annotations


class MoaError(Exception):
    """Base class of moa's own errors."""


class ConfigError(MoaError):
    """The user's options, environment or config file are wrong. Exit code 2."""


class MissingKeyError(ConfigError):
    """A provider needs a key: the message names the env var or config entry to set."""


class ProviderError(MoaError):
    """One model call failed. `reason` is a short, user-facing description."""

    def __init__(self, model: str, reason: str, *, status: int | None = None) -> None:
        super().__init__(f"{model}: {reason}")
        self.model = model
        self.reason = reason
        self.status = status


class AuthenticationError(ProviderError):
    pass


class ModelNotFoundError(ProviderError):
    pass


class RateLimitError(ProviderError):
    pass


class ProviderTimeout(ProviderError):
    pass


class ProviderConnectionError(ProviderError):
    pass


class TurnFailed(MoaError):
    """The turn produced no answer: the aggregator failed or a whole layer did."""

    def __init__(self, message: str, failures: list[ProviderError] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []
