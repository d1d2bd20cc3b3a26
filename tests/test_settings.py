"""The settings' one declaration: every way in is derived from it, and nothing is left out."""

from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path

import pytest

from moa_cli import defaults
from moa_cli.api import MoA, plan_from_settings
from moa_cli.cli.app import app
from moa_cli.cli.ask import ask
from moa_cli.cli.chat import chat
from moa_cli.config import load_settings, with_lineup
from moa_cli.engine import Plan
from moa_cli.errors import ConfigError
from moa_cli.repl.slash import SETTABLE, apply_setting
from moa_cli.settings import DEFAULTS, SPECS, Settings
from tests.fakes.helpers import home_env

# Command parameters that are not settings: what to run and how to show it.
FRONT_END_OPTIONS = {"prompt", "json_output", "verbose", "quiet", "local", "resume", "cid"}
FRONT_END_OPTIONS |= {"schema"}  # `moa ask --schema`: this turn's answer format, not a setting


def parameters(command: object) -> set[str]:
    return set(inspect.signature(command).parameters)  # type: ignore[arg-type]


@pytest.mark.parametrize("command", [ask, chat], ids=["ask", "chat"])
def test_every_command_parameter_is_a_setting_or_a_front_end_option(command: object) -> None:
    unknown = parameters(command) - set(SPECS) - FRONT_END_OPTIONS
    assert not unknown, f"parameters with no setting: {unknown}"


# `moa batch`'s own options: what to read and write, which items, and how to pace the run.
BATCH_OPTIONS = {"input_file", "output", "input_format", "parallel", "rps", "limit", "ids", "generator"}
BATCH_OPTIONS |= {"allow_failures", "restart", "fastchat_temperatures"}
BATCH_OPTIONS |= {"reuse_proposals", "budget"}  # budget: the whole run's, where max_cost is a turn's
BATCH_OPTIONS |= {"allow_degraded"}  # what a run may write, not how a turn runs


def test_every_batch_parameter_is_a_setting_or_a_front_end_option() -> None:
    from moa_cli.cli.batch_cmd import batch

    unknown = parameters(batch) - set(SPECS) - FRONT_END_OPTIONS - BATCH_OPTIONS
    assert not unknown, f"parameters with no setting: {unknown}"
    every_turn = {name for name, spec in SPECS.items() if spec.flags and spec.commands is None}
    assert set(batch.setting_names) == every_turn  # type: ignore[attr-defined]


# `moa serve`'s own options: where to listen, who may call, how much load, how to stop.
SERVE_OPTIONS = {"host", "port", "api_key", "cors_origin", "max_concurrent", "queue", "turn_timeout"}
SERVE_OPTIONS |= {"shutdown_timeout", "workers", "passthrough", "allow_overrides", "progress"}
# The server's own limits (issue 19): connections, deadlines, fan-out caps and the retry window.
SERVE_OPTIONS |= {"allowed_host", "max_connections", "header_timeout", "body_timeout", "keep_alive_timeout"}
SERVE_OPTIONS |= {"max_header_bytes", "max_references", "max_upstream_calls", "retry_window"}


def test_every_serve_parameter_is_a_setting_or_a_front_end_option() -> None:
    from moa_cli.cli.serve import serve

    unknown = parameters(serve) - set(SPECS) - FRONT_END_OPTIONS - SERVE_OPTIONS
    assert not unknown, f"parameters with no setting: {unknown}"
    every_turn = {name for name, spec in SPECS.items() if spec.flags and spec.commands is None}
    assert set(serve.setting_names) == every_turn  # type: ignore[attr-defined]


def test_every_setting_has_a_way_in() -> None:
    for name, spec in SPECS.items():
        ways = {"file"}  # every setting can be set in the config file
        if spec.env:
            ways.add("env")
        if spec.flags:
            ways.add("flag")
        assert ways - {"file"} or name == "aggregator_prompt", f"{name} can only be set in the file"
        if spec.flags:
            takers = [c for c in (ask, chat) if name in parameters(c)]
            assert takers, f"{name} has flags but no command takes them"


def test_the_flags_on_the_commands_are_exactly_the_declared_ones() -> None:
    import typer.main

    command = typer.main.get_command(app)
    ask_cmd = command.commands["ask"]  # type: ignore[attr-defined]
    declared = {flag.split("/")[0] for spec in SPECS.values() if spec.commands is None for flag in spec.flags}
    offered = {opt for param in ask_cmd.params for opt in param.opts}
    assert declared <= offered


