"""Tool calls and structured output through `moa serve`: the real server, the official `openai`
client, the fake upstream. The references advise in prose; the aggregator alone calls tools."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.llm_server import ARGUMENT_PIECE, FakeLLMServer, Reply
from tests.test_serve_openai import HI, serve  # noqa: F401  (the fixture)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather now in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
PARIS = '{"city": "Paris"}'
CALL = Reply(tool_calls=[{"id": "call_up_1", "name": "get_weather", "arguments": PARIS}])


def _body(llm_server: FakeLLMServer, model: str, n: int = 0) -> dict[str, Any]:
    return llm_server.requests_for(model)[n].body


def test_a_tool_call_and_the_round_trip_with_the_openai_client(serve, llm_server: FakeLLMServer) -> None:
    llm_server.script("judge", CALL, Reply(text="It is 21 °C and sunny in Paris."))
    client = serve().client(max_retries=0)
    first = client.chat.completions.create(
        model="moa",
        messages=ASK,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="auto",
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    # The references saw the tools as text and no `tools`; the aggregator got the real ones.
    for model in ("alpha", "beta"):
        body = _body(llm_server, model)
        assert "tools" not in body and "get_weather" in body["messages"][0]["content"]
    judge = _body(llm_server, "judge")
    assert judge["tools"] == [WEATHER] and judge["tool_choice"] == "auto"
    assert "Answer from alpha." in judge["messages"][0]["content"]
    assert "Do not write a tool call yourself" not in judge["messages"][0]["content"]

    history = [
        *ASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21, "sky": "sunny"}'},
    ]
    second = client.chat.completions.create(model="moa", messages=history, tools=[WEATHER])  # type: ignore[arg-type, list-item]
    assert second.choices[0].message.content == "It is 21 °C and sunny in Paris."
    assert second.choices[0].finish_reason == "stop" and not second.choices[0].message.tool_calls
    # The references read the call and its result as text; the aggregator the real messages.
    alpha = llm_server.requests_for("alpha")[1].messages
    assert [m["role"] for m in alpha] == ["system", "user", "assistant", "user"]
    assert "get_weather" in alpha[2]["content"] and '"temp_c": 21' in alpha[3]["content"]
    judge = llm_server.requests_for("judge")[1].messages
    assert [m["role"] for m in judge] == ["system", "user", "assistant", "tool"]
    assert judge[2]["tool_calls"][0]["id"] == call.id and judge[3]["tool_call_id"] == call.id
    llm_server.assert_complete()


def test_a_streamed_tool_call_comes_as_openai_streams_it(serve, llm_server: FakeLLMServer) -> None:
    arguments = '{"city": "Paris", "units": "metric", "detail": "full"}'
    llm_server.script("judge", Reply(tool_calls=[{"name": "get_weather", "arguments": arguments}]))
    client = serve().client(max_retries=0)
    stream = client.chat.completions.create(
        model="moa",
        messages=ASK,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        stream=True,
    )
    pieces: list[Any] = []
    finish = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.tool_calls:
            pieces += chunk.choices[0].delta.tool_calls
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert finish == "tool_calls"
    assert pieces[0].index == 0 and pieces[0].id and pieces[0].function.name == "get_weather"
    assert len(pieces) > 2 and all(p.index == 0 and p.id is None for p in pieces[1:])  # arguments in pieces
    assert "".join(p.function.arguments or "" for p in pieces) == arguments

    # The same through the client's own accumulator.
    llm_server.script("judge", Reply(tool_calls=[{"name": "get_weather", "arguments": arguments}]))
    with client.chat.completions.stream(model="moa", messages=ASK, tools=[WEATHER]) as helper:  # type: ignore[arg-type, list-item]
        final = helper.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    assert call.function.arguments == arguments and final.choices[0].finish_reason == "tool_calls"  # type: ignore[union-attr]
    assert len(arguments) > ARGUMENT_PIECE  # the upstream streamed it in pieces too


def test_bad_tool_arguments_get_one_repair_round_then_a_502(serve, llm_server: FakeLLMServer) -> None:
    bad = Reply(tool_calls=[{"name": "get_weather", "arguments": '{"city": "Paris"'}])
    llm_server.script("judge", bad, CALL)
    client = serve().client(max_retries=0)
    repaired = client.chat.completions.create(model="moa", messages=ASK, tools=[WEATHER])  # type: ignore[arg-type, list-item]
    (call,) = repaired.choices[0].message.tool_calls or []
    assert call.function.arguments == PARIS  # type: ignore[union-attr]
    fix = llm_server.requests_for("judge")[1].messages
    assert fix[-1]["role"] == "user" and "not valid JSON" in fix[-1]["content"]
    assert len(llm_server.requests_for("alpha")) == 1  # the repair is the aggregator's alone

    llm_server.script("judge", bad, Reply(tool_calls=[{"name": "get_time", "arguments": "{}"}]))
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="moa", messages=ASK, tools=[WEATHER])  # type: ignore[arg-type, list-item]
    assert failed.value.status_code == 502
    error: Any = failed.value.body
    assert error["code"] == "invalid_tool_call" and "'get_time'" in error["message"]
    assert "after one repair round" in error["message"]
    llm_server.assert_complete()


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}


def test_json_schema_output_validates_and_an_invalid_one_is_a_502(serve, llm_server: FakeLLMServer) -> None:
    import jsonschema

    llm_server.script("judge", Reply(text='{"name": "Ada", "age": 36}'))
    client = serve().client(max_retries=0)
    answer = client.chat.completions.create(model="moa", messages=HI, response_format=SCHEMA_FORMAT)  # type: ignore[arg-type]
    value = json.loads(answer.choices[0].message.content or "")
    jsonschema.validate(value, PERSON)
    assert _body(llm_server, "judge")["response_format"] == SCHEMA_FORMAT
    assert "response_format" not in _body(llm_server, "alpha")

    # Streamed: the JSON comes once it is checked; a fenced answer is unwrapped.
    llm_server.script("judge", Reply(text='```json\n{"name": "Bo", "age": 7}\n```'))
    stream = client.chat.completions.create(
        model="moa",
        messages=HI,  # type: ignore[arg-type]
        response_format=SCHEMA_FORMAT,  # type: ignore[arg-type]
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert json.loads(text) == {"name": "Bo", "age": 7}

    # Invalid, then repaired.
    llm_server.script("judge", Reply(text='{"name": "Ada"}'), Reply(text='{"name": "Ada", "age": 36}'))
    repaired = client.chat.completions.create(model="moa", messages=HI, response_format=SCHEMA_FORMAT)  # type: ignore[arg-type]
    assert json.loads(repaired.choices[0].message.content or "") == {"name": "Ada", "age": 36}
    assert "'age' is a required property" in llm_server.requests_for("judge")[-1].messages[-1]["content"]

    # Invalid twice: the documented 502 with the validation error.
    llm_server.script("judge", Reply(text='{"name": "Ada", "age": -1}'), Reply(text="Ada is 36."))
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="moa", messages=HI, response_format=SCHEMA_FORMAT)  # type: ignore[arg-type]
    assert failed.value.status_code == 502
    error: Any = failed.value.body
    assert error["code"] == "invalid_json_output" and "not valid JSON" in error["message"]
    llm_server.assert_complete()


def test_json_object_and_the_refusals(serve, llm_server: FakeLLMServer) -> None:
    llm_server.script("judge", Reply(text='{"ok": true}'))
    served = serve()
    client = served.client(max_retries=0)
    answer = client.chat.completions.create(
        model="moa",
        messages=HI,  # type: ignore[arg-type]
        response_format={"type": "json_object"},
    )
    assert json.loads(answer.choices[0].message.content or "") == {"ok": True}
    with pytest.raises(openai.BadRequestError, match="not valid JSON Schema"):
        bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}
        client.chat.completions.create(model="moa", messages=HI, response_format=bad)  # type: ignore[arg-type]
    stored = httpx.post(served.base_url + "/responses", json={"model": "moa", "input": "hi", "previous_response_id": "r1"}, timeout=10)  # fmt: skip
    assert stored.status_code == 400 and "send the whole conversation" in stored.json()["error"]["message"]
    hosted = httpx.post(served.base_url + "/responses", json={"model": "moa", "input": "hi", "tools": [{"type": "web_search"}]}, timeout=10)  # fmt: skip
    assert hosted.status_code == 400 and hosted.json()["error"]["param"] == "tools[0]"
    assert len(llm_server.requests) == 3  # only the first request reached the upstream


def test_the_responses_api_with_the_openai_client(serve, llm_server: FakeLLMServer) -> None:
    """`client.responses.create`: text, a function call and its output, a schema, streamed and not."""
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"], "strict": False}  # type: ignore[index]
    llm_server.script("judge", CALL, Reply(text="Sunny, 21 C."), Reply(text='{"name": "Ada", "age": 36}'))
    client = serve().client(max_retries=0)
    first = client.responses.create(model="moa", instructions="Be brief.", input=ASK[0]["content"], tools=[tool])  # type: ignore[list-item]
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == PARIS
    assert first.status == "completed" and first.usage is not None and first.usage.total_tokens > 0
    judge = _body(llm_server, "judge")
    assert judge["tools"][0]["function"] == {
        "name": "get_weather",
        "parameters": WEATHER["function"]["parameters"],
        "strict": False,
    }  # type: ignore[index]
    assert judge["messages"][0]["content"].startswith("Be brief.")

    items = [
        {"role": "user", "content": ASK[0]["content"]},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "21 C, sunny"},
    ]
    events = list(client.responses.create(model="moa", input=items, tools=[tool], stream=True))  # type: ignore[arg-type, list-item]
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Sunny, 21 C."  # type: ignore[union-attr]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output_text == "Sunny, 21 C."  # type: ignore[union-attr]
    tool_message = llm_server.requests_for("judge")[1].messages[-1]
    assert tool_message == {"role": "tool", "tool_call_id": call.call_id, "content": "21 C, sunny"}

    fmt = {"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}}
    person = client.responses.create(model="moa", input="A person?", text=fmt)  # type: ignore[arg-type]
    assert json.loads(person.output_text) == {"name": "Ada", "age": 36}
    assert _body(llm_server, "judge", 2)["response_format"]["json_schema"]["schema"] == PERSON

    llm_server.script("judge", Reply(text="Once upon a", finish_reason="length"))
    cut = client.responses.create(model="moa", input="A story?", max_output_tokens=3)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"  # type: ignore[union-attr]
    assert cut.output_text == "Once upon a" and _body(llm_server, "judge", 3)["max_tokens"] == 3
    llm_server.assert_complete()


def test_a_passthrough_model_passes_tools_on(serve, llm_server: FakeLLMServer) -> None:
    llm_server.script("cheap", CALL)
    client = serve("--passthrough", "cheap").client(max_retries=0)
    answer = client.chat.completions.create(model="cheap", messages=ASK, tools=[WEATHER])  # type: ignore[arg-type, list-item]
    assert answer.choices[0].finish_reason == "tool_calls"
    assert (answer.choices[0].message.tool_calls or [])[0].function.arguments == PARIS  # type: ignore[union-attr]
    assert [r.model for r in llm_server.requests] == ["cheap"] and _body(llm_server, "cheap")["tools"] == [WEATHER]


def test_text_then_two_tool_calls_stream_in_order(moa_env: dict[str, str], llm_server: FakeLLMServer) -> None:
    """In-process: the text streams first, then each call (index 0, 1) with its pieces, then the finish."""
    from tests.test_serve import call, events

    two = [{"id": "a1", "name": "get_weather", "arguments": PARIS}, {"id": "a2", "name": "get_weather", "arguments": '{"city": "Rome"}'}]  # fmt: skip
    llm_server.script("judge", Reply(text="Checking both.", tool_calls=two))
    body = {"model": "moa", "messages": ASK, "tools": [WEATHER], "stream": True}
    (response,) = call(moa_env, ("POST", "/v1/chat/completions", body))
    chunks = [e for e in events(response) if isinstance(e, dict)]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    text = "".join(d.get("content") or "" for d in deltas)
    assert text == "Checking both."
    calls = [t for d in deltas for t in d.get("tool_calls", [])]
    last_text = max(i for i, d in enumerate(deltas) if d.get("content"))
    first_call = min(i for i, d in enumerate(deltas) if d.get("tool_calls"))
    assert last_text < first_call
    heads = [t for t in calls if "id" in t]
    assert [(t["index"], t["id"], t["function"]["name"]) for t in heads] == [
        (0, "a1", "get_weather"),
        (1, "a2", "get_weather"),
    ]
    for index, arguments in ((0, PARIS), (1, '{"city": "Rome"}')):
        assert "".join(t["function"]["arguments"] for t in calls if t["index"] == index) == arguments
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert events(response)[-1] == "[DONE]"
