"""The prompt: a prompt_toolkit session with emacs keys, history, suggestions and Tab completion.

History belongs to the session and persists in a file (under MOA_HOME). A history file
that cannot be read or written (a directory, no permission, a read-only home) costs one
warning, and the session runs without saved history: never a traceback, never a "Press
ENTER to continue" that swallows the first line typed.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.enums import EditingMode
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.output import ColorDepth, Output

from moa_cli.repl import slash
from moa_cli.terminal import colour_off

PROMPT = ">>> "
CONTINUATION = "... "

Warn = Callable[[str], None]


def warn_on_stderr(message: str) -> None:
    """A warning line before rich has loaded (it loads while the user types)."""
    sys.stderr.write(f"moa: warning: {message}\n")
    sys.stderr.flush()


def history_unusable(message: str, path: Path, reason: str) -> str:
    return f"{message} {path}: {reason}; running without saved history"


class SlashCompleter(Completer):
    """Tab completes command names, then the keys of /set."""

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterator[Completion]:
        before = document.text_before_cursor
        word = before.rsplit(" ", 1)[-1]
        for candidate in slash.completions(before):
            yield Completion(candidate, start_position=-len(word))


class GuardedFileHistory(FileHistory):
    """A FileHistory that stops using its file, with one warning, when the file fails.

    prompt_toolkit reports an exception in history loading as a traceback with "Press
    ENTER to continue", and one more on every line stored. The probe in `open_history`
    catches the usual causes up front; this catches what changes while the REPL runs.
    """

    def __init__(self, path: Path, warn: Warn) -> None:
        super().__init__(str(path))
        self.path = path
        self._warn = warn
        self.broken = False

    def _fail(self, exc: OSError) -> None:
        if not self.broken:
            self.broken = True
            self._warn(history_unusable("the input history file failed:", self.path, exc.strerror or str(exc)))

    def load_history_strings(self) -> Iterable[str]:
        if self.broken:
            return []
        try:
            return list(super().load_history_strings())
        except OSError as exc:
            self._fail(exc)
            return []

    def store_string(self, string: str) -> None:
        if self.broken:
            return
        try:
            super().store_string(string)
        except OSError as exc:
            self._fail(exc)


def open_history(path: Path | None, warn: Warn = warn_on_stderr) -> History:
    """The saved history at `path`, or an in-memory one (with one warning) if it is unusable."""
    if path is None:
        return InMemoryHistory()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if path.exists() and not path.is_file():  # a FIFO would block the first read
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        with open(path, "ab"):  # creates it; fails if it cannot be written
            pass
        with open(path, "rb"):  # fails if it cannot be read
            pass
    except OSError as exc:
        warn(history_unusable("cannot use the input history file", path, exc.strerror or str(exc)))
        return InMemoryHistory()
    return GuardedFileHistory(path, warn)


def key_bindings() -> KeyBindings:
    bindings = KeyBindings()

    # Shift-Enter cannot be told from Enter in a terminal; Alt-Enter sends Esc then Enter.
    @bindings.add("escape", "enter")
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    return bindings


def make_session(
    history_file: Path | None,
    *,
    input: Input | None = None,
    output: Output | None = None,
    warn: Warn = warn_on_stderr,
) -> PromptSession[str]:
    """The REPL's prompt. Tests pass `create_pipe_input()` and `DummyOutput()`."""
    return PromptSession(
        "\n" + PROMPT,  # a blank line between one exchange and the next
        history=open_history(history_file, warn),
        auto_suggest=AutoSuggestFromHistory(),
        completer=SlashCompleter(),
        complete_while_typing=False,  # Tab completes; no menu popping up over questions
        key_bindings=key_bindings(),
        editing_mode=EditingMode.EMACS,
        multiline=False,
        prompt_continuation=CONTINUATION,
        enable_suspend=True,
        input=input,
        output=output,
        color_depth=ColorDepth.DEPTH_1_BIT if colour_off() else None,  # NO_COLOR, as every other writer reads it
    )
