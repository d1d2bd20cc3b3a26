"""Settings: precedence, validation, the config file's errors, MOA_HOME and routing."""

from __future__ import annotations

from pathlib import Path

import pytest

from moa_cli import defaults
from moa_cli.config import load_settings, resolve_paths, split_models
from moa_cli.errors import ConfigError
from moa_cli.providers.registry import ProviderPool, split_spec
from moa_cli.settings import DEFAULTS
from tests.fakes.helpers import home_env


def test_defaults_are_the_together_recipe(tmp_path: Path) -> None:
    s = load_settings(env=home_env(tmp_path))
    assert s.references == defaults.TOGETHER_REFERENCES and s.aggregator == defaults.TOGETHER_AGGREGATOR
    assert (s.temperature, s.max_tokens, s.rounds, s.num_proc) == (0.7, 512, 1, None)
    assert not s.local_lineup


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("temperature = 0.1\nmax_tokens = 10\nrounds = 3\n")
    s = load_settings({"temperature": 0.9}, home_env(tmp_path, MOA_MAX_TOKENS="20"))
    assert (s.temperature, s.max_tokens, s.rounds, s.retries) == (0.9, 20, 3, DEFAULTS["retries"])
    assert s.sources["temperature"] == "flag" and s.sources["max_tokens"] == "env MOA_MAX_TOKENS"
    assert s.sources["rounds"].startswith("config file")


def test_moa_home_relocates_every_file(tmp_path: Path) -> None:
    paths = resolve_paths({"MOA_HOME": str(tmp_path)})
    assert {paths.config_file.parent, paths.history_file.parent, paths.conversations_dir.parent} == {tmp_path}


def test_reference_lists_accept_commas_and_repeats() -> None:
    assert split_models(["a,b", " c ", "ollama:llama3.2:1b"]) == ("a", "b", "c", "ollama:llama3.2:1b")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("rounds = 0\n", "rounds"),
        ("temperature = 3\n", "temperature"),
        ('rounds = "two"\n', "line 1"),
        ("bogus = 1\n", "unknown setting 'bogus'"),
        ("x = [\n", "invalid TOML"),
        ('[providers.mine]\nkind = "carrier-pigeon"\n', "kind must be one of"),
        ('[providers.mine]\nkind = "openai"\n', "needs a base_url"),
    ],
)
def test_bad_config_files_name_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match=needle) as info:
        load_settings(env=home_env(tmp_path))
    assert str(tmp_path / "config.toml") in str(info.value) or "from config file" in str(info.value)


def test_routing_by_provider_prefix(tmp_path: Path) -> None:
    names = ["together", "ollama", "local"]
    assert split_spec("ollama:llama3.2:1b", names, "together") == ("ollama", "llama3.2:1b")
    assert split_spec("Qwen/Qwen2.5-72B-Instruct-Turbo", names, "together") == (
        "together",
        "Qwen/Qwen2.5-72B-Instruct-Turbo",
    )
    assert split_spec("llama3.2:1b", names, "together") == ("together", "llama3.2:1b")
    assert split_spec("local:/models/x.gguf", names, "together") == ("local", "/models/x.gguf")


def test_default_provider_can_be_changed(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        'default_provider = "ollama"\naggregator = "qwen2.5:1.5b"\nreference_models = ["llama3.2:1b"]\n'
    )
    s = load_settings(env={"MOA_HOME": str(tmp_path)})
    config, model = ProviderPool(s).split("llama3.2:1b")
    assert config.name == "ollama" and config.base_url == "http://localhost:11434/v1" and model == "llama3.2:1b"
    ProviderPool(s).check([*s.references, s.aggregator])  # ollama needs no key


def test_no_key_and_no_config_chooses_the_local_lineup(tmp_path: Path) -> None:
    s = load_settings(env={"MOA_HOME": str(tmp_path)})
    assert s.local_lineup and s.references == defaults.LOCAL_REFERENCES and s.aggregator == defaults.LOCAL_AGGREGATOR
    assert s.max_tokens == defaults.LOCAL_MAX_TOKENS and s.seed is not None


def test_an_explicit_lineup_without_a_key_is_a_missing_key_error(tmp_path: Path) -> None:
    s = load_settings({"references": ["a"], "aggregator": "b"}, {"MOA_HOME": str(tmp_path)})
    assert not s.local_lineup
    with pytest.raises(ConfigError, match="TOGETHER_API_KEY"):
        ProviderPool(s).check(["a", "b"])


def test_with_changes_validates(tmp_path: Path) -> None:
    s = load_settings(env=home_env(tmp_path))
    assert s.with_changes(rounds=2).rounds == 2
    with pytest.raises(ConfigError, match="rounds"):
        s.with_changes(rounds=0)


@pytest.mark.parametrize(
    ("var", "value"), [("MOA_TIMEOUT", "nan"), ("MOA_LAYER_DEADLINE", "inf"), ("MOA_TEMPERATURE", "nan")]
)
def test_non_finite_numbers_are_rejected(tmp_path: Path, var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=r"finite|nan is not a number"):
        load_settings(env=home_env(tmp_path, **{var: value}))


def test_bad_log_level_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="log_level"):
        load_settings(env=home_env(tmp_path, MOA_LOG_LEVEL="bogus"))


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "not utf-8"])
def test_bad_aggregator_prompt_file_is_a_config_error(tmp_path: Path, case: str) -> None:
    path = tmp_path / "prompt.txt"
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        path.write_text("\n")
    elif case == "not utf-8":
        path.write_bytes(b"caf\xe9")
    with pytest.raises(ConfigError, match="aggregator prompt"):
        load_settings({"aggregator_prompt_file": path}, home_env(tmp_path))


def test_a_typo_in_a_provider_prefix_is_caught(tmp_path: Path) -> None:
    s = load_settings(env=home_env(tmp_path))
    with pytest.raises(ConfigError, match="did you mean 'ollama'"):
        ProviderPool(s).check(["olama:llama3.2:1b"])
    ProviderPool(s).check(["llama3.2:1b", "deepseek-ai/DeepSeek-V3"])  # plain names pass
