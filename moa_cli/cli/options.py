"""Options shared by `moa ask` and `moa chat`.

The original demo's underscore spellings (`--reference_models`, `--max_tokens`, ...) are
accepted too: `app.main()` rewrites them before parsing, so `--help` lists each option once.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Mapping
from typing import Annotated, Any, Optional

import typer

LINEUP = "Line-up"
SAMPLING = "Sampling"
LIMITS = "Limits"

Aggregator = Annotated[
    Optional[str],
    typer.Option("--aggregator", "-a", metavar="MODEL",  help="Model that writes the final answer.", rich_help_panel=LINEUP),
]
References = Annotated[
    Optional[list[str]],
    typer.Option(
        "--reference-models",
        
        "-r",
        metavar="MODEL",
        help="Reference (proposer) model; repeat it or give a comma list. Use provider:model for other providers.",
        rich_help_panel=LINEUP,
    ),
]
Local = Annotated[
    bool, typer.Option("--local", help="Use the offline line-up on the bundled model.", rich_help_panel=LINEUP)
]
Rounds = Annotated[
    Optional[int],
    typer.Option("--rounds", metavar="N",  min=1, help="Proposer layers before the aggregator (default 1).", rich_help_panel=LINEUP),
]
AggregatorPrompt = Annotated[
    Optional[Path],
    typer.Option(
        "--aggregator-prompt",
        metavar="FILE",
        
        help="File whose text replaces the built-in aggregator prompt.",
        rich_help_panel=LINEUP,
        dir_okay=False,
    ),
]
Temperature = Annotated[
    Optional[float],
    typer.Option("--temperature", "-t", metavar="T",  min=0.0, max=2.0, help="Sampling temperature (default 0.7).", rich_help_panel=SAMPLING),
]
MaxTokens = Annotated[
    Optional[int],
    typer.Option(
        "--max-tokens", metavar="N",  min=1, help="Most tokens per answer (default 512).", rich_help_panel=SAMPLING
    ),
]
Seed = Annotated[
    Optional[int], typer.Option("--seed", metavar="N",  help="Base seed; each sample gets its own.", rich_help_panel=SAMPLING)
]
System = Annotated[
    Optional[str], typer.Option("--system", "-s", metavar="TEXT",  help="System prompt for every model.", rich_help_panel=SAMPLING)
]
NumProc = Annotated[
    Optional[int],
    typer.Option(
        "--num-proc",
        metavar="N",
        
        min=1,
        help="Most model calls in flight at once (default all references of a layer).",
        rich_help_panel=LIMITS,
    ),
]
Timeout = Annotated[
    Optional[float],
    typer.Option("--timeout", metavar="SECONDS",  min=0.001, help="Seconds allowed per call (default 120).", rich_help_panel=LIMITS),
]
Retries = Annotated[
    Optional[int],
    typer.Option("--retries", metavar="N",  min=0, help="Retries on 408/429/5xx and connection errors (default 2).", rich_help_panel=LIMITS),
]
LayerDeadline = Annotated[
    Optional[float],
    typer.Option(
        "--layer-deadline",
        metavar="SECONDS",
        
        min=0.001,
        help="Seconds after which a layer goes on with the answers it has.",
        rich_help_panel=LIMITS,
    ),
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs on stderr.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or footer on stderr; warnings and errors still.")]


# Parameter names a command shares with config (the parameter's name -> the setting's name).
_SETTING_FOR = {
    "aggregator": "aggregator",
    "reference_models": "references",
    "rounds": "rounds",
    "temperature": "temperature",
    "max_tokens": "max_tokens",
    "seed": "seed",
    "system": "system",
    "num_proc": "num_proc",
    "timeout": "timeout",
    "retries": "retries",
    "layer_deadline": "layer_deadline",
    "multi_turn": "multi_turn",
    "aggregator_prompt": "aggregator_prompt_file",  # read by load_settings: errors exit 2
}


def overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """A command's parameters (its `locals()`) as config overrides; None = not given.

    Commands declare the options above under the same parameter names, so one mapping
    serves `ask` and `chat`; anything else in `params` (the prompt, --json) is ignored.
    """
    values = {setting: params[name] for name, setting in _SETTING_FOR.items() if name in params}
    values["references"] = values.get("references") or None
    values["log_level"] = "DEBUG" if params.get("verbose") else None
    return values
