"""The chat loop: prompt, dispatch, run turns, route Ctrl-C, warm up while the user types.

Ctrl-C during a turn cancels that turn (its HTTP streams are closed) and the prompt comes
back; at the prompt it clears the line. A cancelled or failed turn leaves the conversation
exactly as it was, so `/retry` can run it again.

Start-up is kept short: before the first prompt only the config, prompt_toolkit and this
package load. The engine, the SDKs, rich and Markdown load on a background thread while
the user types (`warm_up`); that is why `moa_cli.api` and `moa_cli.render` are imported
where they are first used, not at the top.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.output import create_output

from moa_cli.config import Settings
from moa_cli.errors import MoaError
from moa_cli.providers.registry import ProviderPool
from moa_cli.repl import slash
from moa_cli.repl.session import make_session
from moa_cli.repl.slash import ChatState, Next, error, note
from moa_cli.terminal import colour_off

if TYPE_CHECKING:
    from rich.console import Console

    from moa_cli.api import MoA
    from moa_cli.events import Event
    from moa_cli.types import TurnResult

# What the first turn needs; `warm_up` imports it on a background thread.
FIRST_TURN_MODULES = ("moa_cli.api", "moa_cli.render", "rich.markdown", "rich.live", "rich.table")


def warm_up(settings: Settings) -> None:
    """Import what the first turn needs (the SDKs take ~1 s), meant for a background thread."""
    for name in FIRST_TURN_MODULES:
        importlib.import_module(name)
    try:
        ProviderPool(settings).preload([*settings.references, settings.aggregator])
    except Exception:  # noqa: BLE001 - the real import at the first turn reports it properly
        pass


def lineup_summary(settings: Settings) -> str:
    """`Llama-3.3-70B-Instruct-Turbo, 2× DeepSeek-V3 → Qwen2.5-72B-Instruct-Turbo`"""

    def short(model: str) -> str:
        return model.rsplit("/", 1)[-1]

    counts: dict[str, int] = {}
    for model in settings.references:
        counts[short(model)] = counts.get(short(model), 0) + 1
    refs = ", ".join(name if n == 1 else f"{n}× {name}" for name, n in counts.items())
    rounds = f" ×{settings.rounds} rounds" if settings.rounds > 1 else ""
    return f"{refs}{rounds} → {short(settings.aggregator)}"


def banner(settings: Settings) -> str:
    mode = "" if settings.multi_turn else " · single-turn"
    return f"moa · {lineup_summary(settings)}{mode} · /help for commands · Esc-Enter for a new line · Ctrl-D quits"


def write_dim(stream: TextIO, text: str) -> None:
    """One dim line without loading rich (it loads while the user types), same rules as rich."""
    plain = not stream.isatty() or colour_off() or os.environ.get("TERM", "").lower() in ("dumb", "unknown")
    stream.write(f"{text}\n" if plain else f"\x1b[2m{text}\x1b[0m\n")
    stream.flush()


class Repl:
    """The chat loop. Everything it touches is injected, so tests drive it in-process.

    `line_mode` is for stdin that is not a terminal: only known commands are commands,
    and each answer is printed plainly once its turn has succeeded (never a partial one).
    `turns` and `failed` count the turns run and the turns that failed.
    """

    def __init__(
        self,
        state: ChatState,
        err: Console | None = None,
        out: Console | None = None,
        *,
        session: PromptSession[str] | None = None,
        markdown: bool | None = None,
        warm_up: bool = False,
        line_mode: bool = False,
    ) -> None:
        self.state = state
        self._err = err
        self._out = out
        self.session = session
        self.markdown = False if line_mode else markdown
        self.line_mode = line_mode
        self.turns = 0
        self.failed = 0
        self._warm_up = warm_up
        self._warm_thread: threading.Thread | None = None
        self._moa: MoA | None = None
        self._task: asyncio.Task[TurnResult] | None = None
        self._starting = False  # a turn is getting ready (its task does not exist yet)
        self._cancel_requested = False  # Ctrl-C came while it was
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def err(self) -> Console:
        """Progress, notes and errors (stderr unless injected). Made on first use: see `warm_up`."""
        if self._err is None:
            from moa_cli.render import make_console

            self._err = make_console(stderr=True)
        return self._err

    @property
    def out(self) -> Console:
        """Answers only (stdout unless injected)."""
        if self._out is None:
            from moa_cli.render import make_console

            self._out = make_console()
        return self._out

    # -------------------------------------------------------------- the loop

    async def run(self) -> int:
        """Prompt until /exit, exit, quit or Ctrl-D; returns the exit code (0)."""
        assert self.session is not None, "the REPL needs a PromptSession"
        self._loop = asyncio.get_running_loop()
        restore_sigint = self._catch_sigint()
        try:
            if self._err is None:
                write_dim(sys.stderr, banner(self.state.settings))
            else:
                self._err.print(banner(self.state.settings), style="dim", markup=False, highlight=False)
            while True:
                try:
                    line = await self.session.prompt_async(pre_run=self._after_first_prompt)
                except KeyboardInterrupt as exc:  # Ctrl-C at the prompt: drop the line, stay
                    if type(exc) is not KeyboardInterrupt:
                        raise  # SIGTERM or SIGHUP (a KeyboardInterrupt subclass): the session ends
                    if not self.session.default_buffer.text:  # perhaps they meant to quit
                        note(self.err, "(Ctrl-D or /exit quits)")
                    continue
                except EOFError:  # Ctrl-D
                    return 0
                if await self.handle(line) is Next.EXIT:
                    return 0
        finally:
            restore_sigint()
            await self.aclose()

    async def handle(self, line: str) -> Next:
        """One input: a slash command, an exit word, or a prompt to run as a turn."""
        read = slash.read(line, known_only=self.line_mode)
        if read.kind == "exit":
            return Next.EXIT
        if read.kind == "command":
            outcome = slash.run(read.text, self.state, self.err)
            if outcome is Next.RETRY:
                await self.retry()
                return Next.CONTINUE
            return outcome
        if read.kind == "prompt":
            await self.turn(read.text)
        return Next.CONTINUE

    async def retry(self) -> TurnResult | None:
        """Run the last prompt again: in place of its answer if it had one."""
        prompt = self.state.last_prompt
        if prompt is None:
            return None
        return await self.turn(prompt, replace_last=not self.state.last_failed)

    async def turn(self, prompt: str, *, replace_last: bool = False) -> TurnResult | None:
        """Run one turn; the conversation changes only if it succeeds."""
        from moa_cli.render import TurnView

        state = self.state
        snapshot = state.conversation.snapshot()
        if replace_last:
            state.conversation.pop()
        state.last_prompt = prompt
        self.turns += 1
        messages = state.conversation.messages_for(prompt)
        self._starting, self._cancel_requested = True, False
        try:
            moa = await self._get_moa()  # the first turn may wait here for the warm-up's imports
        finally:
            self._starting = False
        if self._cancel_requested:  # Ctrl-C before the turn's task existed: nothing was sent
            state.conversation.restore(snapshot)
            state.last_failed = not replace_last
            note(self.err, "cancelled: the conversation is as it was before this turn")
            return None
        moa.conversation_id, moa.source = state.conversation_id, "chat"  # the log (recorder.py)
        # In line mode the answer is held back until the turn has succeeded.
        view = TurnView(
            self.err,
            self.out,
            markdown=self.markdown,
            show_answer=not self.line_mode,
            preview=state.settings.preview and not self.line_mode,
        )
        view.start()
        closed_pipe: list[BrokenPipeError] = []

        def on_event(event: Event) -> None:
            # The reader of stdout went away while the answer streamed: end the turn and
            # raise it below, rather than let the engine report it as a model failure.
            try:
                view.handle(event)
            except BrokenPipeError as exc:
                closed_pipe.append(exc)
                self._cancel_turn()

        task = asyncio.create_task(moa.arun(messages, on_event=on_event))
        self._task = task
        try:
            await asyncio.wait([task])
        finally:
            self._task = None
            if not task.done():  # we ourselves were cancelled (line mode's Ctrl-C)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            try:
                view.stop()
            except BrokenPipeError as exc:  # the newline after a streamed answer
                closed_pipe.append(exc)
            if task.cancelled() or task.exception() is not None:
                state.conversation.restore(snapshot)
                # A failed re-run leaves the old answer in place: /retry replaces it again.
                state.last_failed = not replace_last
        if closed_pipe:
            raise closed_pipe[0]
        if task.cancelled():
            note(self.err, "cancelled: the conversation is as it was before this turn")
            return None
        failure = task.exception()
        if failure is not None:
            self._failed(failure)
            return None
        result = task.result()
        recording = moa.last_recording  # this turn's: what the log holds (or would, with the log off)
        assert recording is not None and recording.record is not None
        state.conversation.add(prompt, result, recording.record)
        state.last_failed = False
        if self.line_mode:
            self._print_answer(result.answer)
        view.footer(result)
        return result

    def _failed(self, exc: BaseException) -> None:
        """One error line for a failed turn; the session goes on (unless stdout is gone)."""
        if isinstance(exc, BrokenPipeError):  # the reader of stdout went away: stop
            raise exc
        self.failed += 1
        if isinstance(exc, MoaError):
            message = str(exc)
        else:  # a bug must not end the session; --verbose shows the traceback
            from moa_cli.diagnostics import logger

            logger.opt(exception=exc).debug("turn failed")
            message = f"unexpected error: {type(exc).__name__}: {exc}"
        error(self.err, f"{message} (/retry to try again)")

    def _print_answer(self, answer: str) -> None:
        """The whole answer, plainly, as the streamed plain view would have written it."""
        if not answer:
            return
        file = self.out.file
        file.write(answer if answer.endswith("\n") else answer + "\n")
        file.flush()

    def interrupt(self) -> None:
        """Cancel the running turn, if any. Safe to call from any thread or a signal handler."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._cancel_turn)

    def _cancel_turn(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        elif self._starting:  # the turn is still getting ready: it stops before it sends
            self._cancel_requested = True

    async def aclose(self) -> None:
        moa, self._moa = self._moa, None
        if moa is not None:
            await moa.aclose()
        if self._warm_thread is not None and self._warm_thread.ident is not None:
            # Let a half-done import finish rather than exit under it (off the event loop).
            await asyncio.to_thread(self._warm_thread.join, 5)

    # -------------------------------------------------------------- helpers

    async def _get_moa(self) -> MoA:
        thread = self._warm_thread
        if thread is not None:
            # Two threads importing one package at once can see it half-initialised
            # (ImportError "partially initialized module"): let the warm-up finish first.
            while thread.ident is None:  # scheduled with call_soon, not started yet
                await asyncio.sleep(0.005)
            await asyncio.to_thread(thread.join)
        from moa_cli.api import MoA

        if self._moa is None:
            self._moa = MoA(settings=self.state.settings)
            await self._moa.__aenter__()
        # /set and /system change the settings; the connections stay.
        self._moa.settings = self.state.settings
        return self._moa

    def _after_first_prompt(self) -> None:
        if self._warm_up and self._warm_thread is None:
            thread = threading.Thread(target=warm_up, args=(self.state.settings,), name="moa-warm-up", daemon=True)
            self._warm_thread = thread
            # call_soon: start once the prompt has been drawn, not before.
            asyncio.get_running_loop().call_soon(thread.start)

    def _catch_sigint(self) -> Callable[[], object]:
        """Route Ctrl-C (SIGINT) to `interrupt` for the whole session; returns an undo function.

        prompt_toolkit reads Ctrl-C as a key at the prompt and puts this handler back after
        each prompt. During a turn the terminal is in cooked mode and Ctrl-C is a signal.
        """
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def on_sigint(signum: int, frame: FrameType | None) -> None:
            self.interrupt()

        previous = signal.signal(signal.SIGINT, on_sigint)
        return lambda: signal.signal(signal.SIGINT, previous)


def run_interactive(settings: Settings, resumed: object = None) -> int:
    """The interactive chat on the real terminal; returns the exit code."""
    output = None
    if not sys.stdout.isatty():  # `moa chat > answers.md`: draw the prompt on stderr
        output = create_output(stdout=sys.stderr)
    history = settings.paths.history_file if settings.paths else None
    session = make_session(history, output=output)
    repl = Repl(ChatState.start(settings, resumed), session=session, warm_up=True)
    return asyncio.run(repl.run())
