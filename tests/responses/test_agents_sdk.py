"""The OpenAI Agents SDK on infermesh: its default model speaks the Responses API, and
runs a function tool through the gateway (the scripted engine calls the tool, then
answers with what the tool said)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from tests.fakes.engine import ScriptedEngine
from tests.responses.conftest import ENGINE_KEY, scripted_specs
from tests.support.gateway import RunningGateway, start_gateway

agents = pytest.importorskip("agents")


@pytest.fixture(scope="module")
def gateway(
    engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    with start_gateway(
        tmp_path_factory.mktemp("agents-gateway"),
        specs=scripted_specs(engine.base_url),
        secrets={"SCRIPTED_ENGINE_KEY": ENGINE_KEY},
        wait_for=["scripted"],
    ) as running:
        yield running


@pytest.fixture
async def sent(gateway: RunningGateway) -> AsyncIterator[list[dict[str, Any]]]:
    """The bodies the Agents SDK posts to ``/v1/responses`` (its default client is
    pointed at the gateway for the test)."""
    bodies: list[dict[str, Any]] = []

    async def keep(request: httpx.Request) -> None:
        if request.url.path.endswith("/responses"):
            bodies.append(json.loads(request.content))

    http_client = httpx.AsyncClient(event_hooks={"request": [keep]}, timeout=60)
    client = AsyncOpenAI(
        base_url=gateway.api_url, api_key=gateway.key, http_client=http_client, max_retries=0
    )
    agents.set_tracing_disabled(True)
    agents.set_default_openai_client(client, use_for_tracing=False)
    agents.set_default_openai_api("responses")
    try:
        yield bodies
    finally:
        await client.close()


def weather_agent(settings: Any = None) -> Any:
    @agents.function_tool
    def lookup(echo: str) -> str:
        """Look a place up."""
        return f"looked up {echo}"

    return agents.Agent(
        name="Weather",
        instructions="Use the lookup tool.",
        model="scripted",
        tools=[lookup],
        model_settings=settings or agents.ModelSettings(),
    )


def check_what_the_sdk_sent(bodies: list[dict[str, Any]]) -> None:
    first, second = bodies
    assert first["model"] == "scripted"
    assert first["instructions"] == "Use the lookup tool."
    assert first["tools"][0]["type"] == "function" and first["tools"][0]["name"] == "lookup"
    assert first.get("include") in (None, [])
    types = [item.get("type", "message") for item in second["input"]]
    assert types == ["message", "function_call", "function_call_output"]


async def test_an_agent_runs_a_function_tool(
    sent: list[dict[str, Any]], engine: ScriptedEngine
) -> None:
    result = await agents.Runner.run(weather_agent(), "Paris")
    assert result.final_output == "tool said: looked up Paris"
    check_what_the_sdk_sent(sent)
    messages = engine.requests[-1]["messages"]
    assert messages[0] == {"role": "system", "content": "Use the lookup tool."}
    assert messages[-1]["role"] == "tool"
    assert messages[-2]["tool_calls"][0]["function"]["name"] == "lookup"


async def test_a_streamed_agent_run_uses_the_stream_events(sent: list[dict[str, Any]]) -> None:
    result = agents.Runner.run_streamed(weather_agent(), "Rome")
    kinds = [event.type async for event in result.stream_events()]
    assert result.final_output == "tool said: looked up Rome"
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    check_what_the_sdk_sent(sent)
    assert all(body["stream"] is True for body in sent)


async def test_model_settings_that_infermesh_honours_or_finds_neutral_are_accepted(
    sent: list[dict[str, Any]], engine: ScriptedEngine
) -> None:
    settings = agents.ModelSettings(
        temperature=0.2,
        top_p=0.9,
        max_tokens=64,
        parallel_tool_calls=True,
        truncation="auto",
        store=True,
        metadata={"run": "7"},
        response_include=["reasoning.encrypted_content"],
    )
    result = await agents.Runner.run(weather_agent(settings), "Kyiv")
    assert result.final_output == "tool said: looked up Kyiv"
    first = sent[0]
    assert (first["store"], first["truncation"], first["max_output_tokens"]) == (True, "auto", 64)
    assert first["include"] == ["reasoning.encrypted_content"]
    assert engine.requests[-1]["temperature"] == 0.2
    assert engine.requests[-1]["parallel_tool_calls"] is True
    assert result.raw_responses[0].usage.output_tokens > 0
