"""``POST /v1/messages`` and ``/v1/messages/count_tokens`` through real HTTP with the
official ``anthropic`` client, on a gateway whose worker calls the scripted engine."""

from __future__ import annotations

import json

import anthropic

from tests.fakes.engine import ScriptedEngine
from tests.messages.samples import (
    PNG,
    WEATHER,
    engine_body,
    marker,
    sse_events,
    user,
)
from tests.support.gateway import RunningGateway


def test_create_answers_a_message(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="scripted", max_tokens=50, messages=user("hello there friend")
    )
    assert message.id.startswith("msg_")
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "scripted"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].type == "text"
    assert message.content[0].text == "echo: hello there friend"
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens == 3 and message.usage.output_tokens == 4


def test_sampling_fields_and_system_reach_the_engine(
    client: anthropic.Anthropic, engine: ScriptedEngine
) -> None:
    word = marker()
    message = client.messages.create(
        model="scripted",
        max_tokens=50,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=user(f"{word} one two STOP three"),
        stop_sequences=["STOP"],
        metadata={"user_id": "user-42"},
        thinking={"type": "disabled"},
        service_tier="auto",
        extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 7},
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == f"echo: {word} one two"
    assert message.stop_reason == "end_turn"  # a chat answer does not say a stop sequence ended it
    sent = engine_body(engine, word)
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["stop"] == ["STOP"]
    assert (sent["temperature"], sent["top_p"], sent["top_k"]) == (0.5, 0.9, 7)
    assert sent["max_tokens"] == 50
    assert sent["user"] == "user-42"


def test_max_tokens_cuts_the_answer(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="scripted", max_tokens=2, messages=user("one two three four")
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 2


def test_stream_helper_collects_text_and_the_final_message(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="scripted", max_tokens=50, messages=user("stream these words please")
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) == 5
    assert "".join(pieces) == "echo: stream these words please"
    assert final.content[0].type == "text" and final.content[0].text == "".join(pieces)
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 4 and final.usage.output_tokens == 5


def test_a_raw_stream_is_anthropics_event_sequence(gateway: RunningGateway) -> None:
    body = {"model": "scripted", "max_tokens": 20, "stream": True, "messages": user("a b")}
    with gateway.http() as http:
        response = http.post(
            "/v1/messages",
            json=body,
            headers={"x-api-key": gateway.key, "anthropic-version": "2023-06-01"},
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["request-id"] == response.headers["x-request-id"]
    events = sse_events(response)
    assert all(name == data["type"] for name, data in events)
    assert [name for name, _ in events] == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["output_tokens"] == 0 and "input_tokens" in start["usage"]
    assert events[2][1]["content_block"] == {"type": "text", "text": ""}
    assert [data["delta"]["text"] for _, data in events[3:6]] == ["echo:", " a", " b"]
    assert events[7][1]["delta"]["stop_reason"] == "end_turn"
    assert events[7][1]["usage"] == {"output_tokens": 3, "input_tokens": 2}


def test_a_tool_round_trip(client: anthropic.Anthropic, engine: ScriptedEngine) -> None:
    word = marker()
    asked = client.messages.create(
        model="scripted",
        max_tokens=50,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        messages=user(f"{word} Paris"),
    )
    assert asked.stop_reason == "tool_use"
    [call] = asked.content
    assert call.type == "tool_use" and call.name == "get_weather"
    assert call.input == {"echo": f"{word} Paris"}
    sent = engine_body(engine, word)
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather of a city.",
                "parameters": WEATHER["input_schema"],
            },
        }
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False

    answered = client.messages.create(
        model="scripted",
        max_tokens=50,
        tools=[WEATHER],
        messages=[
            *user(f"{word} Paris"),
            {"role": "assistant", "content": asked.content},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": call.id,
                        "content": "rain",
                        "is_error": True,
                    }
                ],
            },
        ],
    )
    assert answered.content[0].type == "text"
    assert answered.content[0].text == "tool said: Error: rain"
    assert answered.stop_reason == "end_turn"
    sent = engine_body(engine, word)  # the second request holds the word too
    assert sent["messages"][1]["tool_calls"][0]["id"] == call.id
    assert json.loads(sent["messages"][1]["tool_calls"][0]["function"]["arguments"]) == call.input
    assert sent["messages"][2] == {
        "role": "tool",
        "tool_call_id": call.id,
        "content": "Error: rain",
    }