def test_help_shows_the_declared_defaults(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["ask", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert f"(default {DEFAULTS['temperature']:g})" in text and f"(default {DEFAULTS['max_tokens']})" in text


def test_the_plan_is_made_of_settings() -> None:
    # aggregator_sampling and what is watched are per turn (MoA.arun's arguments), not settings;
    # so is an agent's request (tools, response format: MoA.arun's tools= and response_format=);
    # contexts come from the config file's [models."SPEC"] tables.
    assert {f.name for f in fields(Plan)} - set(SPECS) == {
        "aggregator_sampling", "agent", "agent_note", "watch_references", "watch_answer", "contexts",
    }  # fmt: skip
    s = load_settings({"references": ["a"], "aggregator": "b", "rounds": 2, "seed": 5}, {"TOGETHER_API_KEY": "k"})
    plan = plan_from_settings(s)
    assert (plan.references, plan.aggregator, plan.rounds, plan.seed) == (("a",), "b", 2, 5)


def test_every_setting_classifies_itself() -> None:
    """`decides` and `recorded` have no default: a setting that does not say is refused at import."""
    from moa_cli.settings import Spec

    with pytest.raises(TypeError, match="decides"):
        Spec("str", "a setting that does not say what it is")  # type: ignore[call-arg]
    for name, spec in SPECS.items():
        assert spec.decides in ("answer", "references", None), name
        assert isinstance(spec.recorded, bool) and isinstance(spec.overridable, bool), name
        if spec.decides is not None:  # what decided a logged answer is logged with it
            assert spec.recorded, name
        if spec.overridable or spec.decides == "references":  # line-up settings only
            assert spec.lineup and spec.decides is not None, name


def test_what_is_derived_from_the_classification() -> None:
    from moa_cli import batch
    from moa_cli.engine import AGGREGATOR_SAMPLING
    from moa_cli.recorder import settings_of
    from moa_cli.server.schema import OVERRIDABLE

    s = load_settings({"references": ["a"], "aggregator": "b"}, {"TOGETHER_API_KEY": "k"})
    assert set(settings_of(s)) | {"aggregator_prompt"} == {n for n, spec in SPECS.items() if spec.recorded}
    assert set(OVERRIDABLE) == {n for n, spec in SPECS.items() if spec.overridable}
    parts = batch.settings_parts(s)
    assert {n for n, spec in SPECS.items() if spec.decides} <= {n.removesuffix("_sha256") for n in parts}
    assert not {n for n, spec in SPECS.items() if not spec.decides} & set(parts)
    # A turn's own sampling for the answer (moa serve) only changes what decides the answer.
    assert {n for n in AGGREGATOR_SAMPLING if n in SPECS} <= {n for n, spec in SPECS.items() if spec.decides}


def test_the_python_api_takes_every_setting_by_name(tmp_path: Path) -> None:
    env = home_env(tmp_path)
    moa = MoA(["a", "b"], "c", temperature=0.3, max_tokens=9, layer_deadline=2.5, env=env)
    assert (moa.settings.temperature, moa.settings.max_tokens, moa.settings.layer_deadline) == (0.3, 9, 2.5)
    assert moa.settings.sources["temperature"] == "argument"
    with pytest.raises(TypeError, match="tempreature"):
        MoA(tempreature=0.3, env=env)
    with pytest.raises(ConfigError, match="invalid temperature: 9 is not between 0 and 2"):
        MoA(temperature=9, env=env)


def test_set_is_driven_by_the_declarations(tmp_path: Path) -> None:
    assert set(SETTABLE) == {name for name, spec in SPECS.items() if spec.settable}
    s = load_settings(env=home_env(tmp_path))
    assert apply_setting(s, "max-tokens", "64").max_tokens == 64
    assert apply_setting(s, "reference_models", "x y").references == ("x", "y")
    assert apply_setting(apply_setting(s, "seed", "7"), "seed", "off").seed is None
    with pytest.raises(ConfigError, match="unknown setting"):
        apply_setting(s, "timeout", "3")  # declared, but not settable in the REPL
    with pytest.raises(ConfigError, match=r"not a number|expected a number"):
        apply_setting(s, "temperature", "warm")


# ---------------------------------------------------------------------------- line-ups

LINEUPS = """
temperature = 0.2
reference_models = ["top-a"]
aggregator = "top-agg"

[lineups.fast]
description = "two small ones"
reference_models = ["f1", "f2"]
aggregator = "fa"
max_tokens = 99
"""


def write_config(home: Path, text: str) -> None:
    (home / "config.toml").write_text(text)


def test_builtin_lineups_are_there(tmp_path: Path) -> None:
    s = load_settings(env=home_env(tmp_path))
    assert set(s.lineups) >= {"together", "local"}
    assert s.lineup == "together" and s.references == defaults.TOGETHER_REFERENCES
    local = load_settings({"lineup": "local"}, home_env(tmp_path))
    assert local.references == defaults.LOCAL_REFERENCES and local.max_tokens == defaults.LOCAL_MAX_TOKENS
    assert not local.local_lineup  # chosen, not fallen back to: no notice


def test_a_chosen_lineup_replaces_the_files_own_and_flags_still_win(tmp_path: Path) -> None:
    write_config(tmp_path, LINEUPS)
    env = home_env(tmp_path)
    plain = load_settings(env=env)
    assert plain.lineup is None and plain.references == ("top-a",) and plain.aggregator == "top-agg"
    fast = load_settings({"lineup": "fast", "max_tokens": 7}, env)
    assert fast.references == ("f1", "f2") and fast.aggregator == "fa"
    assert fast.max_tokens == 7 and fast.temperature == 0.2  # the flag wins; the file's other values stay
    assert fast.sources["references"] == "line-up fast" and fast.sources["max_tokens"] == "flag"
    by_env = load_settings(env={**env, "MOA_LINEUP": "fast", "MOA_MAX_TOKENS": "11"})
    assert by_env.references == ("f1", "f2") and by_env.max_tokens == 11


def test_the_config_can_change_the_default_lineup(tmp_path: Path) -> None:
    write_config(tmp_path, 'lineup = "fast"\n' + LINEUPS)
    s = load_settings(env=home_env(tmp_path))
    assert s.lineup == "fast" and s.references == ("f1", "f2")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[lineups.x]\ntimeout = 3\n", "unknown setting 'timeout'"),
        ("[lineups.x]\nrounds = 0\n", None),
        ('[lineups.x]\nreference_models = "a"\nmax_tokens = "many"\n', "line 3"),
        ("lineups = 3\n", "lineups must be a table"),
    ],
)
def test_bad_lineup_tables_name_the_problem(tmp_path: Path, text: str, needle: str | None) -> None:
    write_config(tmp_path, text)
    env = home_env(tmp_path)
    with pytest.raises(ConfigError, match=needle or "rounds"):
        load_settings({"lineup": "x"}, env)


