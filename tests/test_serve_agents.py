"""moa behind an agent: openai-agents and pydantic-ai run an agent with one tool to completion
against a real `moa serve`, the fake upstream behind it. The aggregator (scripted) calls the
tool, the framework runs it, and the aggregator answers from its result."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from openai import AsyncOpenAI

from tests.fakes.llm_server import FakeLLMServer, Reply
from tests.fakes.serve_process import wait_for
from tests.test_serve_openai import serve  # noqa: F401  (the fixture)

CALL = Reply(tool_calls=[{"id": "call_w1", "name": "get_weather", "arguments": '{"city": "Paris"}'}])
DONE = Reply(text="It is 21 C and sunny in Paris.")
QUESTION = "What is the weather in Paris?"


def _tool_result_reached_the_aggregator(llm_server: FakeLLMServer) -> dict[str, Any]:
    """The aggregator's second call: the tool's result as a `tool` message, the tools still offered."""
    calls = llm_server.requests_for("judge")
    assert len(calls) == 2
    second = calls[1].body
    tool = next(m for m in second["messages"] if m["role"] == "tool")
    assert "21 C in Paris" in json.dumps(tool["content"]) and tool["tool_call_id"] == "call_w1"
    assert [t["function"]["name"] for t in second["tools"]] == ["get_weather"]
    # the references read the same result as text
    assert "21 C in Paris" in json.dumps(llm_server.requests_for("alpha")[1].messages)
    return second


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
def test_openai_agents_runs_an_agent_with_a_tool(serve, llm_server: FakeLLMServer, streamed: bool, api: str) -> None:
    """The SDK's default model speaks the Responses API; OpenAIChatCompletionsModel chat completions."""
    agents = pytest.importorskip("agents")

    agents.set_tracing_disabled(True)
    llm_server.script("judge", CALL, DONE)
    served = serve()
    seen: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather now in a city."""
        seen.append(city)
        return f"21 C in {city}, sunny"

    async def run() -> Any:
        client = AsyncOpenAI(base_url=served.base_url, api_key="none", max_retries=0)
        try:
            kind = agents.OpenAIResponsesModel if api == "responses" else agents.OpenAIChatCompletionsModel
            model = kind(model="moa", openai_client=client)
            agent = agents.Agent(
                name="weather", instructions="Answer weather questions.", tools=[get_weather], model=model
            )
            if not streamed:
                return await agents.Runner.run(agent, QUESTION)
            result = agents.Runner.run_streamed(agent, QUESTION)
            async for _ in result.stream_events():
                pass
            return result
        finally:
            await client.close()

    result = asyncio.run(run())
    assert seen == ["Paris"]
    assert result.final_output == "It is 21 C and sunny in Paris."
    path = "/v1/responses" if api == "responses" else "/v1/chat/completions"
    assert wait_for(lambda: served.log.count(f"POST {path} 200") == 2), served.log
    assert _tool_result_reached_the_aggregator(llm_server)["messages"][0]["role"] == "system"
    llm_server.assert_complete()


def test_pydantic_ai_runs_an_agent_with_a_tool(serve, llm_server: FakeLLMServer) -> None:
    pydantic_ai = pytest.importorskip("pydantic_ai")
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    llm_server.script("judge", CALL, DONE)
    served = serve()
    seen: list[str] = []

    def get_weather(city: str) -> str:
        """The weather now in a city."""
        seen.append(city)
        return f"21 C in {city}, sunny"

    async def run() -> Any:
        async with AsyncOpenAI(base_url=served.base_url, api_key="none", max_retries=0) as client:
            model = OpenAIChatModel("moa", provider=OpenAIProvider(openai_client=client))
            agent = pydantic_ai.Agent(model, instructions="Answer weather questions.", tools=[get_weather])
            return await agent.run(QUESTION)

    result = asyncio.run(run())
    assert seen == ["Paris"] and result.output == "It is 21 C and sunny in Paris."
    _tool_result_reached_the_aggregator(llm_server)
    llm_server.assert_complete()


def test_pydantic_ai_native_structured_output(serve, llm_server: FakeLLMServer) -> None:
    """pydantic-ai's NativeOutput sends response_format json_schema; moa returns an object that validates."""
    pydantic_ai = pytest.importorskip("pydantic_ai")
    from pydantic import BaseModel
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    class City(BaseModel):
        name: str
        population: int

    llm_server.script("judge", Reply(text='{"name": "Paris", "population": 2100000}'))
    served = serve()

    async def run() -> Any:
        async with AsyncOpenAI(base_url=served.base_url, api_key="none", max_retries=0) as client:
            model = OpenAIChatModel("moa", provider=OpenAIProvider(openai_client=client))
            agent = pydantic_ai.Agent(model, output_type=pydantic_ai.NativeOutput(City))
            return await agent.run("The capital of France and its population?")

    result = asyncio.run(run())
    assert result.output == City(name="Paris", population=2100000)
    assert llm_server.requests_for("judge")[0].body["response_format"]["type"] == "json_schema"
    llm_server.assert_complete()
