"""What the long-running commands set up (longrun.py): uvloop's event loop where it is installed,
asyncio's where it is not, and the start-up heap frozen out of the collector's full passes."""

from __future__ import annotations

import asyncio
import gc
import sys

import pytest

from moa_cli import longrun, signals


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_batch_and_evals_loop_is_uvloops_where_it_is_installed() -> None:
    pytest.importorskip("uvloop")  # a dependency everywhere but Windows
    factory = longrun.event_loop_factory()
    assert factory is not None
    assert signals.run(_loop_module(), loop_factory=factory).startswith("uvloop")


def test_without_a_factory_the_loop_is_asyncios_own() -> None:
    assert signals.run(_loop_module()).startswith("asyncio")  # moa ask, the library


def test_without_uvloop_there_is_no_factory_and_asyncio_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as on Windows: the import fails
    factory = longrun.event_loop_factory()
    assert factory is None
    assert signals.run(_loop_module(), loop_factory=factory).startswith("asyncio")


def test_a_signal_still_cancels_a_turn_on_uvloop() -> None:
    pytest.importorskip("uvloop")
    import os
    import signal

    async def turn() -> None:
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        await asyncio.sleep(10)

    with pytest.raises(signals.Interrupted) as caught:
        signals.run(turn(), loop_factory=longrun.event_loop_factory())
    assert caught.value.signum == signal.SIGTERM


def test_freeze_startup_takes_what_is_alive_out_of_later_collections() -> None:
    kept = [{"made": "before"}]
    try:
        longrun.freeze_startup()
        assert gc.get_freeze_count() > 0
        assert not any(o is kept for o in gc.get_objects())  # frozen: no collection walks it
    finally:
        gc.unfreeze()  # the test process goes on collecting as before
    assert any(o is kept for o in gc.get_objects())
