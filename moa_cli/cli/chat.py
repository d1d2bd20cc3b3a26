"""`moa chat`: the Typer command. The REPL itself is the `moa_cli.repl` package.

On a terminal: the interactive REPL (prompt, history, slash commands, live turns).
With stdin not a terminal: line mode, one turn per input line (see `repl/lines.py`).

The repl package (and prompt_toolkit with it) is imported only once the command runs,
so `moa --help` stays fast.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from moa_cli.cli import options as opt
from moa_cli.cli.errors import handle_errors


@opt.setting_options("chat")
def chat(
    *,
    local: opt.Local = False,
    verbose: opt.Verbose = False,
    resume: opt.Continue = False,
    cid: opt.ConversationId = None,
    flags: dict[str, Any],
) -> None:
    """Chat with the mixture: a multi-turn REPL with live progress and streamed Markdown.

    Type /help inside for the commands. With stdin not a terminal, each input line is one turn and each answer is printed plainly on stdout.

    Examples:

      moa chat

      moa chat --no-multi-turn -r ollama:llama3.2:1b -r ollama:qwen2.5:1.5b -a ollama:qwen2.5:1.5b

      printf 'Hi\\nAnd in French?\\n' | moa chat > answers.txt
    """
    with handle_errors():
        from moa_cli.cli.runtime import load

        settings = load(opt.flag_overrides(flags, verbose=verbose), local=local)
        resumed = None
        if resume or cid is not None:  # the logged conversation, its line-up unless flags say otherwise
            from moa_cli.providers.registry import check_lineup
            from moa_cli.recorder import resume as resume_conversation

            resumed = resume_conversation(settings, cid, with_calls=True)  # /save writes their proposals
            settings = resumed.settings
            check_lineup(settings)
        if is_interactive():
            from moa_cli.repl.loop import run_interactive

            if resumed is not None:
                show_last_exchange(resumed)
            code = run_interactive(settings, resumed)
        else:
            from moa_cli.repl.lines import run_lines

            code = run_lines(settings, sys.stdin, resumed=resumed)
    if code:
        raise typer.Exit(code)


def is_interactive() -> bool:
    """The REPL needs a terminal to read from and one to draw on (stdout or stderr)."""
    stdin = sys.stdin
    if stdin is None or not stdin.isatty():
        return False
    return any(stream is not None and stream.isatty() for stream in (sys.stdout, sys.stderr))


def show_last_exchange(resumed: Any) -> None:
    """`moa chat -c`: which conversation this is, and its last prompt and answer."""
    from moa_cli.render import make_console, markdown

    err = make_console(stderr=True)
    turns = len(resumed.turns)
    err.print(
        f"continuing conversation {resumed.conversation_id} ({turns} turn{'' if turns == 1 else 's'})",
        style="dim",
        markup=False,
        highlight=False,
    )
    if resumed.turns:  # shown for context on stderr: stdout carries this session's answers only
        last = resumed.turns[-1]
        err.print(f">>> {last.prompt}", markup=False, highlight=False)
        err.print(markdown(last.answer or ""))
