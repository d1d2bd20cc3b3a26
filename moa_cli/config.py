"""Settings are loaded here and nowhere else (what each setting is: `settings.py`).

Precedence, lowest first: the declared defaults, the config file's top level, the chosen
line-up, environment variables, then flags (or the Python API's arguments). A line-up is
a preset of settings: choosing one (`--lineup`, `MOA_LINEUP`, `lineup = "…"` in the file)
replaces the file's own line-up, and single flags or variables still override it.
`MOA_HOME` relocates every file moa reads or writes. Front ends never read the environment.

Config file (`moa config path` shows where):

    aggregator = "Qwen/Qwen2.5-72B-Instruct-Turbo"
    reference_models = ["ollama:llama3.2:1b", "deepseek-ai/DeepSeek-V3"]
    temperature = 0.7
    lineup = "fast"                       # the default line-up (built in: together, local)
    # any setting of settings.py by name; aggregator_prompt_file = "path" reads a file

    [lineups.fast]
    description = "two small models on Groq"
    reference_models = ["groq:llama-3.1-8b-instant", "groq:gemma2-9b-it"]
    aggregator = "groq:llama-3.3-70b-versatile"
    max_tokens = 800

    [providers.vllm]
    kind = "openai"                       # "openai" (any compatible API), "together" or "local"
    base_url = "http://localhost:8000/v1"
    api_key_env = "VLLM_API_KEY"          # omit for servers that need no key
    max_concurrency = 1                   # calls in flight to this provider at once

    [models."ollama:llama3.2:1b"]         # a model, by its spec as in a line-up
    context = 8192                        # its context window in tokens (fitting.py)

    [providers.local]
    threads = 2                           # llama.cpp threads while generating (default half the cores)
    repack = false                        # llama.cpp's weight repacking (default: off on AMX CPUs)
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from moa_cli import defaults
from moa_cli.errors import ConfigError
from moa_cli.redact import mask_url, register_secret
from moa_cli.settings import (
    SPECS,
    Settings,
    by_key,
    coerce,
    key_for,
    read_prompt_file,
    split_models,
    validate,
)

__all__ = [
    "Paths",
    "ProviderConfig",
    "Settings",
    "check_base_url",
    "load_settings",
    "read_prompt_file",
    "resolve_paths",
    "split_models",
    "with_lineup",
]

ProviderKind = Literal["together", "openai", "local"]
_KINDS = ("together", "openai", "local")
_PROVIDER_KEYS = {"kind", "type", "base_url", "api_key_env", "models", "max_concurrency", "threads", "repack"}


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """A named endpoint. The key itself is never stored here, only where to find it."""

    name: str
    kind: ProviderKind
    base_url: str | None = None
    api_key_env: str | None = None
    models: tuple[str, ...] = ()
    max_concurrency: int | None = None  # calls in flight to this provider at once; None = no cap
    threads: int | None = None  # kind "local": llama.cpp's threads while generating; None = half the cores
    repack: bool | None = None  # kind "local": llama.cpp's weight repacking; None = decided from the CPU
    repack_source: str = ""  # where `repack` was set, for `moa models --local`
    base_url_source: str = ""  # the environment variable `base_url` came from ("TOGETHER_BASE_URL"), if one did


@dataclass(frozen=True, slots=True)
class Paths:
    home: Path | None
    config_file: Path
    history_file: Path
    conversations_dir: Path
    data_dir: Path  # the conversation log and other state


def resolve_paths(env: Mapping[str, str]) -> Paths:
    """Where moa keeps its files: everything under MOA_HOME if set, else XDG dirs."""
    home = env.get("MOA_HOME")
    if home:
        root = Path(home).expanduser()
        return Paths(root, root / "config.toml", root / "history", root / "conversations", root)
    import platformdirs  # deferred: only needed when MOA_HOME is not set

    config_dir = Path(platformdirs.user_config_dir("moa", appauthor=False))
    data_dir = Path(platformdirs.user_data_dir("moa", appauthor=False))
    return Paths(None, config_dir / "config.toml", data_dir / "history", data_dir / "conversations", data_dir)


def check_base_url(url: str, where: str) -> str:
    """`url` if an HTTP client can use it; ConfigError (exit 2, one line) if not."""
    shown = mask_url(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port or an unclosed [IPv6
    except ValueError as exc:
        raise ConfigError(f"{where}: {shown!r} is not a usable URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"{where}: {shown!r} is not a usable URL (it must start with http:// or https://)")
    if not parts.hostname:
        raise ConfigError(f"{where}: {shown!r} is not a usable URL (no host)")
    if any(ch.isspace() for ch in url):
        raise ConfigError(f"{where}: {shown!r} is not a usable URL (it contains spaces)")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise ConfigError(f"{where}: {shown!r} is not a usable URL (it contains a control character)")
    return url


# ---------------------------------------------------------------------------- the config file


class _File:
    """The parsed config file, and its text for naming the line of an error."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.text = ""
        self.data: dict[str, Any] = {}
        from moa_cli.files import MAX_TEXT_BYTES, read_file

        data = read_file(path, "config file", limit=MAX_TEXT_BYTES, missing_ok=True)
        if data is None:
            return
        try:
            self.text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"cannot read config file {path}: not UTF-8 text (byte {exc.start})") from None
        try:
            self.data = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        except RecursionError:
            raise ConfigError(f"{path}: invalid TOML: nested too deeply") from None

    def error(self, key: str, problem: str) -> ConfigError:
        match = re.search(rf"^\s*{re.escape(key)}\s*=", self.text, re.MULTILINE)
        where = f"{self.path}, line {self.text.count(chr(10), 0, match.start()) + 1}" if match else str(self.path)
        return ConfigError(f"{where}: {problem}")

    def settings_table(
        self, table: Mapping[str, Any], *, context: str = "", lineup_only: bool = False
    ) -> dict[str, Any]:
        """Setting values from a table of `key = value`, checked and typed."""
        aliases = by_key()
        values: dict[str, Any] = {}
        for key, raw in table.items():
            name = aliases.get(key)
            if name is None or (lineup_only and not SPECS[name].lineup):
                known = [k for k, n in aliases.items() if "-" not in k and (SPECS[n].lineup or not lineup_only)]
                hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                more = f"; did you mean {hint[0]!r}?" if hint else ""
                raise self.error(key, f"{context}unknown setting {key!r}{more}")
            if key == "aggregator_prompt_file":
                if not isinstance(raw, str):
                    raise self.error(key, f"{context}{key}: expected a path")
                raw = Path(raw)
            try:
                values[name] = coerce(name, raw)
            except ValueError as exc:
                raise self.error(key, f"{context}{key}: {exc}") from None
        return values

    def top_level(self) -> dict[str, Any]:
        # [pricing."provider:model"] is read by pricing.py
        table = {k: v for k, v in self.data.items() if k not in ("providers", "lineups", "pricing", "models")}
        return self.settings_table(table)

    def contexts(self) -> dict[str, int]:
        """[models."SPEC"] context = N: the context windows the user declares, by model spec."""
        raw = self.data.get("models", {})
        if not isinstance(raw, dict):
            raise self.error("models", 'models must be a table: [models."SPEC"]')
        contexts: dict[str, int] = {}
        for spec, entry in raw.items():
            if not isinstance(entry, dict):
                raise self.error(spec, f'[models."{spec}"] must be a table')
            unknown = set(entry) - {"context"}
            if unknown:
                key = sorted(unknown)[0]
                raise self.error(key, f'[models."{spec}"]: unknown key {key!r} (known: context)')
            context = entry.get("context")
            if context is None:
                continue
            if isinstance(context, bool) or not isinstance(context, int) or not 256 <= context <= 100_000_000:
                raise self.error("context", f'[models."{spec}"]: context must be a whole number of tokens, 256 or more')
            contexts[spec] = context
        return contexts

    def providers(self) -> dict[str, ProviderConfig]:
        raw = self.data.get("providers", {})
        if not isinstance(raw, dict):
            raise self.error("providers", "providers must be a table: [providers.NAME]")
        providers: dict[str, ProviderConfig] = {}
        for name, entry in raw.items():
            if not isinstance(entry, dict):
                raise self.error(name, f"[providers.{name}] must be a table")
            providers[name] = self._provider(name, entry)
        return providers

    def _provider(self, name: str, entry: dict[str, Any]) -> ProviderConfig:
        builtin = defaults.BUILTIN_PROVIDERS.get(name, {})
        unknown = set(entry) - _PROVIDER_KEYS
        if unknown:
            key = sorted(unknown)[0]
            raise self.error(key, f"[providers.{name}]: unknown key {key!r}")
        kind = entry.get("kind", entry.get("type", builtin.get("kind", "openai")))
        if kind not in _KINDS:
            raise self.error("kind", f"[providers.{name}]: kind must be one of {', '.join(_KINDS)}")
        base_url = entry.get("base_url", builtin.get("base_url"))
        key_env = entry.get("api_key_env", builtin.get("api_key_env"))
        for key, value in (("base_url", base_url), ("api_key_env", key_env)):
            if value is not None and not isinstance(value, str):
                raise self.error(key, f"[providers.{name}]: {key} must be a string")
        if kind == "openai" and not base_url:
            raise self.error("kind", f"[providers.{name}] needs a base_url")
        if base_url:
            check_base_url(base_url, f"{self.path}: [providers.{name}] base_url")
        models = entry.get("models", [])
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise self.error("models", f"[providers.{name}]: models must be a list of strings")
        cap = entry.get("max_concurrency")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise self.error(
                "max_concurrency", f"[providers.{name}]: max_concurrency must be a whole number, 1 or more"
            )
        threads = entry.get("threads")
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 512
        ):
            raise self.error("threads", f"[providers.{name}]: threads must be a whole number from 1 to 512")
        if threads is not None and kind != "local":
            raise self.error("threads", f'[providers.{name}]: threads is for local providers (kind = "local")')
        repack = entry.get("repack")
        if repack is not None and not isinstance(repack, bool):
            raise self.error("repack", f"[providers.{name}]: repack must be true or false")
        if repack is not None and kind != "local":
            raise self.error("repack", f'[providers.{name}]: repack is for local providers (kind = "local")')
        source = f"[providers.{name}] repack in {self.path}" if repack is not None else ""
        return ProviderConfig(
            name, kind, base_url or None, key_env or None, tuple(models), cap, threads, repack, source
        )

    def lineups(self) -> dict[str, dict[str, Any]]:
        raw = self.data.get("lineups", {})
        if not isinstance(raw, dict):
            raise self.error("lineups", "lineups must be a table: [lineups.NAME]")
        lineups: dict[str, dict[str, Any]] = {}
        for name, entry in raw.items():
            if not isinstance(entry, dict):
                raise self.error(name, f"[lineups.{name}] must be a table")
            description = entry.get("description")
            if description is not None and not isinstance(description, str):
                raise self.error("description", f"[lineups.{name}]: description must be a string")
            table = {k: v for k, v in entry.items() if k != "description"}
            values = self.settings_table(table, context=f"[lineups.{name}]: ", lineup_only=True)
            if description:
                values["description"] = description
            lineups[name] = values
        return lineups


