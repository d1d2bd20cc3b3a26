"""One line on stderr when llama.cpp kills the process, instead of a bare "Illegal instruction".

A native fault in llama.cpp (SIGSEGV, SIGILL, SIGBUS, SIGFPE, or SIGABRT from its own
asserts) ends the process: nothing in Python can catch it. What can be done is to say so.
`install_notice()` puts a handler on those signals that writes one line (what crashed, what
to try, and that the conversation log is kept), puts the default action back and sends the
signal again: the process still dies of it, with the exit status a shell expects (132, 134,
139). The handler is a ctypes callback, so it runs Python code: it needs the interpreter
lock, which llama.cpp's calls release (ctypes drops it around every foreign call), and it
writes with os.write, which takes no Python-level lock.

Installed when a local model is first loaded: a process that never runs llama.cpp keeps
Python's own behaviour (and pytest's faulthandler).
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from typing import Any

from moa_cli.providers.cpu import REPACK_ENV

#: The signals a native crash arrives as.
FATAL_SIGNALS = (signal.SIGSEGV, signal.SIGILL, signal.SIGBUS, signal.SIGFPE, signal.SIGABRT)

NOTICE = (
    "moa: the local model crashed inside llama.cpp ({name}, weight repacking {state}). Try {env}={other} "
    "(or repack = {other_word} under [providers.local]); `moa models --local` shows what was chosen. "
    "Earlier turns are kept in the log: `moa chat -c` continues the conversation.\n"
)

_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int)
_installed: dict[int, Any] = {}  # signal -> the ctypes callback, kept alive while installed
_lock = threading.Lock()
_repack = [False]  # the repacking the loaded model uses, for the notice
_announced = [False]  # several llama.cpp threads can fault at once: one line is enough


def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    return libc


def _notice(signum: int) -> None:
    """The handler: one line, the default action back, and the same signal again."""
    try:
        if not _announced[0]:
            _announced[0] = True
            on = _repack[0]
            line = NOTICE.format(
                name=signal.Signals(signum).name,
                state="on" if on else "off",
                env=REPACK_ENV,
                other=0 if on else 1,
                other_word="false" if on else "true",
            )
            os.write(2, line.encode())
    finally:
        _libc().signal(signum, signal.SIG_DFL.value)
        os.kill(os.getpid(), signum)  # delivered as the handler returns: the process ends as it would have


def install_notice(repack: bool) -> bool:
    """Put the one-line notice on the fatal signals (once per process); False where it cannot be.

    `repack` is the repacking the model is loaded with: the notice suggests the other.
    """
    if os.name != "posix":
        return False
    with _lock:
        _repack[0] = repack
        if _installed:
            return True
        try:
            libc = _libc()
        except (OSError, AttributeError):
            return False
        for signum in FATAL_SIGNALS:
            callback = _HANDLER(_notice)
            previous = libc.signal(signum, ctypes.cast(callback, ctypes.c_void_p).value)
            if previous == ctypes.c_void_p(-1).value:  # SIG_ERR
                continue
            _installed[signum] = callback
        return bool(_installed)