def test_a_streamed_tool_round_trip(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="scripted", max_tokens=50, tools=[WEATHER], messages=user("Lisbon today")
    ) as stream:
        kinds = [event.type for event in stream]
        asked = stream.get_final_message()
    assert "input_json" in kinds
    assert asked.stop_reason == "tool_use"
    [call] = asked.content
    assert call.type == "tool_use" and call.input == {"echo": "Lisbon today"}
    with client.messages.stream(
        model="scripted",
        max_tokens=50,
        tools=[WEATHER],
        messages=[
            *user("Lisbon today"),
            {"role": "assistant", "content": asked.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sun"}],
            },
        ],
    ) as stream:
        text = "".join(stream.text_stream)
    assert text == "tool said: sun"


def test_an_image_reaches_the_engine_as_an_image_part(
    client: anthropic.Anthropic, engine: ScriptedEngine
) -> None:
    word = marker()
    message = client.messages.create(
        model="scripted",
        max_tokens=20,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"{word} what is this?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                ],
            }
        ],
    )
    assert message.content[0].type == "text" and message.content[0].text == "saw 1 image(s)"
    content = engine_body(engine, word)["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": f"{word} what is this?"}
    assert content[1]["type"] == "image_url"
    assert content[1]["image_url"]["url"] == f"data:image/png;base64,{PNG}"


def test_usage_records_say_the_messages_endpoint(
    client: anthropic.Anthropic, gateway: RunningGateway
) -> None:
    raw = client.messages.with_raw_response.create(
        model="scripted", max_tokens=10, messages=user("count me")
    )
    message = raw.parse()
    request_id = raw.headers["x-request-id"]
    assert raw.headers["request-id"] == request_id
    assert int(raw.headers["x-infermesh-cost-micro-usd"]) >= 0
    with client.messages.stream(model="scripted", max_tokens=10, messages=user("me too")) as stream:
        stream.until_done()
        streamed_id = stream.response.headers["x-request-id"]
    with gateway.http() as http:
        record = http.get(f"/v1/usage/{request_id}", headers=gateway.auth()).json()
        streamed = http.get(f"/v1/usage/{streamed_id}", headers=gateway.auth()).json()
        listed = http.get("/v1/usage", params={"limit": 100}, headers=gateway.auth()).json()
    assert record["endpoint"] == "messages" and record["stream"] is False
    assert record["id"].rpartition("-")[2] == message.id.removeprefix("msg_")
    assert (record["prompt_tokens"], record["completion_tokens"]) == (2, 3)
    assert streamed["endpoint"] == "messages" and streamed["stream"] is True
    assert {request_id, streamed_id} <= {entry["request_id"] for entry in listed["data"]}


def test_count_tokens_counts_without_charging(
    client: anthropic.Anthropic, gateway: RunningGateway
) -> None:
    with gateway.http() as http:
        before = http.get("/v1/usage", params={"limit": 100}, headers=gateway.auth()).json()
    short = client.messages.count_tokens(model="scripted", messages=user("hi"))
    longer = client.messages.count_tokens(
        model="scripted",
        system="You are a helpful assistant.",
        tools=[WEATHER],
        messages=user("hi " * 200),
    )
    assert 0 < short.input_tokens < longer.input_tokens
    with gateway.http() as http:
        after = http.get("/v1/usage", params={"limit": 100}, headers=gateway.auth()).json()
    assert [entry["id"] for entry in after["data"]] == [entry["id"] for entry in before["data"]]


def test_bearer_auth_and_anthropic_headers_are_accepted(gateway: RunningGateway) -> None:
    bearer = anthropic.Anthropic(
        base_url=gateway.base_url,
        auth_token=gateway.key,
        max_retries=0,
        default_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
    )
    message = bearer.messages.create(model="scripted", max_tokens=10, messages=user("hi"))
    assert message.content[0].type == "text" and message.content[0].text == "echo: hi"


def test_structured_output_asks_the_engine_for_json(
    client: anthropic.Anthropic, engine: ScriptedEngine
) -> None:
    word = marker()
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    client.messages.create(
        model="scripted",
        max_tokens=10,
        messages=user(word),
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    sent = engine_body(engine, word)["response_format"]
    assert sent == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }
