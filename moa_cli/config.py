"""Settings are loaded here and nowhere else.

Precedence, highest first: command-line flags, environment variables, the TOML config
file, built-in defaults (`defaults.py`). `MOA_HOME` relocates every file moa reads or
writes. The result is a frozen `Settings`; front ends never read the environment.

Config file (`moa config path` shows where):

    aggregator = "Qwen/Qwen2.5-72B-Instruct-Turbo"
    reference_models = ["ollama:llama3.2:1b", "deepseek-ai/DeepSeek-V3"]
    temperature = 0.7
    max_tokens = 512
    rounds = 1
    # num_proc, system, timeout, retries, layer_deadline, seed, multi_turn,
    # aggregator_prompt (text) or aggregator_prompt_file (path), default_provider

    [providers.vllm]
    kind = "openai"                       # "openai" (any compatible API), "together" or "local"
    base_url = "http://localhost:8000/v1"
    api_key_env = "VLLM_API_KEY"          # omit for servers that need no key
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from moa_cli import defaults
from moa_cli.errors import ConfigError
from moa_cli.prompts import AGGREGATOR_PROMPT

ProviderKind = Literal["together", "openai", "local"]
_KINDS = ("together", "openai", "local")


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """A named endpoint. The key itself is never stored here, only where to find it."""

    name: str
    kind: ProviderKind
    base_url: str | None = None
    api_key_env: str | None = None
    models: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Paths:
    home: Path | None
    config_file: Path
    history_file: Path
    conversations_dir: Path


@dataclass(frozen=True, slots=True)
class Settings:
    references: tuple[str, ...] = defaults.TOGETHER_REFERENCES
    aggregator: str = defaults.TOGETHER_AGGREGATOR
    temperature: float = defaults.TEMPERATURE
    max_tokens: int = defaults.MAX_TOKENS
    rounds: int = defaults.ROUNDS
    num_proc: int | None = None
    system: str | None = None
    timeout: float = defaults.TIMEOUT
    retries: int = defaults.RETRIES
    layer_deadline: float | None = None
    seed: int | None = None
    multi_turn: bool = True
    aggregator_prompt: str = AGGREGATOR_PROMPT
    default_provider: str = defaults.DEFAULT_PROVIDER
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    local_lineup: bool = False
    log_level: str = "WARNING"
    paths: Paths | None = None
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    sources: Mapping[str, str] = field(default_factory=dict)

    def with_changes(self, **changes: Any) -> Settings:
        """A validated copy with some values changed (used by `/set` in the REPL)."""
        new = replace(self, **changes)
        _validate(new, {k: "command" for k in changes})
        return new


# name -> (type, env var). Types drive parsing of env strings and checking of TOML values.
_FIELDS: dict[str, tuple[type, str | None]] = {
    "aggregator": (str, "MOA_AGGREGATOR"),
    "references": (tuple, "MOA_REFERENCE_MODELS"),
    "temperature": (float, "MOA_TEMPERATURE"),
    "max_tokens": (int, "MOA_MAX_TOKENS"),
    "rounds": (int, "MOA_ROUNDS"),
    "num_proc": (int, "MOA_NUM_PROC"),
    "system": (str, "MOA_SYSTEM"),
    "timeout": (float, "MOA_TIMEOUT"),
    "retries": (int, "MOA_RETRIES"),
    "layer_deadline": (float, "MOA_LAYER_DEADLINE"),
    "seed": (int, "MOA_SEED"),
    "multi_turn": (bool, "MOA_MULTI_TURN"),
    "aggregator_prompt": (str, None),
    "default_provider": (str, "MOA_DEFAULT_PROVIDER"),
    "log_level": (str, "MOA_LOG_LEVEL"),
}
# File spellings that differ from the field names (the original demo's names).
_FILE_ALIASES = {"reference_models": "references", "references": "references"}
_FILE_ONLY = {"aggregator_prompt_file", "providers"}
_LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


def resolve_paths(env: Mapping[str, str]) -> Paths:
    """Where moa keeps its files: everything under MOA_HOME if set, else XDG dirs."""
    home = env.get("MOA_HOME")
    if home:
        root = Path(home).expanduser()
        return Paths(root, root / "config.toml", root / "history", root / "conversations")
    import platformdirs  # deferred: only needed when MOA_HOME is not set

    config_dir = Path(platformdirs.user_config_dir("moa", appauthor=False))
    data_dir = Path(platformdirs.user_data_dir("moa", appauthor=False))
    return Paths(None, config_dir / "config.toml", data_dir / "history", data_dir / "conversations")


def split_models(values: list[str] | tuple[str, ...] | str) -> tuple[str, ...]:
    """Accept repeated values, comma lists, or both: ["a,b", "c"] -> ("a", "b", "c")."""
    if isinstance(values, str):
        values = [values]
    return tuple(part.strip() for v in values for part in v.split(",") if part.strip())


def _line_of(text: str, key: str) -> int | None:
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=", re.MULTILINE)
    match = pattern.search(text)
    return text.count("\n", 0, match.start()) + 1 if match else None


def _file_error(path: Path, text: str, key: str, problem: str) -> ConfigError:
    line = _line_of(text, key)
    where = f"{path}, line {line}" if line else str(path)
    return ConfigError(f"{where}: {problem}")


def _coerce(name: str, value: Any, kind: type) -> Any:
    """Convert a raw value (env string or TOML value) to the field's type, or raise ValueError."""
    if kind is tuple:
        if isinstance(value, str):
            return split_models(value)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return split_models(value)
        raise ValueError("expected a list of model names")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ValueError("expected true or false")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError("expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        raise ValueError("expected an integer")
    if kind is float:
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
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, ProviderConfig]]:
    """Parse the config file into field values and providers; ConfigError names file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None

    values: dict[str, Any] = {}
    for key, raw in data.items():
        if key in _FILE_ONLY:
            continue
        name = _FILE_ALIASES.get(key, key)
        if name not in _FIELDS:
            raise _file_error(path, text, key, f"unknown setting {key!r}")
        try:
            values[name] = _coerce(name, raw, _FIELDS[name][0])
        except ValueError as exc:
            raise _file_error(path, text, key, f"{key}: {exc}") from None
    if "aggregator_prompt_file" in data:
        prompt_path = data["aggregator_prompt_file"]
        if not isinstance(prompt_path, str):
            raise _file_error(path, text, "aggregator_prompt_file", "aggregator_prompt_file: expected a path")
        values["aggregator_prompt"] = read_prompt_file(Path(prompt_path).expanduser())

    providers: dict[str, ProviderConfig] = {}
    raw_providers = data.get("providers", {})
    if not isinstance(raw_providers, dict):
        raise _file_error(path, text, "providers", "providers must be a table: [providers.NAME]")
    for name, entry in raw_providers.items():
        if not isinstance(entry, dict):
            raise _file_error(path, text, name, f"[providers.{name}] must be a table")
        providers[name] = _provider_from_table(path, text, name, entry)
    return values, providers


def _provider_from_table(path: Path, text: str, name: str, entry: dict[str, Any]) -> ProviderConfig:
    builtin = defaults.BUILTIN_PROVIDERS.get(name, {})
    unknown = set(entry) - {"kind", "type", "base_url", "api_key_env", "models"}
    if unknown:
        key = sorted(unknown)[0]
        raise _file_error(path, text, key, f"[providers.{name}]: unknown key {key!r}")
    kind = entry.get("kind", entry.get("type", builtin.get("kind", "openai")))
    if kind not in _KINDS:
        raise _file_error(path, text, "kind", f"[providers.{name}]: kind must be one of {', '.join(_KINDS)}")
    base_url = entry.get("base_url", builtin.get("base_url"))
    if kind == "openai" and not base_url:
        raise ConfigError(f"{path}: [providers.{name}] needs a base_url")
    key_env = entry.get("api_key_env", builtin.get("api_key_env"))
    models = entry.get("models", [])
    for key, value in (("base_url", base_url), ("api_key_env", key_env)):
        if value is not None and not isinstance(value, str):
            raise _file_error(path, text, key, f"[providers.{name}]: {key} must be a string")
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise _file_error(path, text, "models", f"[providers.{name}]: models must be a list of strings")
    return ProviderConfig(name, kind, base_url or None, key_env or None, tuple(models))


def read_prompt_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read aggregator prompt {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read aggregator prompt {path}: not UTF-8 text") from None
    if not text:
        raise ConfigError(f"aggregator prompt {path} is empty")
    return text


def _builtin_providers() -> dict[str, ProviderConfig]:
    return {
        name: ProviderConfig(name, entry["kind"], entry["base_url"], entry["api_key_env"])  # type: ignore[arg-type]
        for name, entry in defaults.BUILTIN_PROVIDERS.items()
    }


def _validate(s: Settings, sources: Mapping[str, str]) -> None:
    def bad(name: str, problem: str) -> ConfigError:
        where = sources.get(name, "default")
        label = {"references": "reference_models"}.get(name, name)
        origin = f" (from {where})" if where not in ("default", "flag", "command") else ""
        return ConfigError(f"invalid {label}{origin}: {problem}")

    for name in ("temperature", "timeout", "layer_deadline"):
        value = getattr(s, name)
        if value is not None and not math.isfinite(value):
            raise bad(name, f"{value} is not a finite number")
    if not 0 <= s.temperature <= 2:
        raise bad("temperature", f"{s.temperature:g} is not between 0 and 2")
    for name in ("max_tokens", "rounds"):
        if getattr(s, name) < 1:
            raise bad(name, f"{getattr(s, name)} must be at least 1")
    if s.num_proc is not None and s.num_proc < 1:
        raise bad("num_proc", f"{s.num_proc} must be at least 1")
    if s.retries < 0:
        raise bad("retries", f"{s.retries} must be 0 or more")
    if s.timeout <= 0:
        raise bad("timeout", f"{s.timeout:g} must be more than 0")
    if s.layer_deadline is not None and s.layer_deadline <= 0:
        raise bad("layer_deadline", f"{s.layer_deadline:g} must be more than 0")
    if not s.references:
        raise bad("references", "at least one reference model is needed")
    if not s.aggregator.strip():
        raise bad("aggregator", "the aggregator model name is empty")
    if s.log_level not in _LOG_LEVELS:
        raise bad("log_level", f"{s.log_level!r} is not one of {', '.join(_LOG_LEVELS)}")
    if s.default_provider not in s.providers:
        raise bad("default_provider", f"no provider named {s.default_provider!r}")


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    force_local: bool = False,
) -> Settings:
    """Build the Settings for this run. `overrides` are flag values (None = not given).

    `overrides` may also carry `aggregator_prompt_file`, a path read here so that a bad
    file is a ConfigError like any other.
    """
    env = dict(os.environ if env is None else env)
    paths = resolve_paths(env)
    file_values, file_providers = _read_file(paths.config_file)

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, value in file_values.items():
        values[name], sources[name] = value, f"config file {paths.config_file}"
    for name, (kind, var) in _FIELDS.items():
        if var and env.get(var, "").strip():
            try:
                values[name] = _coerce(name, env[var], kind)
            except ValueError as exc:
                raise ConfigError(f"invalid {var}={env[var]!r}: {exc}") from None
            sources[name] = f"env {var}"
    overrides = dict(overrides or {})
    prompt_file = overrides.pop("aggregator_prompt_file", None)
    if prompt_file is not None:
        overrides["aggregator_prompt"] = read_prompt_file(Path(prompt_file).expanduser())
    for name, value in overrides.items():
        if value is not None:
            if name == "references":
                value = split_models(value)
            values[name], sources[name] = value, "flag"
    values["log_level"] = str(values.get("log_level", "WARNING")).upper()

    providers = _builtin_providers()
    providers.update(file_providers)

    # With nothing configured and no Together key, run offline on the bundled model.
    lineup_given = "references" in values or "aggregator" in values
    nothing_configured = not file_providers and not env.get("TOGETHER_API_KEY")
    local = force_local or (not lineup_given and nothing_configured)
    if local:
        if force_local or "references" not in values:
            values["references"], sources["references"] = defaults.LOCAL_REFERENCES, "local line-up"
        if force_local or "aggregator" not in values:
            values["aggregator"], sources["aggregator"] = defaults.LOCAL_AGGREGATOR, "local line-up"
        if "max_tokens" not in values:
            values["max_tokens"], sources["max_tokens"] = defaults.LOCAL_MAX_TOKENS, "local line-up"
        if "seed" not in values:
            values["seed"], sources["seed"] = defaults.LOCAL_SEED, "local line-up"

    settings = Settings(
        **values,
        providers=providers,
        local_lineup=local,
        paths=paths,
        env=env,
        sources=sources,
    )
    _validate(settings, sources)
    return settings
