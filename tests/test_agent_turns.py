"""Agents' turns outside the server: `MoA.arun(tools=..., response_format=...)` against the fake
upstream through the real SDK, and `moa ask --schema` in a subprocess."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from moa_cli.api import MoA
from moa_cli.errors import ConfigError
from moa_cli.structured import InvalidOutput, check_answer, check_response_format
from moa_cli.tools import conversation_as_text
from tests.fakes.llm_server import FakeLLMServer, Reply

WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def test_arun_with_tools_returns_the_aggregators_tool_calls(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    llm_server.script("judge", Reply(tool_calls=[{"id": "c9", "name": "get_weather", "arguments": '{"city": "Oslo"}'}]))
    events: list[Any] = []
    result = asyncio.run(
        MoA(["alpha", "beta"], "judge", env=moa_env).arun(
            "Weather in Oslo?", tools=[WEATHER], tool_choice="required", on_event=events.append
        )
    )
    assert result.finish_reason == "tool_calls" and result.answer == ""
    assert [c.to_dict() for c in result.tool_calls] == [
        {"id": "c9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    ]
    assert result.to_dict()["tool_calls"][0]["id"] == "c9"
    judge = llm_server.requests_for("judge")[0].body
    assert judge["tools"] == [WEATHER] and judge["tool_choice"] == "required"
    assert "The reply must call a tool." in llm_server.requests_for("alpha")[0].messages[0]["content"]
    assert any(e.type == "turn_done" for e in events)


def test_the_log_keeps_the_tool_calls(moa_env: dict[str, str], llm_server: FakeLLMServer, cli: Any) -> None:
    """The turn's checked calls and each aggregator call's own: `moa logs show` prints them."""
    bad = {"id": "c1", "name": "get_weather", "arguments": "{city: Oslo"}
    good = {"id": "c2", "name": "get_weather", "arguments": '{"city": "Oslo"}'}
    llm_server.script("judge", Reply(tool_calls=[bad]), Reply(tool_calls=[good]))
    moa = MoA(["alpha"], "judge", env=moa_env)
    result = asyncio.run(moa.arun("Weather in Oslo?", tools=[WEATHER]))
    assert moa.last_recording is not None and moa.last_recording.written is not None
    turn_id = moa.last_recording.written.result(timeout=10)
    shown = cli(["logs", "show", str(turn_id), "--json"])
    assert shown.returncode == 0, shown.stderr
    stored = json.loads(shown.stdout)
    assert stored["tool_calls"] == [c.to_dict() for c in result.tool_calls]
    assert stored["tool_calls"][0]["function"]["arguments"] == '{"city": "Oslo"}'
    aggregator = [c["tool_calls"] for c in stored["calls"] if c["role"] == "aggregator"]
    assert [[c["function"]["arguments"] for c in calls] for calls in aggregator] == [
        ["{city: Oslo"],
        ['{"city": "Oslo"}'],
    ]
    text = cli(["logs", "show", str(turn_id)])
    assert "**Tool call** `get_weather` (c2):" in text.stdout and '{"city": "Oslo"}' in text.stdout


def test_arun_with_a_schema_validates_and_repairs_once(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    llm_server.script("judge", Reply(text='{"name": "Ada", "age": "old"}'), Reply(text='{"name": "Ada", "age": 36}'))
    moa = MoA(["alpha", "beta"], "judge", env=moa_env)
    deltas: list[str] = []
    events: list[Any] = []

    def sink(event: Any) -> None:
        events.append(event)
        _answer(event, deltas)

    result = asyncio.run(moa.arun("A person?", response_format=fmt, on_event=sink))
    assert json.loads(result.answer) == {"name": "Ada", "age": 36}
    assert deltas == [result.answer]  # the rejected JSON never went out
    assert any(w.startswith("repaired: the answer does not match the schema at /age") for w in result.warnings)
    assert len(llm_server.requests_for("alpha")) == 1 and len(llm_server.requests_for("judge")) == 2
    assert moa.last_recording is not None  # the log keeps both aggregator calls
    assert sorted((c.slot, c.text) for c in moa.last_recording.calls.values() if c.role == "aggregator") == [
        (0, '{"name": "Ada", "age": "old"}'),
        (1, '{"name": "Ada", "age": 36}'),
    ]
    assert [e.result.answer for e in events if e.type == "turn_done"] == [result.answer]

    llm_server.script("judge", Reply(text="no"), Reply(text="[]"))
    with pytest.raises(InvalidOutput, match=r"\[\] is not of type 'object' \(after one repair round\)"):
        asyncio.run(moa.arun("A person?", response_format=fmt))
    with pytest.raises(ConfigError, match="not valid JSON Schema"):
        asyncio.run(
            moa.arun("x", response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": 1}}})
        )
    with pytest.raises(ConfigError, match="local"):
        asyncio.run(MoA(["alpha"], "local:smollm2", env=moa_env).arun("x", tools=[WEATHER]))


def _answer(event: Any, into: list[str]) -> None:
    if event.type == "answer_delta":
        into.append(event.text)


def test_aaggregate_with_a_schema_repairs_over_the_given_proposals(
    moa_env: dict[str, str], llm_server: FakeLLMServer
) -> None:
    """An agent's aggregation over kept proposals (what `moa serve` does on a retry): the
    aggregator alone, checked and repaired once, with the same proposals; no reference is called."""
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    moa = MoA(["alpha", "beta"], "judge", env=moa_env)
    ada = Reply(text='{"name": "Ada", "age": 36}')
    llm_server.script("judge", ada, Reply(text="Ada, 36"), ada)
    made = asyncio.run(moa.arun("A person?", response_format=fmt))
    result = asyncio.run(moa.aaggregate("A person?", made.proposals, response_format=fmt))
    assert json.loads(result.answer) == {"name": "Ada", "age": 36}
    assert any(w.startswith("repaired: ") for w in result.warnings)
    assert [len(llm_server.requests_for(m)) for m in ("alpha", "beta", "judge")] == [1, 1, 3]
    first, repair = (r.body for r in llm_server.requests_for("judge")[1:])
    assert first["response_format"]["type"] == repair["response_format"]["type"] == "json_schema"
    assert "Answer from alpha." in json.dumps(first["messages"])  # the given proposals were read


def test_the_conversation_as_the_references_read_it() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    text = conversation_as_text(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "-3 C"},
            {"role": "tool", "tool_call_id": "c1", "content": "snow"},
        ],
        "TOOLS",
    )
    assert text == [
        {"role": "system", "content": "Be brief.\n\nTOOLS"},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": '[called the tool get_weather with arguments {"city": "Oslo"} (call id c1)]',
        },
        {
            "role": "user",
            "content": "[result of get_weather (call id c1)]\n-3 C\n\n[result of get_weather (call id c1)]\nsnow",
        },
    ]


def test_the_format_checks() -> None:
    fmt = check_response_format({"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON, "strict": True}})
    assert fmt is not None and check_answer('{"name": "A", "age": 1}', fmt) == ('{"name": "A", "age": 1}', None)
    assert check_answer('{"name": "A"}', fmt)[1] == "the answer does not match the schema: 'age' is a required property"
    assert check_response_format({"type": "text"}) is None
    assert check_answer("[1]", {"type": "json_object"})[1] == "the answer is not a JSON object"
    for bad in ({"type": "yaml"}, {"type": "json_schema"}, {"type": "json_schema", "json_schema": {"name": "a b"}}):
        with pytest.raises(ValueError):
            check_response_format(bad)


def test_moa_ask_schema_prints_the_json(cli: Any, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    llm_server.script("fake-agg", Reply(text='{"name": "Ada", "age": 36}'))
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON))
    proc = cli(["ask", "-q", "-r", "alpha", "-a", "fake-agg", "--schema", str(schema), "Invent a person"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"name": "Ada", "age": 36}
    sent = llm_server.requests_for("fake-agg")[0].body["response_format"]
    assert sent == {"type": "json_schema", "json_schema": {"name": "schema", "schema": PERSON}}

    llm_server.script("fake-agg", Reply(text='{"a": 1}'))
    inline = cli(["ask", "-q", "-r", "alpha", "-a", "fake-agg", "--schema", '{"type": "object"}', "--json", "Hi"])
    assert inline.returncode == 0, inline.stderr
    assert json.loads(json.loads(inline.stdout)["answer"]) == {"a": 1}

    llm_server.script("fake-agg", Reply(text="Ada, 36"), Reply(text='{"name": "Ada"}'))
    failed = cli(["ask", "-q", "-r", "alpha", "-a", "fake-agg", "--schema", str(schema), "Invent a person"])
    assert failed.returncode == 1 and failed.stdout == ""
    assert "'age' is a required property (after one repair round)" in failed.stderr
    llm_server.assert_complete()


@pytest.mark.parametrize(
    ("schema", "needle"),
    [
        ('{"type": 3}', "not valid JSON Schema"),
        ("{not json", "not valid JSON"),
        ("no-such-file.json", "neither a JSON Schema object nor a file"),
    ],
)
def test_moa_ask_schema_refuses_a_bad_schema(cli: Any, llm_server: FakeLLMServer, schema: str, needle: str) -> None:
    proc = cli(["ask", "-r", "alpha", "-a", "fake-agg", "--schema", schema, "Hi"])
    assert proc.returncode == 2 and needle in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert llm_server.requests == []


def test_moa_ask_schema_offline_holds_the_local_model_to_the_schema(cli: Any, llm_server: FakeLLMServer) -> None:
    """The embedded model as aggregator: a grammar built from the schema binds its sampling, so
    even a 135M model writes JSON that validates; a fake reference reads the question as text."""
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    proc = cli(
        ["ask", "-q", "-r", "alpha", "-a", "local:smollm2", "--schema", json.dumps(schema), "Invent a person"],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    person = json.loads(proc.stdout)
    assert set(person) == {"name", "age"} and isinstance(person["age"], int) and len(person["name"]) <= 12
    assert len(llm_server.requests_for("alpha")) == 1  # the reference stays a hosted one: no format sent
    assert "response_format" not in llm_server.requests_for("alpha")[0].body


def test_a_schema_a_local_aggregator_cannot_hold_is_exit_2_before_any_call(cli: Any, llm_server: FakeLLMServer) -> None:
    pytest.importorskip("llama_cpp")
    remote = '{"type": "object", "properties": {"a": {"$ref": "https://example.com/x.json"}}}'
    proc = cli(["ask", "-r", "alpha", "-a", "local:smollm2", "--schema", remote, "Hi"])
    assert proc.returncode == 2, proc.stderr
    assert "cannot be turned into a grammar for a local model" in proc.stderr and "--allow-fetch" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and llm_server.requests == []


def test_grammars_for_local_models() -> None:
    pytest.importorskip("llama_cpp")
    from moa_cli.providers.local import grammar_for

    assert grammar_for(None) is None and grammar_for({"type": "text"}) is None
    assert "root" in (grammar_for({"type": "json_object"}) or "")
    person = grammar_for({"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}) or ""
    assert '"\\"age\\""' in person and "root ::=" in person
    with pytest.raises(ValueError, match="cannot be turned into a grammar"):
        grammar_for(
            {"type": "json_schema", "json_schema": {"name": "p", "schema": {"$ref": "https://example.com/s.json"}}}
        )


def test_an_openai_compatible_aggregator_gets_the_tools_and_format(
    moa_env: dict[str, str], llm_server: FakeLLMServer, moa_home: Path
) -> None:
    """The same through the `openai` SDK (an OpenAI-compatible provider), not only together's."""
    (moa_home / "config.toml").write_text(
        f'[providers.alt]\nkind = "openai"\nbase_url = "{llm_server.openai_base_url}"\n'
    )
    llm_server.script("judge", Reply(tool_calls=[{"id": "c1", "name": "get_weather", "arguments": '{"city": "Oslo"}'}]))
    llm_server.script("judge", Reply(text='{"name": "Ada", "age": 36}'))
    moa = MoA(["alpha"], "alt:judge", env=moa_env)
    called = asyncio.run(moa.arun("Weather in Oslo?", tools=[WEATHER]))
    assert [c.name for c in called.tool_calls] == ["get_weather"] and called.finish_reason == "tool_calls"
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    person = asyncio.run(moa.arun("A person?", response_format=fmt))
    assert json.loads(person.answer) == {"name": "Ada", "age": 36}
    first, second = (r.body for r in llm_server.requests_for("judge"))
    assert first["tools"] == [WEATHER] and "response_format" not in first
    assert second["response_format"] == fmt and "tools" not in second
    assert all(r.path == "/v1/chat/completions" for r in llm_server.requests)
