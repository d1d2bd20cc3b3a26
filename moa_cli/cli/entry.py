"""The `moa` console script: Ctrl-C while the command line loads is exit 130, not a traceback.

`cli/app.py` imports Typer and the commands (~0.1 s); its `main()` handles signals only once
it runs, so the import itself is guarded here, with nothing imported beforehand. With
`--json`, even that early interruption prints the JSON object a script waits for.
"""

from __future__ import annotations

import sys


def json_requested(argv: list[str]) -> bool:
    """Whether `--json` is among the options (not after `--`)."""
    options = argv[: argv.index("--")] if "--" in argv else argv
    return "--json" in options


def say_interrupted(argv: list[str], code: int = 130, reason: str = "interrupted") -> int:
    """The interruption as the command reports it: a line on stderr, with --json an object on stdout."""
    try:
        if json_requested(argv):
            import json

            sys.stdout.write(json.dumps({"error": reason, "exit_code": code}) + "\n")
            sys.stdout.flush()
        sys.stderr.write(f"\nmoa: {reason}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    return code


def main() -> None:
    try:
        from moa_cli.cli.app import main as run
    except KeyboardInterrupt:
        raise SystemExit(say_interrupted(sys.argv[1:])) from None
    run()
