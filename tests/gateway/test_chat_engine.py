"""Chat completions through the gateway to an OpenAI-compatible engine (the openai backend),
called with the official openai SDK."""

from __future__ import annotations

import base64
import json

from tests.fakes.engine import ScriptedEngine
from tests.support.gateway import RunningGateway

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}

PNG_1PX = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()


def test_chat_returns_openai_shape_with_node_id(engine_gateway: RunningGateway) -> None:
    client = engine_gateway.client()
    response = client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "hello there"}]
    )
    assert response.object == "chat.completion"
    assert response.id.startswith("chatcmpl-")
    assert response.model == "scripted"
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content == "echo: hello there"
    assert response.choices[0].finish_reason == "stop"
    assert response.usage is not None
    assert response.usage.prompt_tokens == 2
    assert response.usage.completion_tokens == 3
    assert response.usage.total_tokens == 5
    assert response.metadata == {"node_id": "local"}


def test_every_parameter_is_forwarded_to_the_engine(
    engine_gateway: RunningGateway, engine: ScriptedEngine
) -> None:
    client = engine_gateway.client()
    client.chat.completions.create(
        model="scripted",
        messages=[
            {"role": "system", "content": "You are concise."},
            {"role": "user", "content": "one two three"},
        ],
        temperature=0.3,
        top_p=0.9,
        max_tokens=50,
        stop=["END"],
        frequency_penalty=0.5,
        presence_penalty=-0.5,
        seed=7,
        response_format={"type": "json_object"},
        user="user-42",
        extra_body={"top_k": 20, "repetition_penalty": 1.1},
    )
    sent = engine.requests[-1]
    assert sent["model"] == "scripted-1"
    assert sent["temperature"] == 0.3
    assert sent["top_p"] == 0.9
    assert sent["max_tokens"] == 50
    assert sent["stop"] == ["END"]
    assert sent["frequency_penalty"] == 0.5
    assert sent["presence_penalty"] == -0.5
    assert sent["seed"] == 7
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["user"] == "user-42"
    assert sent["top_k"] == 20
    assert sent["repetition_penalty"] == 1.1
    assert sent["messages"][0] == {"role": "system", "content": "You are concise."}


def test_max_tokens_and_stop_are_honoured(engine_gateway: RunningGateway) -> None:
    client = engine_gateway.client()
    cut = client.chat.completions.create(
        model="scripted",
        messages=[{"role": "user", "content": "a b c d e f"}],
        max_completion_tokens=3,
    )
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None and cut.usage.completion_tokens == 3
    stopped = client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "a b STOP c"}], stop="STOP"
    )
    assert stopped.choices[0].message.content == "echo: a b"


def test_stream_yields_chunks_and_usage(engine_gateway: RunningGateway) -> None:
    client = engine_gateway.client()
    stream = client.chat.completions.create(
        model="scripted",
        messages=[{"role": "user", "content": "count to five"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "echo: count to five"
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_stream_without_include_usage_has_no_usage_chunk(engine_gateway: RunningGateway) -> None:
    client = engine_gateway.client()
    chunks = list(
        client.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)


def test_tool_call_round_trip(engine_gateway: RunningGateway) -> None:
    client = engine_gateway.client()
    messages: list[dict[str, object]] = [
        {"role": "user", "content": "What's the weather in Paris?"}
    ]
    first = client.chat.completions.create(
        model="scripted",
        messages=messages,
        tools=[WEATHER_TOOL],
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"echo": "What's the weather in Paris?"}

    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"})
    second = client.chat.completions.create(
        model="scripted",
        messages=messages,
        tools=[WEATHER_TOOL],
    )
    assert second.choices[0].message.content == "tool said: 18C and sunny"
    assert second.choices[0].finish_reason == "stop"


def test_streamed_tool_call_deltas_reassemble(engine_gateway: RunningGateway) -> None:
    client = engine_gateway.client()
    stream = client.chat.completions.create(
        model="scripted",
        messages=[{"role": "user", "content": "weather in Oslo"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    name, arguments, call_id, finish = "", "", None, None
    for chunk in stream:
        if not chunk.choices:
            continue
        for delta in chunk.choices[0].delta.tool_calls or []:
            assert delta.index == 0
            call_id = delta.id or call_id
            if delta.function and delta.function.name:
                name += delta.function.name
            if delta.function and delta.function.arguments:
                arguments += delta.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert call_id is not None and call_id.startswith("call_")
    assert name == "get_weather"
    assert json.loads(arguments) == {"echo": "weather in Oslo"}
    assert finish == "tool_calls"


def test_inline_image_reaches_a_vision_model(
    engine_gateway: RunningGateway, engine: ScriptedEngine
) -> None:
    client = engine_gateway.client()
    response = client.chat.completions.create(
        model="scripted",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What's in this image?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}},
                ],
            }
        ],
    )
    assert response.choices[0].message.content == "saw 1 image(s)"
    part = engine.requests[-1]["messages"][0]["content"][1]
    assert part["image_url"]["url"] == f"data:image/png;base64,{PNG_1PX}"


def test_x_api_key_header_is_accepted(engine_gateway: RunningGateway) -> None:
    with engine_gateway.http() as http:
        response = http.post(
            "/v1/chat/completions",
            headers={"X-API-Key": engine_gateway.key},
            json={"model": "scripted", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "echo: hi"
    assert response.headers["x-request-id"].startswith("req_")
    assert response.headers["x-infermesh-node-id"] == "local"
