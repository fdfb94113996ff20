"""``POST /v1/responses`` on the other kinds of worker: a remote ``infermesh worker``
process (on the scripted engine, over the WebSocket) and the in-process tiny model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infermesh.catalog.spec import ModelSpec
from infermesh.catalog.store import default_models
from infermesh.protocol.models import Capabilities
from tests.fakes.engine import ScriptedEngine, run_engine
from tests.mesh.helpers import WorkerProcess, model_available, openai_worker, run_worker
from tests.support.gateway import RunningGateway, start_gateway
from tests.support.waiting import wait_until

TOOL = {
    "type": "function",
    "name": "lookup",
    "parameters": {"type": "object", "properties": {"echo": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def engine() -> Iterator[ScriptedEngine]:
    with run_engine(models=["scripted-1"]) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """The tiny model in process, and ``scripted`` for remote workers only."""
    remote = ModelSpec(id="scripted", tier="frontier", capabilities=Capabilities(tools=True))
    with start_gateway(
        tmp_path_factory.mktemp("responses-workers"),
        specs=[*default_models(), remote],
        wait_for=["infermesh-tiny"],
    ) as running:
        yield running


@pytest.fixture(scope="module")
def remote_worker(
    gateway: RunningGateway, engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    data_dir: Path = tmp_path_factory.mktemp("remote-worker")
    with run_worker(gateway, *openai_worker(engine, "scripted"), data_dir=data_dir) as worker:
        wait_until(lambda: model_available(gateway, "scripted"), what="the remote worker")
        yield worker


def test_a_tool_round_trip_through_a_remote_worker(
    gateway: RunningGateway, remote_worker: WorkerProcess, engine: ScriptedEngine
) -> None:
    client = gateway.client()
    raw = client.responses.with_raw_response.create(model="scripted", input="Lima", tools=[TOOL])
    assert raw.headers["x-infermesh-node-id"] == remote_worker.node_id
    [call] = raw.parse().output
    assert call.type == "function_call" and json.loads(call.arguments) == {"echo": "Lima"}
    history: list[Any] = [
        {"role": "user", "content": "Lima"},
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "warm"},
    ]
    with client.responses.stream(model="scripted", input=history, tools=[TOOL]) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "tool said: warm"
    assert final.usage is not None and final.usage.output_tokens == 3
    assert engine.requests[-1]["messages"][-1]["tool_call_id"] == call.call_id


def test_the_tiny_model_answers_whole_and_streamed_alike(gateway: RunningGateway) -> None:
    client = gateway.client()
    options: dict[str, Any] = {
        "model": "infermesh-tiny",
        "input": "Hello, who are you?",
        "max_output_tokens": 8,
        "temperature": 0,
    }
    whole = client.responses.create(**options)
    assert whole.status in {"completed", "incomplete"} and whole.output_text
    assert whole.usage is not None and 1 <= whole.usage.output_tokens <= 8
    events = list(client.responses.create(**options, stream=True))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    last = events[-1]
    assert last.type in {"response.completed", "response.incomplete"}
    assert "".join(deltas) == last.response.output_text == whole.output_text
    assert last.response.status == whole.status
