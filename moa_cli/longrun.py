"""What a long-running command sets up for throughput: `moa serve`, `moa batch`, `moa eval`.

The event loop. uvloop (libuv, in C) where it is installed, which is everywhere but Windows
(a dependency with that marker). Measured on this project's 2-core machine (issue 22, runs
alternated): `moa serve` spent 10-15% less CPU a turn; `moa batch`, with the heap below frozen
too, answered 10% more items a second from an instant server, and spent the same CPU per call,
within the noise, at 50 ms a call.
uvicorn picks uvloop by itself (`loop="auto"`); batch and eval ask for it here. The REPL and
`moa ask` keep asyncio's own loop: a turn's few calls gain nothing measurable, and the REPL's
prompt_toolkit is tested on asyncio's.

The garbage collector. After start-up the interpreter tracks some 120,000 container objects
(mostly the SDKs' and pydantic's, made at import), and a full collection walks them all:
55-60 ms with the event loop stopped, every few seconds under load, a stall for every turn in
flight. `freeze_startup()` moves what is alive after start-up into the permanent generation
(`gc.freeze()`), so later collections walk only what was made since (the longest pause in
`moa serve`'s benchmark: 62 -> 30 ms). Nothing is leaked: frozen objects are the modules,
classes and settings a process keeps to its end anyway.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when uvloop is installed; None for asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # Windows, or an install without it: asyncio's loop works the same, slower
        return None
    return uvloop.new_event_loop


def freeze_startup() -> None:
    """Collect once, then freeze what survives: later full collections skip it."""
    gc.collect()
    gc.freeze()
