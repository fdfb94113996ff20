"""``POST /v1/responses`` through a real gateway to the scripted engine, called with the
official openai SDK: plain, streamed, function tools, settings that reach the engine."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes.engine import ScriptedEngine
from tests.responses.conftest import ENGINE_KEY, scripted_specs
from tests.support.gateway import RunningGateway, start_gateway

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
PNG_1PX = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]
CALL_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.fixture(scope="module")
def gateway(
    engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    with start_gateway(
        tmp_path_factory.mktemp("responses-gateway"),
        specs=scripted_specs(engine.base_url),
        secrets={"SCRIPTED_ENGINE_KEY": ENGINE_KEY},
        wait_for=["scripted", "scripted-plain"],
    ) as running:
        yield running


def distinct(types: list[str]) -> list[str]:
    """``types`` with runs of the same type (the deltas) as one."""
    return [kind for index, kind in enumerate(types) if index == 0 or types[index - 1] != kind]


def test_a_plain_response_has_openai_shape_usage_and_cost(gateway: RunningGateway) -> None:
    raw = gateway.client().responses.with_raw_response.create(
        model="scripted", input="hello there", metadata={"ticket": "42"}
    )
    assert raw.headers["x-request-id"]
    assert raw.headers["x-infermesh-node-id"] == "local"
    assert raw.headers["x-infermesh-cost-micro-usd"] == str(100 + 2 * 1 + 3 * 2)
    response = raw.parse()
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.model == "scripted"
    assert response.output_text == "echo: hello there"
    [message] = response.output
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.status == "completed"
    assert message.content[0].type == "output_text"
    assert message.content[0].annotations == []
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (2, 3)
    assert response.usage.total_tokens == 5
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    extra = response.usage.model_extra or {}
    assert extra["cost_micro_usd"] == 108
    assert extra["cost"] == pytest.approx(0.000108)
    assert response.metadata == {"ticket": "42"}
    assert response.store is False
    assert response.previous_response_id is None
    assert response.error is None and response.incomplete_details is None
    assert response.tools == [] and response.tool_choice == "auto"
    assert response.completed_at is not None and response.completed_at >= response.created_at


def test_instructions_settings_and_json_schema_reach_the_engine(
    gateway: RunningGateway, engine: ScriptedEngine
) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    text_format = {
        "type": "json_schema",
        "name": "reply",
        "schema": schema,
        "strict": True,
        "description": "the reply",
    }
    response = gateway.client().responses.create(
        model="scripted",
        instructions="Answer in JSON.",
        input="what now",
        temperature=0.3,
        top_p=0.9,
        max_output_tokens=50,
        user="user-7",
        text={"format": text_format},  # type: ignore[typeddict-item]
        store=True,
        extra_body={"seed": 7, "top_k": 20},
    )
    sent = engine.requests[-1]
    assert sent["messages"] == [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "what now"},
    ]
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {
            "name": "reply",
            "schema": schema,
            "strict": True,
            "description": "the reply",
        },
    }
    assert (sent["temperature"], sent["top_p"], sent["user"]) == (0.3, 0.9, "user-7")
    assert sent["max_completion_tokens"] == 50 or sent.get("max_tokens") == 50
    assert (sent["seed"], sent["top_k"]) == (7, 20)
    assert response.instructions == "Answer in JSON."
    assert (response.temperature, response.top_p, response.max_output_tokens) == (0.3, 0.9, 50)
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"
    assert response.store is False  # accepted, but nothing is stored (the object says so)


def test_a_streamed_response_sends_the_event_sequence(gateway: RunningGateway) -> None:
    events = list(
        gateway.client().responses.create(model="scripted", input="one two three", stream=True)
    )
    types = [event.type for event in events]
    assert distinct(types) == TEXT_EVENTS
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) == 4  # "echo:", " one", " two", " three"
    assert all((d.output_index, d.content_index, d.logprobs) == (0, 0, []) for d in deltas)
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.output_text == "".join(d.delta for d in deltas) == "echo: one two three"
    assert final.response.usage is not None and final.response.usage.output_tokens == 4
    assert (final.response.usage.model_extra or {})["cost_micro_usd"] > 0
    created = events[0]
    assert created.type == "response.created" and created.response.status == "in_progress"
    assert created.response.id == final.response.id


def test_the_sdk_stream_helper_accepts_the_stream(gateway: RunningGateway) -> None:
    """``responses.stream`` checks the events' identities and order, and builds the
    final response from them."""
    with gateway.client().responses.stream(model="scripted", input="stream me") as stream:
        texts = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == final.output_text == "echo: stream me"


def test_a_function_tool_round_trip(gateway: RunningGateway, engine: ScriptedEngine) -> None:
    client = gateway.client()
    first = client.responses.create(
        model="scripted", input="Paris", tools=[WEATHER], tool_choice="auto"
    )
    [call] = first.output
    assert call.type == "function_call"
    assert call.name == "get_weather" and json.loads(call.arguments) == {"echo": "Paris"}
    assert call.call_id and call.id is not None and call.id.startswith("fc_")
    assert call.status == "completed"
    assert engine.requests[-1]["tools"][0]["function"]["name"] == "get_weather"
    assert engine.requests[-1]["tools"][0]["function"]["strict"] is True
    history: list[Any] = [
        {"role": "user", "content": "Paris"},
        *first.output,  # the SDK's own objects, as OpenAI's guide sends them back
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ]
    second = client.responses.create(model="scripted", input=history, tools=[WEATHER])
    assert second.output_text == "tool said: sunny"
    sent = engine.requests[-1]["messages"]
    assert sent[1]["role"] == "assistant"
    assert sent[1]["tool_calls"][0]["id"] == call.call_id
    assert sent[1]["tool_calls"][0]["type"] == "function"
    assert sent[2] == {"role": "tool", "content": "sunny", "tool_call_id": call.call_id}


def test_a_streamed_function_tool_round_trip(gateway: RunningGateway) -> None:
    client = gateway.client()
    events = list(
        client.responses.create(model="scripted", input="Oslo", tools=[WEATHER], stream=True)
    )
    assert distinct([event.type for event in events]) == CALL_EVENTS
    added = events[2]
    assert added.type == "response.output_item.added" and added.item.type == "function_call"
    assert added.item.name == "get_weather" and added.item.arguments == ""
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments) == {"echo": "Oslo"}
    final = events[-1]
    assert final.type == "response.completed"
    [call] = final.response.output
    assert call.type == "function_call" and call.call_id == added.item.call_id
    assert call.arguments == done.arguments
    history: list[Any] = [
        {"role": "user", "content": "Oslo"},
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "rain"},
    ]
    with client.responses.stream(model="scripted", input=history, tools=[WEATHER]) as stream:
        answer = stream.get_final_response()
    assert answer.output_text == "tool said: rain"


def test_a_cut_answer_is_incomplete(gateway: RunningGateway) -> None:
    client = gateway.client()
    response = client.responses.create(model="scripted", input="a b c d e f", max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    events = list(
        client.responses.create(
            model="scripted", input="a b c d e f", max_output_tokens=2, stream=True
        )
    )
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.output[0].status == "incomplete"


def test_images_history_and_roles_reach_the_engine(
    gateway: RunningGateway, engine: ScriptedEngine
) -> None:
    image = {"type": "input_image", "image_url": f"data:image/png;base64,{PNG_1PX}"}
    response = gateway.client().responses.create(
        model="scripted",
        input=[
            {"role": "developer", "content": "Be kind."},
            {"role": "user", "content": "hi"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "hello", "annotations": []}],
            },
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "look"}, {**image, "detail": "low"}],
            },
        ],
    )
    assert response.output_text == "saw 1 image(s)"
    sent = engine.requests[-1]["messages"]
    assert [message["role"] for message in sent] == ["developer", "user", "assistant", "user"]
    assert sent[2]["content"] == "hello"
    assert sent[3]["content"][0] == {"type": "text", "text": "look"}
    assert sent[3]["content"][1]["image_url"]["detail"] == "low"


def test_the_usage_record_says_responses(gateway: RunningGateway) -> None:
    response = gateway.client().responses.create(model="scripted", input="count me")
    with gateway.http() as http:
        page = http.get("/v1/usage", headers=gateway.auth()).json()
    record = next(r for r in page["data"] if r["id"].endswith(response.id.removeprefix("resp_")))
    assert record["endpoint"] == "responses"
    assert record["status"] == "succeeded"
    assert record["completion_tokens"] == response.usage.output_tokens  # type: ignore[union-attr]