def test_an_unknown_lineup_names_the_closest(tmp_path: Path) -> None:
    write_config(tmp_path, LINEUPS)
    with pytest.raises(ConfigError, match="did you mean 'fast'"):
        load_settings({"lineup": "fats"}, home_env(tmp_path))


def test_switching_lineups_keeps_the_flags(tmp_path: Path) -> None:
    write_config(tmp_path, LINEUPS)
    s = load_settings({"temperature": 1.5}, home_env(tmp_path))
    fast = with_lineup(s, "fast")
    assert fast.references == ("f1", "f2") and fast.temperature == 1.5
    back = with_lineup(fast, "together")
    assert back.references == defaults.TOGETHER_REFERENCES and back.max_tokens == DEFAULTS["max_tokens"]


def test_settings_context_fields_are_not_settings() -> None:
    context = {f.name for f in fields(Settings)} - set(SPECS)
    assert context == {"providers", "contexts", "lineups", "local_lineup", "paths", "env", "overrides", "sources"}


# ---------------------------------------------------------------------------- bad values (issue 7)


@pytest.mark.parametrize(
    ("overrides", "env", "needle"),
    [
        ({"temperature": float("nan")}, {}, "nan is not a number"),
        ({"max_tokens": 2**31}, {}, "no server accepts"),
        ({"seed": 2**63}, {}, "does not fit in 64 bits"),
        ({}, {"TOGETHER_BASE_URL": "http://[::1"}, "not a usable URL"),
        ({}, {"TOGETHER_BASE_URL": "not a url"}, "not a usable URL"),
        ({}, {"TOGETHER_BASE_URL": "ftp://example.com"}, "http:// or https://"),
    ],
)
def test_unusable_values_are_config_errors(tmp_path: Path, overrides: dict, env: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_settings(overrides, home_env(tmp_path, **env))


def test_a_bad_provider_base_url_names_the_file_and_hides_credentials(tmp_path: Path) -> None:
    write_config(tmp_path, '[providers.mine]\nbase_url = "http://user:hunter22@[::1"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(env={"MOA_HOME": str(tmp_path)})
    assert "[providers.mine] base_url" in str(info.value) and "hunter22" not in str(info.value)


def test_keys_that_no_header_can_carry_and_empty_models_are_caught(tmp_path: Path) -> None:
    from moa_cli.providers.registry import check_lineup

    s = load_settings({"references": ["a"], "aggregator": "b"}, {"MOA_HOME": str(tmp_path), "TOGETHER_API_KEY": "clé"})
    with pytest.raises(ConfigError, match="cannot carry") as info:
        check_lineup(s)
    assert "clé" not in str(info.value)
    s = load_settings({"references": ["a"], "aggregator": "ollama:"}, home_env(tmp_path))
    with pytest.raises(ConfigError, match="model name missing after 'ollama:'"):
        check_lineup(s)


def test_configured_keys_are_registered_for_redaction(tmp_path: Path) -> None:
    from moa_cli.redact import redact

    load_settings(env={"MOA_HOME": str(tmp_path), "GROQ_API_KEY": "gsk-secret-value-123"})
    assert redact("bad key gsk-secret-value-123 given") == "bad key **** given"