# ---------------------------------------------------------------------------- loading


def _builtin_providers() -> dict[str, ProviderConfig]:
    return {
        name: ProviderConfig(name, entry["kind"], entry["base_url"], entry["api_key_env"])  # type: ignore[arg-type]
        for name, entry in defaults.BUILTIN_PROVIDERS.items()
    }


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, spec in SPECS.items():
        if spec.env and env.get(spec.env, "").strip():
            raw = env[spec.env]
            if name == "log_level":
                raw = raw.strip().upper()
            try:
                values[name] = coerce(name, raw)
            except ValueError as exc:
                raise ConfigError(f"invalid {spec.env}={raw!r}: {exc}") from None
    return values


def _from_arguments(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Flag or API values; None means "not given". Unknown names are a bug in the caller."""
    aliases = by_key()
    values: dict[str, Any] = {}
    for key, value in overrides.items():
        name = aliases.get(key)
        if name is None:
            raise TypeError(f"unknown setting {key!r}")
        if value is None or value == () or value == []:
            continue
        try:
            values[name] = coerce(name, value)
        except ValueError as exc:
            raise ConfigError(f"invalid {key_for(name)}: {exc}") from None
    return values


def builtin_lineups() -> dict[str, dict[str, Any]]:
    return {name: {k: coerce(k, v) for k, v in values.items()} for name, values in defaults.BUILTIN_LINEUPS.items()}


def lineup_values(name: str, lineups: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The settings a named line-up sets; ConfigError naming the known ones if there is none."""
    if name not in lineups:
        hint = difflib.get_close_matches(name, list(lineups), n=1, cutoff=0.6)
        more = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"unknown line-up {name!r}{more} (known: {', '.join(lineups)}; moa lineups lists them)")
    return {k: v for k, v in lineups[name].items() if k in SPECS}


