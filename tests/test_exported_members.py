"""`moa_cli.__all__` is the public API: pinned here, and every name in it must resolve."""

from __future__ import annotations

import moa_cli
from moa_cli import errors

EXPECTED = {
    "MoA",
    "AnswerStream",
    "TurnResult",
    "Proposal",
    "Usage",
    "MoaError",
    "ConfigError",
    "MissingKeyError",
    "ProviderError",
    "AuthenticationError",
    "RateLimitError",
    "ModelNotFoundError",
    "ProviderTimeout",
    "DeadlineExceeded",
    "ProviderConnectionError",
    "StreamCutOff",
    "BadResponse",
    "ContextOverflow",
    "ContextRefused",
    "EmptyAnswer",
    "TurnFailed",
    "__version__",
}


def test_all_is_pinned() -> None:
    assert set(moa_cli.__all__) == EXPECTED
    assert len(moa_cli.__all__) == len(EXPECTED)  # no duplicates


def test_every_exported_name_resolves() -> None:
    for name in moa_cli.__all__:
        assert getattr(moa_cli, name) is not None, name


def test_every_exception_class_is_exported() -> None:
    classes = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == errors.__name__
    }
    assert classes <= set(moa_cli.__all__)
    for name in classes:
        assert getattr(moa_cli, name) is getattr(errors, name)


def test_each_provider_error_class_has_its_kind() -> None:
    assert {cls.default_kind for cls in (errors.ProviderError, *_subclasses(errors.ProviderError))} <= set(errors.KINDS)
    assert errors.StreamCutOff("m", "x").kind == "cut_off"
    assert isinstance(errors.StreamCutOff("m", "x"), errors.ProviderConnectionError)
    assert isinstance(errors.DeadlineExceeded("m", "x"), errors.ProviderTimeout)


def _subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_subclasses(direct))]
