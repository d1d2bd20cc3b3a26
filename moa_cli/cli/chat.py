"""`moa chat`: the interactive REPL, and a line-by-line mode when stdin is not a terminal.

On a terminal: a prompt_toolkit prompt (`>>> `) with emacs keys, persistent history under
MOA_HOME, suggestions from history, slash commands with Tab completion, and multi-line
input (Esc-Enter or Alt-Enter for a new line; a bracketed paste arrives whole). Each turn
shows live progress on stderr and streams the answer as Markdown on stdout.

Ctrl-C during a turn cancels that turn (its HTTP streams are closed) and the prompt
comes back; at the prompt it clears the line. A cancelled or failed turn leaves the
conversation exactly as it was, so `/retry` can run it again.

Not a terminal: one turn per input line, each answer printed plainly on stdout; exit 0
at end of input. Slash commands work there too, which makes chat scriptable.

Start-up is kept short: only Typer, the config and prompt_toolkit load before the
prompt; the SDKs, the engine and Markdown load in a background thread while the user types.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, Optional, TextIO

import typer

from moa_cli.cli import options as opt
from moa_cli.cli.errors import handle_errors

if TYPE_CHECKING:
    import asyncio

    from prompt_toolkit import PromptSession
    from prompt_toolkit.input import Input
    from prompt_toolkit.output import Output
    from rich.console import Console

    from moa_cli.api import MoA
    from moa_cli.cli.slash import ChatState, Outcome
    from moa_cli.config import Settings
    from moa_cli.types import TurnResult

PROMPT = ">>> "
CONTINUATION = "... "

MultiTurn = Annotated[
    Optional[bool],
    typer.Option(
        "--multi-turn/--no-multi-turn",
        help="Send the earlier turns with each prompt (default on; --no-multi-turn answers each prompt alone).",
        rich_help_panel=opt.SAMPLING,
        show_default=False,
    ),
]


def chat(
    aggregator: opt.Aggregator = None,
    reference_models: opt.References = None,
    local: opt.Local = False,
    rounds: opt.Rounds = None,
    aggregator_prompt: opt.AggregatorPrompt = None,
    temperature: opt.Temperature = None,
    max_tokens: opt.MaxTokens = None,
    seed: opt.Seed = None,
    system: opt.System = None,
    multi_turn: MultiTurn = None,
    num_proc: opt.NumProc = None,
    timeout: opt.Timeout = None,
    retries: opt.Retries = None,
    layer_deadline: opt.LayerDeadline = None,
    verbose: opt.Verbose = False,
) -> None:
    """Chat with the mixture: a multi-turn REPL with live progress and streamed Markdown.

    Type /help inside for the commands. With stdin not a terminal, each input line is one turn and each answer is printed plainly on stdout.

    Examples:

      moa chat

      moa chat --no-multi-turn -r ollama:llama3.2:1b -r ollama:qwen2.5:1.5b -a ollama:qwen2.5:1.5b

      printf 'Hi\\nAnd in French?\\n' | moa chat > answers.txt
    """
    flags = opt.overrides(locals())
    with handle_errors():
        from moa_cli.cli.runtime import load

        settings = load(flags, local=local)
        check_lineup(settings)
        if is_interactive():
            run_repl(settings)
        else:
            run_lines(settings, sys.stdin)


def is_interactive() -> bool:
    """The REPL needs a terminal to read from and one to draw on (stdout or stderr)."""
    stdin = sys.stdin
    if stdin is None or not stdin.isatty():
        return False
    return any(stream is not None and stream.isatty() for stream in (sys.stdout, sys.stderr))


def check_lineup(settings: Settings) -> None:
    """Fail before the prompt (exit 2) if a model's provider cannot be built, e.g. no key."""
    from moa_cli.providers.registry import ProviderPool

    ProviderPool(settings).check([*settings.references, settings.aggregator])


def warm_up(settings: Settings) -> None:
    """Import what the first turn needs (the SDKs take ~1 s), meant for a background thread."""
    import importlib

    from moa_cli.providers.registry import ProviderPool

    for name in ("moa_cli.api", "moa_cli.render", "rich.markdown", "rich.live", "rich.table"):
        importlib.import_module(name)
    try:
        ProviderPool(settings).preload([*settings.references, settings.aggregator])
    except Exception:  # noqa: BLE001 - the real import at the first turn reports it properly
        pass


