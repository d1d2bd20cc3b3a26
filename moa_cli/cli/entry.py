"""The `moa` console script: Ctrl-C while the command line loads is exit 130, not a traceback.

`cli/app.py` imports Typer and the commands (~0.1 s); its `main()` handles signals only once
it runs, so the import itself is guarded here, with nothing imported beforehand.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from moa_cli.cli.app import main as run
    except KeyboardInterrupt:
        sys.stderr.write("\nmoa: interrupted\n")
        raise SystemExit(130) from None
    run()
