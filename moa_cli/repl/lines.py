"""Line mode: `moa chat` with stdin not a terminal reads one turn per line.

    printf 'Hi\\nAnd in French?\\n' | moa chat > answers.txt

Each answer is printed plainly on stdout once its turn has succeeded: a turn that fails
half-way through its answer prints nothing there, so the output never holds a partial
answer that looks like a real one. Known slash commands work (which makes chat
scriptable); any other line is a prompt, even one starting with a slash ("/etc is a
directory?"), and `//text` sends "/text". The exit code is 0 if every turn succeeded,
1 if any failed (stderr says how many).

Ctrl-C cancels the turn and, through asyncio.Runner, ends the run (exit 130). A reader
that goes away (`| head -1`) raises BrokenPipeError out of here, for the caller to exit
141 quietly.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, TextIO

from moa_cli import signals
from moa_cli.config import Settings
from moa_cli.repl.loop import Repl
from moa_cli.repl.slash import ChatState, Next

if TYPE_CHECKING:
    from rich.console import Console

EXIT_OK, EXIT_FAILED = 0, 1


def run_lines(
    settings: Settings, stream: TextIO, err: Console | None = None, out: Console | None = None, resumed: object = None
) -> int:
    """Run every line of `stream` until its end (or an exit word); returns the exit code."""
    repl = Repl(ChatState.start(settings, resumed), err, out, line_mode=True)
    # One loop for the whole input, so connections are reused across turns. A signal during a
    # turn cancels it (its streams closed) and then ends the run with 130, 143 or 129.
    with asyncio.Runner() as runner:
        try:
            for line in iter(stream.readline, ""):
                if signals.run(repl.handle(line), runner=runner) is Next.EXIT:
                    break
        finally:
            runner.run(repl.aclose())
    if repl.failed:
        noun = "turn" if repl.turns == 1 else "turns"
        repl.err.print(f"moa: {repl.failed} of {repl.turns} {noun} failed", style="red", markup=False, highlight=False)
        return EXIT_FAILED
    return EXIT_OK