#: Forces llama.cpp's weight repacking for local models (providers/cpu.py decides otherwise).
REPACK_ENV = "MOA_LOCAL_REPACK"
#: Where Together's calls go instead of its API (a proxy, the tests' fake server).
TOGETHER_BASE_URL_ENV = "TOGETHER_BASE_URL"


def parse_switch(value: str) -> bool | None:
    """An on/off variable's value: True, False, or None for `auto` (or empty); ValueError otherwise."""
    word = value.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    if word in ("", "auto"):
        return None
    raise ValueError("expected 1 or 0 (true/false, on/off), or auto")


def _apply_repack_env(providers: dict[str, ProviderConfig], env: Mapping[str, str]) -> None:
    """`MOA_LOCAL_REPACK` forces llama.cpp's weight repacking for every local provider (auto: the CPU decides)."""
    raw = env.get(REPACK_ENV)
    if raw is None:
        return
    try:
        repack = parse_switch(raw)
    except ValueError as exc:
        raise ConfigError(f"invalid {REPACK_ENV}={raw!r}: {exc}") from None
    for name, provider in providers.items():
        if provider.kind == "local":
            source = f"{REPACK_ENV}={raw.strip()}" if repack is not None else ""
            providers[name] = replace(provider, repack=repack, repack_source=source)