# ---------------------------------------------------------------------------- the prompt


def make_session(
    history_file: Path | None,
    *,
    input: Input | None = None,
    output: Output | None = None,
) -> PromptSession[str]:
    """The REPL's prompt. Tests pass `create_pipe_input()` and `DummyOutput()`."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
    from prompt_toolkit.completion import Completer, Completion
    from prompt_toolkit.enums import EditingMode
    from prompt_toolkit.history import FileHistory, History, InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings

    from moa_cli.cli import slash

    class SlashCompleter(Completer):
        def get_completions(self, document: Any, complete_event: Any) -> Any:
            before = document.text_before_cursor
            word = before.rsplit(" ", 1)[-1]
            for candidate in slash.completions(before):
                yield Completion(candidate, start_position=-len(word))

    bindings = KeyBindings()

    # Shift-Enter cannot be told from Enter in a terminal; Alt-Enter sends Esc then Enter.
    @bindings.add("escape", "enter")
    def _newline(event: Any) -> None:
        event.current_buffer.insert_text("\n")

    history: History = InMemoryHistory()
    if history_file is not None:
        try:
            history_file.parent.mkdir(parents=True, exist_ok=True)
            history_file.touch(exist_ok=True)
            history = FileHistory(str(history_file))
        except OSError:
            pass  # a read-only home still gets a working prompt, without persistence

    session: PromptSession[str] = PromptSession(
        "\n" + PROMPT,  # a blank line between one exchange and the next
        history=history,
        auto_suggest=AutoSuggestFromHistory(),
        completer=SlashCompleter(),
        complete_while_typing=False,  # Tab completes; no menu popping up over questions
        key_bindings=bindings,
        editing_mode=EditingMode.EMACS,
        multiline=False,
        prompt_continuation=CONTINUATION,
        enable_suspend=True,
        input=input,
        output=output,
    )
    return session


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
    import os

    plain = not stream.isatty() or bool(os.environ.get("NO_COLOR")) or os.environ.get("TERM", "").lower() in ("dumb", "unknown")
    stream.write(f"{text}\n" if plain else f"\x1b[2m{text}\x1b[0m\n")
    stream.flush()


# ---------------------------------------------------------------------------- the REPL


class Repl:
    """The chat loop. Everything it touches is injected, so tests drive it in-process."""

    def __init__(
        self,
        state: ChatState,
        err: Console | None = None,
        out: Console | None = None,
        *,
        session: PromptSession[str] | None = None,
        markdown: bool | None = None,
        warm_up: bool = False,
    ) -> None:
        self.state = state
        self._err = err
        self._out = out
        self.session = session
        self.markdown = markdown
        self._warm_up = warm_up
        self._warm_thread: threading.Thread | None = None
        self._moa: MoA | None = None
        self._task: asyncio.Task[TurnResult] | None = None
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
        import asyncio

        from moa_cli.cli.slash import Outcome, note

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
                except KeyboardInterrupt:  # Ctrl-C at the prompt: drop the line, stay
                    if not self.session.default_buffer.text:  # perhaps they meant to quit
                        note(self.err, "(Ctrl-D or /exit quits)")
                    continue
                except EOFError:  # Ctrl-D
                    return 0
                if await self.handle(line) is Outcome.EXIT:
                    return 0
        finally:
            restore_sigint()
            await self.aclose()

    async def handle(self, line: str) -> Outcome:
        """One input: a slash command, an exit word, or a prompt to run as a turn."""
        from moa_cli.cli import slash

        text = line.strip()
        if not text:
            return slash.Outcome.CONTINUE
        if slash.is_exit(text):
            return slash.Outcome.EXIT
        if slash.parse(text) is not None:
            outcome = slash.run(text, self.state, self.err)
            if outcome is slash.Outcome.RETRY:
                await self.retry()
                return slash.Outcome.CONTINUE
            return outcome
        await self.turn(text)
        return slash.Outcome.CONTINUE

    async def retry(self) -> TurnResult | None:
        """Run the last prompt again: in place of its answer if it had one."""
        prompt = self.state.last_prompt
        if prompt is None:
            return None
        return await self.turn(prompt, replace_last=not self.state.last_failed)

    async def turn(self, prompt: str, *, replace_last: bool = False) -> TurnResult | None:
        """Run one turn; the conversation changes only if it succeeds."""
        import asyncio

        from moa_cli.cli.slash import error, note
        from moa_cli.errors import MoaError
        from moa_cli.render import TurnView

        state = self.state
        snapshot = state.conversation.snapshot()
        if replace_last:
            state.conversation.pop()
        state.last_prompt = prompt
        messages = state.conversation.messages_for(prompt)
        moa = await self._get_moa()
        view = TurnView(self.err, self.out, markdown=self.markdown)
        view.start()
        task = asyncio.create_task(moa.arun(messages, on_event=view.handle))
        self._task = task
        try:
            await asyncio.wait([task])
        finally:
            self._task = None
            if not task.done():  # we ourselves were cancelled (line mode's Ctrl-C)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            view.stop()
            if task.cancelled() or task.exception() is not None:
                state.conversation.restore(snapshot)
                # A failed re-run leaves the old answer in place: /retry replaces it again.
                state.last_failed = not replace_last
        if task.cancelled():
            note(self.err, "cancelled: the conversation is as it was before this turn")
            return None
        exc = task.exception()
        if exc is not None:
            if isinstance(exc, MoaError):
                message = str(exc)
            else:  # a bug must not end the session; --verbose shows the traceback
                from loguru import logger

                logger.opt(exception=exc).debug("turn failed")
                message = f"unexpected error: {type(exc).__name__}: {exc}"
            error(self.err, f"{message} (/retry to try again)")
            return None
        result = task.result()
        state.conversation.add(prompt, result)
        state.last_failed = False
        view.footer(result)
        return result

    def interrupt(self) -> None:
        """Cancel the running turn, if any. Safe to call from any thread or a signal handler."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._cancel_turn)

    def _cancel_turn(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def aclose(self) -> None:
        moa, self._moa = self._moa, None
        if moa is not None:
            await moa.aclose()
        if self._warm_thread is not None and self._warm_thread.ident is not None:
            import asyncio

            # Let a half-done import finish rather than exit under it (off the event loop).
            await asyncio.to_thread(self._warm_thread.join, 5)

    # -------------------------------------------------------------- helpers

    async def _get_moa(self) -> MoA:
        thread = self._warm_thread
        if thread is not None:
            # Two threads importing one package at once can see it half-initialised
            # (ImportError "partially initialized module"): let the warm-up finish first.
            import asyncio

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
        import asyncio

        if self._warm_up and self._warm_thread is None:
            settings = self.state.settings
            thread = threading.Thread(target=warm_up, args=(settings,), name="moa-warm-up", daemon=True)
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


def run_repl(settings: Settings) -> None:
    """The interactive chat on the real terminal."""
    import asyncio

    from moa_cli.cli.slash import ChatState

    output = None
    if not sys.stdout.isatty():  # `moa chat > answers.md`: draw the prompt on stderr
        from prompt_toolkit.output import create_output

        output = create_output(stdout=sys.stderr)
    history = settings.paths.history_file if settings.paths else None
    session = make_session(history, output=output)
    repl = Repl(ChatState.start(settings), session=session, warm_up=True)
    asyncio.run(repl.run())


def run_lines(settings: Settings, stream: TextIO) -> None:
    """Not a terminal: one turn per line, answers plain on stdout, until end of input."""
    import asyncio

    from moa_cli.cli.slash import ChatState, Outcome

    repl = Repl(ChatState.start(settings), markdown=False)
    # One loop for the whole input, so connections are reused across turns. Ctrl-C
    # cancels the turn and, through asyncio.Runner, ends the run (exit 130).
    with asyncio.Runner() as runner:
        try:
            for line in iter(stream.readline, ""):
                if runner.run(repl.handle(line)) is Outcome.EXIT:
                    break
        finally:
            runner.run(repl.aclose())
