"""Whether colour is off: NO_COLOR (https://no-color.org), read here and nowhere else.

    colour_off()    NO_COLOR is set to anything but the empty string

Every writer of coloured output asks here: the rich consoles (render/console.py), the REPL's
prompt and its first dim line drawn before rich loads (repl/), and the diagnostic logger
(diagnostics.py, for loguru, which does not read NO_COLOR itself). Stdlib only, so asking
costs nothing on the `moa --version` path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def colour_off(environ: Mapping[str, str] | None = None) -> bool:
    """True when NO_COLOR is set and not empty (an empty NO_COLOR leaves colour on)."""
    env = os.environ if environ is None else environ
    return env.get("NO_COLOR", "") != ""
