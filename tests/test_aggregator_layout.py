"""`aggregator_layout`: the references' answers in the system message (the paper's layout) or
after the conversation, so that the aggregator's prompt starts as a reference's prompt does
(prompts.py), checked in memory and on the wire."""

from __future__ import annotations

import asyncio

import pytest

from moa_cli.api import MoA
from moa_cli.errors import ConfigError
from moa_cli.fitting import ANSWER_MARK, Parts, Window, estimate_tokens, fit, with_references
from moa_cli.prompts import AGGREGATOR_PROMPT, inject_references
from moa_cli.types import Message
from tests.fakes.llm_server import FakeLLMServer

CONVERSATION: list[Message] = [
    {"role": "system", "content": "Be terse."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3 + 3?"},
]


def test_after_keeps_the_conversation_and_puts_the_answers_at_its_end() -> None:
    after = inject_references(CONVERSATION, AGGREGATOR_PROMPT, ["six", "6"], "after")
    assert after[:-1] == CONVERSATION[:-1]  # the system message too: a reference's prompt starts the same
    last = after[-1]["content"]
    assert last.startswith("And 3 + 3?\n\nYou have been given") and last.endswith("<response_2>\n6\n</response_2>")
    system = inject_references(CONVERSATION, AGGREGATOR_PROMPT, ["six", "6"], "system")
    assert system[1:] == CONVERSATION[1:] and "<response_1>\nsix\n</response_1>" in system[0]["content"]
    assert CONVERSATION[-1]["content"] == "And 3 + 3?"  # nothing modified in place
    with pytest.raises(ValueError, match="unknown layout"):
        inject_references(CONVERSATION, AGGREGATOR_PROMPT, ["six"], "before")


def test_fitting_cuts_the_input_and_the_answers_in_the_after_layout() -> None:
    """The input is cut in its middle, the answers evenly, and the block stays after the input."""
    text = "START " + "y" * 30000 + " END"
    conversation: list[Message] = [{"role": "user", "content": text}]
    parts = Parts(conversation, ("a" * 9000, "b" * 300, "c" * 9000), with_references(AGGREGATOR_PROMPT, "after"))
    fitted = fit(parts, Window(4096, "config"), 256, estimate_tokens, estimated=True, model="m")
    (only,) = fitted.messages
    sent = only["content"]
    head, _, block = sent.partition("\n\nYou have been given")
    assert head.startswith("START ") and head.endswith(" END") and "characters left out here by moa" in head
    assert "b" * 300 in block and block.count(ANSWER_MARK) == 2
    assert estimate_tokens(fitted.messages) + 256 <= 4096


def test_the_aggregator_prompt_starts_as_the_references_do(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    moa = MoA(["alpha", "beta"], "judge", env=moa_env, system="Be terse.")  # the default layout
    result = asyncio.run(moa.arun("Name a prime."))
    (alpha,) = llm_server.requests_for("alpha")
    (judge,) = llm_server.requests_for("judge")
    assert judge.messages[:-1] == alpha.messages[:-1] == [{"role": "system", "content": "Be terse."}]
    assert (judge.last_user or "").startswith((alpha.last_user or "") + "\n\n" + AGGREGATOR_PROMPT.splitlines()[0])
    assert "<response_2>\nAnswer from beta.\n</response_2>" in (judge.last_user or "")
    assert result.answer == "Answer from judge."


def test_two_layers_put_the_first_layers_answers_after_the_conversation(
    moa_env: dict[str, str], llm_server: FakeLLMServer
) -> None:
    asyncio.run(MoA(["alpha"], "judge", env=moa_env, aggregator_layout="after", rounds=2).arun("q"))
    first, second = llm_server.requests_for("alpha")
    assert first.messages == [{"role": "user", "content": "q"}]
    assert second.system is None and (second.last_user or "").startswith("q\n\nYou have been given")


def test_an_agents_aggregator_keeps_the_system_layout(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    """An agent's aggregator call sends the client's own conversation: the answers stay in the
    system message that leads it."""
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    moa = MoA(["alpha"], "judge", env=moa_env, aggregator_layout="after")
    asyncio.run(moa.arun("Weather in Oslo?", tools=[weather]))
    (judge,) = llm_server.requests_for("judge")
    assert "<response_1>" in (judge.system or "") and judge.last_user == "Weather in Oslo?"


def test_the_setting_is_a_flag_a_variable_and_checked(cli, llm_server: FakeLLMServer) -> None:
    proc = cli(["ask", "--json", "--aggregator-layout", "system", "-r", "alpha", "-a", "judge", "q"])
    assert proc.returncode == 0, proc.stderr
    first = llm_server.requests_for("judge")[0]
    assert first.last_user == "q" and "<response_1>" in (first.system or "")
    proc = cli(["ask", "-r", "alpha", "-a", "judge", "q"], env={"MOA_AGGREGATOR_LAYOUT": "after"})
    assert proc.returncode == 0 and (llm_server.requests_for("judge")[1].last_user or "").startswith("q\n\n")
    proc = cli(["ask", "--aggregator-layout", "before", "-r", "alpha", "-a", "judge", "q"])
    assert proc.returncode == 2 and "'before' is not one of system, after" in proc.stderr


def test_a_bad_layout_is_a_config_error(moa_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="aggregator_layout"):
        MoA(["alpha"], "judge", env=moa_env, aggregator_layout="sideways")


def test_usage_says_what_a_prefix_cache_reused() -> None:
    """OpenAI's and vLLM's prompt_tokens_details.cached_tokens (the local runtime: test_local.py)."""
    from moa_cli.providers.chat_api import _usage

    usage = _usage({"prompt_tokens": 1200, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 1024}})
    assert usage is not None and usage.cached_tokens == 1024
    assert usage.to_dict() == {
        "prompt_tokens": 1200,
        "completion_tokens": 5,
        "total_tokens": 1205,
        "cached_tokens": 1024,
    }
    plain = _usage({"prompt_tokens": 3, "completion_tokens": 1})
    assert plain is not None and plain.cached_tokens is None and "cached_tokens" not in plain.to_dict()
