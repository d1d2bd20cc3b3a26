"""Every setting, declared once: name, type, default, env var, flag, help, check, `/set`.

Each field of `Settings` that a user can set carries a `Spec` in its metadata. Everything
else is derived from these declarations:

    config file keys and [lineups.NAME] keys     config.load_settings
    environment variables                        config.load_settings
    `moa config show`                            cli/config_cmd.py
    command options, their help and defaults     cli/options.py (ask, chat, ...)
    `/set KEY VALUE` in the REPL                 `settable()`, `parse_text()`
    the Python API's keyword arguments           api.MoA(**settings)
    the engine's plan                            api.plan_from_settings
    batch's fingerprint, ifeval's work directory  `Spec.decides` (batch.settings_parts)
    a request's {"moa": {...}} in `moa serve`     `Spec.overridable` (server/schema.OVERRIDABLE)
    the settings logged with each turn            `Spec.recorded` (recorder.settings_of)

Stdlib only: the CLI imports this module to build `--help`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from moa_cli import defaults
from moa_cli.errors import ConfigError
from moa_cli.prompts import AGGREGATOR_PROMPT, LAYOUTS

Check = Callable[[Any], "str | None"]  # returns what is wrong with a value, or None
Kind = Literal["str", "int", "float", "bool", "models", "text"]
Decides = Literal["answer", "references"] | None

LINEUP_PANEL, SAMPLING_PANEL, LIMITS_PANEL, OTHER_PANEL = "Line-up", "Sampling", "Limits", "Other"
AGGREGATIONS = ("synthesize", "select", "consensus")  # aggregation.py
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
# What servers accept: max_tokens is an int32 on every API seen, a seed an int64.
INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True, slots=True)
class Spec:
    """How one setting is named, parsed, checked and offered (see the module docstring)."""

    kind: Kind
    help: str
    env: str | None = None  # environment variable, or None
    flags: tuple[str, ...] = ()  # command-line spellings; () = no flag
    metavar: str | None = None
    file_keys: tuple[str, ...] = ()  # extra spellings in the config file (the field name always works)
    checks: tuple[Check, ...] = ()
    settable: bool = False  # `/set` may change it in the REPL
    lineup: bool = False  # may appear in a [lineups.NAME] table
    nullable: bool = False  # None is a value ("off")
    commands: frozenset[str] | None = None  # the commands that take the flag; None = every turn command
    show_default: bool = True  # "(default X)" in the flag's help
    # What the setting is, for what is derived from it; every setting says (test_settings.py).
    # `decides`: what its value changes: "answer" (every call's answer), "references" (the
    # references' answers alone: a run that only aggregates stored proposals ignores it), or
    # None (how a turn runs, not what it answers). batch's fingerprint and `moa eval ifeval`'s
    # work directory are made of the settings that decide.
    decides: Decides = field(kw_only=True)
    # `recorded`: kept with each logged turn (recorder.settings_of).
    recorded: bool = field(kw_only=True)
    # `overridable`: a `moa serve` request may set it in `{"moa": {...}}` (--allow-overrides).
    overridable: bool = field(default=False, kw_only=True)


def setting(default: Any, spec: Spec) -> Any:
    """A dataclass field with its declaration attached."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed")
    return field(default=default, metadata={"moa": spec})


# ---------------------------------------------------------------------------- checks


def _finite(value: Any) -> str | None:
    if isinstance(value, float) and math.isnan(value):
        return "nan is not a number"
    if isinstance(value, float) and math.isinf(value):
        return f"{value} is not a finite number"
    return None


def between(low: float, high: float) -> Check:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"{value:g} is not between {low:g} and {high:g}"

    return check


def at_least(low: int, high: int | None = None) -> Check:
    def check(value: Any) -> str | None:
        if value < low:
            return f"{value} must be at least {low}"
        if high is not None and value > high:
            return f"{value} is more than {high}, which no server accepts"
        return None

    return check


def more_than_zero(value: Any) -> str | None:
    return None if value > 0 else f"{value:g} must be more than 0"


