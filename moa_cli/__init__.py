"""moa: Mixture-of-Agents in the terminal and in your own Python code.

    from moa_cli import MoA
    moa = MoA(references=["model-a", "model-b"], aggregator="model-a")
    print(moa.run("Why is the sky blue?").answer)

Importing this package is cheap: the public names are loaded on first use so that
`moa --version` and `moa --help` start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

__all__ = [
    "AnswerStream",
    "AuthenticationError",
    "BadResponse",
    "ConfigError",
    "ContextOverflow",
    "ContextRefused",
    "DeadlineExceeded",
    "EmptyAnswer",
    "MissingKeyError",
    "MoA",
    "MoaError",
    "ModelNotFoundError",
    "Proposal",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderTimeout",
    "RateLimitError",
    "StreamCutOff",
    "TurnFailed",
    "TurnResult",
    "Usage",
    "__version__",
]

_LAZY = {
    "MoA": "moa_cli.api",
    "AnswerStream": "moa_cli.api",
    "TurnResult": "moa_cli.types",
    "Proposal": "moa_cli.types",
    "Usage": "moa_cli.types",
    "MoaError": "moa_cli.errors",
    "ConfigError": "moa_cli.errors",
    "ProviderError": "moa_cli.errors",
    "TurnFailed": "moa_cli.errors",
    "MissingKeyError": "moa_cli.errors",
    "AuthenticationError": "moa_cli.errors",
    "RateLimitError": "moa_cli.errors",
    "ModelNotFoundError": "moa_cli.errors",
    "ProviderTimeout": "moa_cli.errors",
    "DeadlineExceeded": "moa_cli.errors",
    "ProviderConnectionError": "moa_cli.errors",
    "StreamCutOff": "moa_cli.errors",
    "BadResponse": "moa_cli.errors",
    "ContextOverflow": "moa_cli.errors",
    "ContextRefused": "moa_cli.errors",
    "EmptyAnswer": "moa_cli.errors",
}

if TYPE_CHECKING:  # pragma: no cover
    from moa_cli.api import AnswerStream, MoA
    from moa_cli.errors import (
        AuthenticationError,
        BadResponse,
        ConfigError,
        ContextOverflow,
        ContextRefused,
        DeadlineExceeded,
        EmptyAnswer,
        MissingKeyError,
        MoaError,
        ModelNotFoundError,
        ProviderConnectionError,
        ProviderError,
        ProviderTimeout,
        RateLimitError,
        StreamCutOff,
        TurnFailed,
    )
    from moa_cli.types import Proposal, TurnResult, Usage


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'moa_cli' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
