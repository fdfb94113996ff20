"""Messages served by the two kinds of worker: a remote ``infermesh worker`` process on
the scripted engine (over the worker WebSocket), and the in-process tiny model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from infermesh.catalog.spec import TINY_MODEL_ID, ModelSpec
from infermesh.catalog.store import default_models
from infermesh.protocol.models import Capabilities
from tests.fakes.engine import ScriptedEngine, run_engine
from tests.mesh.helpers import HEARTBEAT, WorkerProcess, openai_worker, run_worker
from tests.messages.conftest import sdk_client
from tests.messages.samples import WEATHER, engine_body, marker, sse_events, tool_result, user
from tests.support.gateway import RunningGateway, start_gateway, wait_until_available


@pytest.fixture(scope="module")
def engine() -> Iterator[ScriptedEngine]:
    with run_engine(models=["scripted-1"]) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway serving the tiny model itself (built in the background: see ``tiny``)
    and "remote" only through remote workers."""
    tiny = [spec for spec in default_models() if spec.id == TINY_MODEL_ID]
    remote = ModelSpec(id="remote", tier="frontier", capabilities=Capabilities(tools=True))
    with start_gateway(
        tmp_path_factory.mktemp("messages-mesh"), specs=[*tiny, remote], **HEARTBEAT
    ) as running:
        yield running


@pytest.fixture(scope="module")
def tiny(gateway: RunningGateway) -> str:
    """The tiny model's id, once it is available."""
    wait_until_available(gateway.base_url, [TINY_MODEL_ID])
    return TINY_MODEL_ID


@pytest.fixture(scope="module")
def worker(
    gateway: RunningGateway, engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    data_dir: Path = tmp_path_factory.mktemp("messages-worker")
    with run_worker(gateway, *openai_worker(engine, "remote"), data_dir=data_dir) as running:
        yield running


@pytest.fixture(scope="module")
def client(gateway: RunningGateway) -> anthropic.Anthropic:
    return sdk_client(gateway)


def test_a_remote_worker_answers_a_message(
    client: anthropic.Anthropic, worker: WorkerProcess, engine: ScriptedEngine
) -> None:
    word = marker()
    raw = client.messages.with_raw_response.create(
        model="remote", max_tokens=20, system="Be kind.", messages=user(f"{word} hi")
    )
    message = raw.parse()
    assert raw.headers["x-infermesh-node-id"] == worker.node_id
    assert message.content[0].type == "text" and message.content[0].text == f"echo: {word} hi"
    assert message.stop_reason == "end_turn"
    assert engine_body(engine, word)["messages"][0] == {"role": "system", "content": "Be kind."}


def test_a_remote_worker_streams_a_tool_round_trip(
    client: anthropic.Anthropic, worker: WorkerProcess
) -> None:
    with client.messages.stream(
        model="remote", max_tokens=30, tools=[WEATHER], messages=user("Rome")
    ) as stream:
        asked = stream.get_final_message()
        assert stream.response.headers["x-infermesh-node-id"] == worker.node_id
    [call] = asked.content
    assert call.type == "tool_use" and call.input == {"echo": "Rome"}
    assert asked.stop_reason == "tool_use"
    with client.messages.stream(
        model="remote",
        max_tokens=30,
        tools=[WEATHER],
        messages=[
            *user("Rome"),
            {"role": "assistant", "content": asked.content},
            tool_result(call.id, "warm"),
        ],
    ) as stream:
        assert "".join(stream.text_stream) == "tool said: warm"


def test_the_tiny_model_answers_a_message(client: anthropic.Anthropic, tiny: str) -> None:
    message = client.messages.create(model=tiny, max_tokens=8, messages=user("Hello, who are you?"))
    assert message.model == tiny
    assert message.stop_reason in {"end_turn", "max_tokens"}
    assert message.usage.input_tokens > 5 and 1 <= message.usage.output_tokens <= 8
    text = [block for block in message.content if block.type == "text"]
    assert text or message.stop_reason == "end_turn"


def test_the_tiny_model_streams_with_its_prompt_counted_up_front(
    gateway: RunningGateway, tiny: str
) -> None:
    body = {
        "model": tiny,
        "max_tokens": 6,
        "stream": True,
        "temperature": 0,
        "messages": user("Hello, who are you?"),
    }
    with gateway.http() as http:
        response = http.post("/v1/messages", json=body, headers={"x-api-key": gateway.key})
    assert response.status_code == 200, response.text
    events = sse_events(response)
    assert [name for name, _ in events][:2] == ["message_start", "ping"]
    assert [name for name, _ in events][-2:] == ["message_delta", "message_stop"]
    announced = events[0][1]["message"]["usage"]["input_tokens"]
    final = events[-2][1]["usage"]
    assert 0 < final["input_tokens"] <= announced  # the gateway's count bounds the billed one
    assert 1 <= final["output_tokens"] <= 6
