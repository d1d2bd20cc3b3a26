"""Pytest fixtures for the fake LLM server.

``tests/conftest.py`` re-exports these with ``from tests.fakes.fixtures import *``.
One server is started per test session (per xdist worker); ``llm_server`` hands
each test a freshly ``reset()`` instance.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.llm_server import FakeLLMServer

__all__ = ["_fake_server", "llm_server"]


@pytest.fixture(scope="session")
def _fake_server() -> Iterator[FakeLLMServer]:
    server = FakeLLMServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def llm_server(_fake_server: FakeLLMServer) -> Iterator[FakeLLMServer]:
    _fake_server.reset()
    yield _fake_server
    # Let in-flight (e.g. cancelled) requests wind down so they can't leak into the next test.
    _fake_server.wait_until_idle(timeout=2.0)
    _fake_server.reset()
