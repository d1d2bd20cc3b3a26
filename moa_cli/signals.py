"""SIGINT, SIGTERM and SIGHUP: cancel the running turn, then stop with 130, 143 or 129.

A signal that arrives while a turn runs cancels its asyncio task, so every `finally` in
the engine runs and every HTTP stream is closed; only then is `Interrupted` raised. Outside
a turn, SIGTERM and SIGHUP raise `Interrupted` at once, as SIGINT raises KeyboardInterrupt.

    install()                         # once, in main(): SIGTERM/SIGHUP raise Interrupted
    result = run(coro)                # asyncio.run(coro), cancelled by the three signals
    result = run(coro, runner=runner) # the same on an asyncio.Runner kept across turns
    with cancel_on_signal(task) as caught:   # inside a running loop, for the REPL
        await asyncio.wait([task])
    if caught.signum is not None: ...

`Interrupted` is a KeyboardInterrupt, so code that handles Ctrl-C handles the others too.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # asyncio is imported when a turn runs: `moa --version` does not pay for it
    import asyncio

T = TypeVar("T")

HANDLED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
_REASONS = {"SIGINT": "interrupted", "SIGTERM": "terminated", "SIGHUP": "hung up"}


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def reason(self) -> str:
        """`interrupted` (SIGINT), `terminated` (SIGTERM) or `hung up` (SIGHUP)."""
        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            return f"stopped by signal {self.signum}"
        return _REASONS.get(name, f"stopped by {name}")


def exit_code_of(exc: KeyboardInterrupt) -> int:
    """130 for a plain Ctrl-C, 128 + signum for an `Interrupted`."""
    return exc.exit_code if isinstance(exc, Interrupted) else 128 + signal.SIGINT


def reason_of(exc: KeyboardInterrupt) -> str:
    return exc.reason if isinstance(exc, Interrupted) else "interrupted"


def _raise(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install() -> None:
    """SIGTERM and SIGHUP raise `Interrupted` (SIGINT keeps Python's KeyboardInterrupt).

    Signals whose handler is not the default one (e.g. ignored by `nohup`) are left alone.
    """
    if not _in_main_thread():
        return
    for signum in HANDLED:
        if signum != signal.SIGINT and signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, _raise)


@dataclass
class Caught:
    """What `cancel_on_signal` saw: the first signal received, if any."""

    signum: int | None = None

    def raise_if_caught(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)


@contextmanager
def cancel_on_signal(task: asyncio.Task[Any] | None = None, *, signals: tuple[int, ...] = HANDLED) -> Iterator[Caught]:
    """While active (inside a running loop), the first of `signals` cancels `task`.

    `task` defaults to the current task. A second signal raises `Interrupted` at once (the
    user insists). Leaving restores the previous handlers. Outside the main thread, where
    Python cannot set handlers, this does nothing.
    """
    import asyncio

    caught = Caught()
    if not _in_main_thread():
        yield caught
        return
    loop = asyncio.get_running_loop()
    target = task or asyncio.current_task()

    def on_signal(signum: int, frame: Any) -> None:
        if caught.signum is not None or target is None or target.done():
            raise Interrupted(signum)
        caught.signum = signum
        # Cancel from the loop, not from inside whatever the handler interrupted.
        loop.call_soon_threadsafe(target.cancel)

    previous = {}
    for signum in signals:
        if signal.getsignal(signum) != signal.SIG_IGN:
            previous[signum] = signal.signal(signum, on_signal)
    try:
        yield caught
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run(
    coro: Coroutine[Any, Any, T],
    *,
    runner: asyncio.Runner | None = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> T:
    """Run `coro` to completion, like `asyncio.run` (or `runner.run`), cancelled by a signal;
    on a loop from `loop_factory` when one is given (longrun.event_loop_factory: uvloop; a
    `runner` given has its loop already, and `loop_factory` is then not used).

    On SIGINT, SIGTERM or SIGHUP the task is cancelled and, once it has unwound (streams
    closed), `Interrupted(signum)` is raised, even if the coroutine swallowed the cancellation.
    """
    import asyncio

    if runner is None:
        with asyncio.Runner(loop_factory=loop_factory) as own:
            return run(coro, runner=own)
    caught = Caught()

    async def guarded() -> T:
        nonlocal caught
        with cancel_on_signal() as caught:
            return await coro

    try:
        result = runner.run(guarded())
    except asyncio.CancelledError:
        caught.raise_if_caught()
        raise
    caught.raise_if_caught()
    return result