def in_int64(value: Any) -> str | None:
    return None if INT64_MIN <= value <= INT64_MAX else f"{value} does not fit in 64 bits, which no server accepts"


def not_empty(value: Any) -> str | None:
    return None if (value.strip() if isinstance(value, str) else value) else "must not be empty"


def one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else f"{value!r} is not one of {', '.join(choices)}"

    return check


# ---------------------------------------------------------------------------- the settings

_CHAT = frozenset({"chat"})


@dataclass(frozen=True, slots=True)
class Settings:
    """What a run uses. The declared fields come first; the rest is context from loading."""

    # -- line-up
    lineup: str | None = setting(
        None,
        Spec(
            "str",
            "Named line-up to use (moa lineups lists them); flags still override its single settings.",
            env="MOA_LINEUP",
            flags=("--lineup", "-l"),
            metavar="NAME",
            nullable=True,
            show_default=False,
            decides=None,
            recorded=True,
        ),
    )
    aggregator: str = setting(
        defaults.TOGETHER_AGGREGATOR,
        Spec(
            "str",
            "Model that writes the final answer.",
            env="MOA_AGGREGATOR",
            flags=("--aggregator", "-a"),
            metavar="MODEL",
            checks=(not_empty,),
            settable=True,
            lineup=True,
            show_default=False,
            decides="answer",
            recorded=True,
            overridable=True,
        ),
    )
    references: tuple[str, ...] = setting(
        defaults.TOGETHER_REFERENCES,
        Spec(
            "models",
            "Reference (proposer) model; repeat it or give a comma list. Use provider:model for other providers.",
            env="MOA_REFERENCE_MODELS",
            flags=("--reference-models", "-r"),
            metavar="MODEL",
            file_keys=("reference_models",),
            checks=(lambda v: None if v else "at least one reference model is needed",),
            settable=True,
            lineup=True,
            show_default=False,
            decides="references",
            recorded=True,
            overridable=True,
        ),
    )
    rounds: int = setting(
        1,
        Spec(
            "int",
            "Proposer layers before the aggregator.",
            env="MOA_ROUNDS",
            flags=("--rounds",),
            metavar="N",
            checks=(at_least(1, 100),),
            settable=True,
            lineup=True,
            decides="references",
            recorded=True,
            overridable=True,
        ),
    )
    aggregator_prompt: str = setting(
        AGGREGATOR_PROMPT,
        Spec(
            "text",
            "File whose text replaces the built-in aggregator prompt.",
            flags=("--aggregator-prompt",),
            metavar="FILE",
            file_keys=("aggregator_prompt_file",),
            checks=(not_empty,),
            lineup=True,
            show_default=False,
            decides="answer",
            recorded=True,
        ),
    )
    aggregator_layout: str = setting(
        "after",
        Spec(
            "str",
            "Where the references' answers go in the aggregator's prompt: after (after the conversation, at the "
            "end of its last message, so that a prefix cache can reuse what the references' prompts evaluated) "
            "or system (in the system message, ahead of the conversation: the paper's layout).",
            env="MOA_AGGREGATOR_LAYOUT",
            flags=("--aggregator-layout",),
            metavar="after|system",
            checks=(one_of(*LAYOUTS),),
            settable=True,
            lineup=True,
            decides="answer",
            recorded=True,
            overridable=True,
        ),
    )
    aggregation: str = setting(
        defaults.AGGREGATION,
        Spec(
            "str",
            "How the last layer's answers become the final answer: synthesize (the aggregator writes a new one), "
            "select (the aggregator names the best, given verbatim) or consensus (the answer closest to the others, "
            "given verbatim; no aggregator call).",
            env="MOA_AGGREGATION",
            flags=("--aggregation",),
            metavar="synthesize|select|consensus",
            checks=(one_of(*AGGREGATIONS),),
            settable=True,
            lineup=True,
            decides="answer",
            recorded=True,
            overridable=True,
        ),
    )
    # -- sampling
    temperature: float = setting(
        defaults.TEMPERATURE,
        Spec(
            "float",
            "Sampling temperature.",
            env="MOA_TEMPERATURE",
            flags=("--temperature", "-t"),
            metavar="T",
            checks=(_finite, between(0, 2)),
            settable=True,
            lineup=True,
            decides="answer",
            recorded=True,
        ),
    )
    max_tokens: int = setting(
        defaults.MAX_TOKENS,
        Spec(
            "int",
            "Most tokens per answer.",
            env="MOA_MAX_TOKENS",
            flags=("--max-tokens",),
            metavar="N",
            checks=(at_least(1, INT32_MAX),),
            settable=True,
            lineup=True,
            decides="answer",
            recorded=True,
        ),
    )
    reference_max_tokens: int | None = setting(
        None,
        Spec(
            "int",
            "Most tokens per reference answer (default: --max-tokens). Shorter references make the "
            "aggregator's prompt shorter and the turn faster.",
            env="MOA_REFERENCE_MAX_TOKENS",
            flags=("--reference-max-tokens",),
            metavar="N",
            checks=(at_least(1, INT32_MAX),),
            settable=True,
            lineup=True,
            nullable=True,
            show_default=False,
            decides="references",
            recorded=True,
            overridable=True,
        ),
    )
    repeat_penalty: float = setting(
        1.0,
        Spec(
            "float",
            "Penalty on repeating recent tokens, for local (llama.cpp) models; 1 is off. Hosted models ignore it.",
            env="MOA_REPEAT_PENALTY",
            flags=("--repeat-penalty",),
            metavar="P",
            checks=(_finite, between(0.5, 2)),
            settable=True,
            lineup=True,
            decides="answer",
            recorded=True,
        ),
    )
    seed: int | None = setting(
        None,
        Spec(
            "int",
            "Base seed; each sample gets its own.",
            env="MOA_SEED",
            flags=("--seed",),
            metavar="N",
            checks=(in_int64,),
            settable=True,
            lineup=True,
            nullable=True,
            show_default=False,
            decides="answer",
            recorded=True,
        ),
    )
    system: str | None = setting(
        None,
        Spec(
            "str",
            "System prompt for every model.",
            env="MOA_SYSTEM",
            flags=("--system", "-s"),
            metavar="TEXT",
            nullable=True,
            show_default=False,
            decides="answer",
            recorded=True,
        ),
    )
    multi_turn: bool = setting(
        True,
        Spec(
            "bool",
            "Send the earlier turns with each prompt (default on; --no-multi-turn answers each prompt alone).",
            env="MOA_MULTI_TURN",
            flags=("--multi-turn/--no-multi-turn",),
            commands=_CHAT,
            show_default=False,
            decides=None,
            recorded=False,
        ),
    )
    # -- limits
    num_proc: int | None = setting(
        None,
        Spec(
            "int",
            "Most model calls in flight at once (default all references of a layer).",
            env="MOA_NUM_PROC",
            flags=("--num-proc",),
            metavar="N",
            checks=(at_least(1, 1024),),
            settable=True,
            lineup=True,
            nullable=True,
            show_default=False,
            decides=None,
            recorded=True,
        ),
    )
    timeout: float = setting(
        120.0,  # a long answer from a 70B model can take a minute
        Spec(
            "float",
            "Seconds allowed per call, the whole call.",
            env="MOA_TIMEOUT",
            flags=("--timeout",),
            metavar="SECONDS",
            checks=(_finite, more_than_zero),
            decides=None,
            recorded=True,
        ),
    )
    retries: int = setting(
        2,
        Spec(
            "int",
            "Retries on 408/429/5xx and connection errors.",
            env="MOA_RETRIES",
            flags=("--retries",),
            metavar="N",
            checks=(at_least(0, 20),),
            decides=None,
            recorded=True,
        ),
    )
    layer_deadline: float | None = setting(
        None,
        Spec(
            "float",
            "Seconds after which a layer goes on with the answers it has.",
            env="MOA_LAYER_DEADLINE",
            flags=("--layer-deadline",),
            metavar="SECONDS",
            checks=(_finite, more_than_zero),
            settable=True,
            lineup=True,
            nullable=True,
            show_default=False,
            decides="references",
            recorded=True,
            overridable=True,
        ),
    )
    quorum: int | None = setting(
        None,
        Spec(
            "int",
            "A layer goes on once K references have answered; the rest are cut (at most the number of references).",
            env="MOA_QUORUM",
            flags=("--quorum",),
            metavar="K",
            checks=(at_least(1, 1024),),
            settable=True,
            lineup=True,
            nullable=True,
            show_default=False,
            decides="references",
            recorded=True,
            overridable=True,
        ),
    )
    max_cost: float | None = setting(
        None,
        Spec(
            "float",
            "Refuse a turn whose worst case (every call at max_tokens, prompts counted) costs more than this many USD.",
            env="MOA_MAX_COST",
            flags=("--max-cost",),
            metavar="USD",
            checks=(_finite, lambda v: None if v >= 0 else f"{v:g} must be 0 or more"),
            settable=True,
            nullable=True,
            show_default=False,
            decides=None,
            recorded=True,
        ),
    )
    # -- the terminal
    preview: bool = setting(
        True,
        Spec(
            "bool",
            "While the references answer, show the draft furthest along, dimmed, until the answer starts "
            "(a terminal only; never with --json or a redirected stdout).",
            env="MOA_PREVIEW",
            flags=("--preview/--no-preview",),
            settable=True,
            commands=frozenset({"ask", "chat"}),
            show_default=False,
            decides=None,
            recorded=False,
        ),
    )
    # -- the log (store/)
    log: bool = setting(
        True,
        Spec(
            "bool",
            "Log the turn to the conversation log (moa logs); --no-log leaves no trace of it.",
            env="MOA_LOG",
            flags=("--log/--no-log",),
            show_default=False,
            decides=None,
            recorded=False,
        ),
    )
    # -- set in the config file or the environment only
    default_provider: str = setting(
        defaults.DEFAULT_PROVIDER,
        Spec(
            "str",
            "Provider of model names without a provider: prefix.",
            env="MOA_DEFAULT_PROVIDER",
            decides=None,
            recorded=False,
        ),
    )
    log_level: str = setting(
        "WARNING",
        Spec(
            "str",
            "Log level on stderr (--verbose is DEBUG).",
            env="MOA_LOG_LEVEL",
            checks=(one_of(*LOG_LEVELS),),
            decides=None,
            recorded=False,
        ),
    )

    # -- context: where things are and what was loaded (not settings a user sets one by one)
    providers: Mapping[str, Any] = field(default_factory=dict)  # name -> config.ProviderConfig
    contexts: Mapping[str, int] = field(default_factory=dict)  # model spec -> [models."SPEC"] context
    lineups: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # name -> setting values
    local_lineup: bool = False  # the offline line-up is in use
    paths: Any = None  # config.Paths
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    overrides: Mapping[str, Any] = field(default_factory=dict)  # the flags or API arguments given
    sources: Mapping[str, str] = field(default_factory=dict)  # setting -> where its value came from

    def with_changes(self, **changes: Any) -> Settings:
        """A validated copy with some values changed (`/set` in the REPL, the Python API)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"unknown setting {sorted(unknown)[0]!r}")
        new = replace(self, **changes, sources={**self.sources, **{k: "command" for k in changes if k in SPECS}})
        validate(new)
        return new


def _declared() -> dict[str, Spec]:
    return {f.name: f.metadata["moa"] for f in fields(Settings) if "moa" in f.metadata}


SPECS: dict[str, Spec] = _declared()
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Settings) if f.name in SPECS}


def field_of(name: str) -> Field[Any]:
    return next(f for f in fields(Settings) if f.name == name)


def default_of(name: str) -> Any:
    default = field_of(name).default
    return None if default is MISSING else default


def key_for(name: str) -> str:
    """The name users see for a setting (the original demo's spelling where it differs)."""
    spec = SPECS[name]
    return spec.file_keys[0] if spec.file_keys and spec.kind == "models" else name


def by_key() -> dict[str, str]:
    """Every accepted spelling (field name, file aliases, dashes) -> the setting's name."""
    names: dict[str, str] = {}
    for name, spec in SPECS.items():
        for key in (name, *spec.file_keys):
            names[key] = name
            names[key.replace("_", "-")] = name
    return names


def settable() -> dict[str, Spec]:
    """The settings `/set` may change, in declaration order."""
    return {name: spec for name, spec in SPECS.items() if spec.settable}


def flag_specs(command: str) -> dict[str, Spec]:
    """The settings offered as options on `command`."""
    return {
        name: spec for name, spec in SPECS.items() if spec.flags and (spec.commands is None or command in spec.commands)
    }


# ---------------------------------------------------------------------------- parsing values

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def split_models(values: list[str] | tuple[str, ...] | str) -> tuple[str, ...]:
    """Accept repeated values, comma lists, or both: ["a,b", "c"] -> ("a", "b", "c")."""
    if isinstance(values, str):
        values = [values]
    return tuple(part.strip() for v in values for part in v.split(",") if part.strip())


def coerce(name: str, value: Any) -> Any:
    """A raw value (env string, TOML value, flag, API argument) as the setting's type; ValueError if not."""
    spec = SPECS[name]
    if value is None:
        if spec.nullable:
            return None
        raise ValueError("a value is needed")
    kind = spec.kind
    if kind == "models":
        if isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)):
            return split_models(value)
        raise ValueError("expected a list of model names")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError("expected true or false")
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError("expected a whole number")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        raise ValueError("expected a whole number")
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError("expected a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError("expected a number")
    if kind == "text" and isinstance(value, Path):  # --aggregator-prompt FILE
        return read_prompt_file(value.expanduser())
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def parse_text(name: str, text: str) -> Any:
    """A value typed by a user (`/set`), where "off" or "none" clears a nullable setting."""
    spec = SPECS[name]
    text = text.strip()
    if spec.nullable and text.lower() in ("off", "none"):
        return None
    if spec.kind == "models":
        models = split_models(text.replace(" ", ","))
        if not models:
            raise ValueError("expected one or more model names")
        return models
    return coerce(name, text)


def read_prompt_file(path: Path) -> str:
    """The text of an aggregator prompt file; ConfigError (exit 2) if it cannot be used."""
    from moa_cli.files import read_text

    text = read_text(path, "aggregator prompt").strip()
    if not text:
        raise ConfigError(f"aggregator prompt {path} is empty")
    return text


# ---------------------------------------------------------------------------- validation


def problem(name: str, value: Any) -> str | None:
    """What is wrong with `value` for setting `name`, or None."""
    spec = SPECS[name]
    if value is None:
        return None if spec.nullable else "a value is needed"
    for check in spec.checks:
        message = check(value)
        if message:
            return message
    return None


def validate(settings: Settings) -> None:
    """Raise ConfigError naming the first bad setting and where its value came from."""
    for name in SPECS:
        message = problem(name, getattr(settings, name))
        if message:
            where = settings.sources.get(name, "default")
            origin = f" (from {where})" if where not in ("default", "flag", "argument", "command") else ""
            spec = SPECS[name]
            # A flag's error names the flag as typed; a file's or variable's, the key and where.
            label = spec.flags[0].split("/")[0] if where == "flag" and spec.flags else key_for(name)
            raise ConfigError(f"invalid {label}{origin}: {message}")
    if settings.quorum is not None and settings.quorum > len(settings.references):
        where = settings.sources.get("quorum", "default")
        origin = f" (from {where})" if where not in ("default", "flag", "argument", "command") else ""
        label = "--quorum" if where == "flag" else "quorum"
        count = len(settings.references)
        raise ConfigError(
            f"invalid {label}{origin}: {settings.quorum} is more than the {count} reference model{'s' * (count != 1)}"
        )
    if settings.providers and settings.default_provider not in settings.providers:
        raise ConfigError(f"invalid default_provider: no provider named {settings.default_provider!r}")


def show(value: Any) -> str:
    """A value as `moa config show`, `/set` and the help print it."""
    if value is None:
        return "off"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ", ".join(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