def _apply_base_url_env(providers: dict[str, ProviderConfig], env: Mapping[str, str]) -> None:
    """`TOGETHER_BASE_URL` sends every provider of kind "together" there (the one place it is read)."""
    url = env.get(TOGETHER_BASE_URL_ENV)
    if not url:
        return
    check_base_url(url, TOGETHER_BASE_URL_ENV)
    for name, provider in providers.items():
        if provider.kind == "together":
            providers[name] = replace(provider, base_url=url, base_url_source=TOGETHER_BASE_URL_ENV)


def _register_keys(providers: Mapping[str, ProviderConfig], env: Mapping[str, str]) -> None:
    """Every configured key is masked in whatever moa prints or logs from now on."""
    for provider in providers.values():
        if provider.api_key_env:
            register_secret(env.get(provider.api_key_env))


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    force_local: bool = False,
    origin: str = "flag",
) -> Settings:
    """Build the Settings for this run. `overrides` are flag or API values (None = not given).

    `origin` names where `overrides` came from in `sources` and errors: "flag" for the
    command line (errors name the flag), "argument" for the Python API.
    """
    env = dict(os.environ if env is None else env)
    paths = resolve_paths(env)
    file = _File(paths.config_file)
    file_values = file.top_level()
    file_providers = file.providers()
    lineups = {**builtin_lineups(), **file.lineups()}
    env_values = _from_env(env)
    flag_values = _from_arguments(overrides or {})

    providers = _builtin_providers()
    providers.update(file_providers)
    _apply_repack_env(providers, env)
    _apply_base_url_env(providers, env)
    _register_keys(providers, env)

    layers: list[tuple[dict[str, Any], str]] = [(file_values, f"config file {paths.config_file}")]
    chosen = flag_values.get("lineup") or env_values.get("lineup") or file_values.get("lineup")
    if force_local:
        chosen = "local"
    auto_local = False
    if chosen is None:
        # With nothing configured and no Together key, run offline on the bundled model.
        lineup_given = any(k in v for v in (file_values, env_values, flag_values) for k in ("references", "aggregator"))
        nothing_configured = not file_providers and not env.get("TOGETHER_API_KEY")
        if not lineup_given and nothing_configured:
            chosen, auto_local = "local", True
        elif not lineup_given:
            chosen = "together"  # the declared defaults are this recipe; naming it says so
    if chosen is not None:
        layers.append((lineup_values(chosen, lineups), f"line-up {chosen}"))
    layers += [(env_values, "env"), (flag_values, origin)]

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer, origin in layers:
        for name, value in layer.items():
            values[name] = value
            sources[name] = f"env {SPECS[name].env}" if origin == "env" else origin
    if chosen is not None:
        values["lineup"] = chosen
        sources["lineup"] = "no key and nothing configured" if auto_local else sources.get("lineup", origin)

    settings = Settings(
        **values,
        providers=providers,
        contexts=file.contexts(),
        lineups=lineups,
        local_lineup=auto_local,
        paths=paths,
        env=env,
        overrides=flag_values,
        sources=sources,
    )
    validate(settings)
    return settings


def with_lineup(settings: Settings, name: str) -> Settings:
    """The settings as if the run had started with `--lineup NAME` and the same flags.

    Changes made since (`/set`) are dropped: the line-up replaces them, as it would at start.
    """
    lineup_values(name, settings.lineups)  # an unknown name is a ConfigError naming the known ones
    return load_settings({**settings.overrides, "lineup": name}, settings.env)
