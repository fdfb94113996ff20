"""The translation between Anthropic's Messages API and chat completions, without a gateway:
every field maps to the chat request (and the answer back) without loss, and every field
the chat lifecycle cannot honour is refused by name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError

from infermesh.chat.anthropic import (
    MessageEvents,
    error_type,
    message_events,
    message_from,
    translate_request,
)
from infermesh.errors import (
    BackendError,
    InfermeshError,
    InvalidRequest,
    ModelNotFound,
    NoWorkerAvailable,
    PayloadTooLarge,
    PaymentRequired,
    RateLimited,
    Unauthorized,
    WorkerTimeout,
)
from infermesh.gateway.errors import invalid_request_from
from infermesh.protocol.anthropic import MessageCountRequest, MessageCreateRequest, StreamEvent
from infermesh.protocol.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChoiceDelta,
    ChunkChoice,
    CompletionUsage,
    FunctionCall,
    FunctionCallDelta,
    ResponseMetadata,
    ToolCall,
    ToolCallDelta,
)
from infermesh.protocol.chat import Choice as ChatChoice
from infermesh.protocol.errors import ErrorBody
from tests.messages.samples import PNG

JSON = dict[str, Any]
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}


def body(**fields: Any) -> MessageCreateRequest:
    base: JSON = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    return MessageCreateRequest.model_validate({**base, **fields})


def chat(**fields: Any) -> JSON:
    dumped: JSON = translate_request(body(**fields)).request.model_dump(exclude_none=True)
    return dumped


def refusal(**fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        translate_request(body(**fields))
    return caught.value


# --- request -------------------------------------------------------------------------


def test_a_whole_conversation_maps_to_the_chat_request_without_loss() -> None:
    translated = chat(
        system=[
            {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Use metric units."},
        ],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather here?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me look."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "weather",
                        "input": {"city": "Oslo"},
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "weather",
                        "input": {"city": "Bergen"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "4 °C"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [{"type": "text", "text": "station down"}],
                        "is_error": True,
                    },
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
        tools=[
            {
                "name": "weather",
                "description": "Weather of a city",
                "input_schema": WEATHER_SCHEMA,
                "strict": True,
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            }
        ],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        stop_sequences=["END", "STOP"],
        temperature=0.3,
        top_p=0.9,
        top_k=40,
        metadata={"user_id": "user-7"},
        stream=True,
        output_config={"format": {"type": "json_schema", "schema": WEATHER_SCHEMA}},
        thinking={"type": "disabled"},
        service_tier="auto",
        cache_control={"type": "ephemeral"},
    )
    assert translated == {
        "model": "m",
        "messages": [
            {
                "role": "system",
                "content": [
                    {"type": "text", "text": "Be brief."},
                    {"type": "text", "text": "Use metric units."},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                    },
                    {
                        "id": "toolu_2",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Bergen"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "4 °C"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: station down"},
            {"role": "user", "content": "And tomorrow?"},
        ],
        "max_tokens": 64,
        "stop": ["END", "STOP"],
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 40,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "description": "Weather of a city",
                    "parameters": WEATHER_SCHEMA,
                    "strict": True,
                },
            }
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": WEATHER_SCHEMA, "strict": True},
        },
        "user": "user-7",
        "stream": True,
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        (
            {"type": "tool", "name": "weather"},
            {"type": "function", "function": {"name": "weather"}},
        ),
    ],
)
def test_tool_choices_map_to_chat_tool_choices(choice: JSON, expected: Any) -> None:
    tools = [{"name": "weather", "input_schema": WEATHER_SCHEMA}]
    translated = chat(tools=tools, tool_choice=choice)
    assert translated["tool_choice"] == expected
    assert "parallel_tool_calls" not in translated


def test_choosing_tools_without_tools_chooses_nothing() -> None:
    assert "tool_choice" not in chat(tool_choice={"type": "auto"})
    assert "tool_choice" not in chat(tool_choice={"type": "none"})


def test_plain_strings_stay_strings_and_empty_system_is_left_out() -> None:
    translated = chat(
        system="",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": [{"type": "text", "text": "again"}]},
        ],
    )
    assert translated["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
    ]
    assert translated["stream"] is False
    assert "stop" not in translated and "user" not in translated


def test_earlier_thinking_is_left_out_as_anthropic_leaves_it_out() -> None:
    translated = chat(
        messages=[
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "xyz"},
                    {"type": "text", "text": "hello"},
                ],
            },
            {"role": "user", "content": "bye"},
        ]
    )
    assert translated["messages"][1] == {"role": "assistant", "content": "hello"}


def test_tool_results_without_content_or_with_several_texts() -> None:
    translated = chat(
        messages=[
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "a", "name": "t", "input": {}},
                    {"type": "tool_use", "id": "b", "name": "t", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "a"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "b",
                        "is_error": True,
                        "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}],
                    },
                ],
            },
        ]
    )
    assert translated["messages"][1]["tool_calls"][1]["id"] == "b"
    assert "content" not in translated["messages"][1]
    assert translated["messages"][2] == {"role": "tool", "tool_call_id": "a", "content": ""}
    assert translated["messages"][3]["content"] == [
        {"type": "text", "text": "Error: x"},
        {"type": "text", "text": "y"},
    ]


def test_count_requests_need_no_max_tokens() -> None:
    count = MessageCountRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "system": "s"}
    )
    request = translate_request(count).request
    assert request.max_tokens is None
    assert [message.role for message in request.messages] == ["system", "user"]


@pytest.mark.parametrize(
    "fields",
    [
        {"container": None, "mcp_servers": [], "context_management": {}},
        {"thinking": {"type": "adaptive"}},
        {"service_tier": "standard_only", "speed": "standard"},
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi", "caller": None}]}
            ]
        },
        {"output_config": {"effort": None}},
    ],
)
def test_neutral_values_are_accepted(fields: JSON) -> None:
    assert chat(**fields)["messages"][-1]["role"] == "user"


DEEP: Any = {}
for _ in range(80):
    DEEP = {"a": DEEP}

UNSUPPORTED = [
    ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking"),
    ({"thinking": {"type": "between_tools"}}, "thinking"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools[0].type"),
    (
        {"tools": [{"name": "t", "input_schema": {}, "defer_loading": True}]},
        "tools[0].defer_loading",
    ),
    (
        {"tools": [{"name": "t", "input_schema": {}, "input_examples": [{}]}]},
        "tools[0].input_examples",
    ),
    ({"container": "container_1"}, "container"),
    ({"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]}, "mcp_servers"),
    (
        {"context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}},
        "context_management",
    ),
    ({"inference_geo": "us"}, "inference_geo"),
    ({"speed": "fast"}, "speed"),
    ({"output_config": {"effort": "low"}}, "output_config.effort"),
    ({"frobnicate": 1}, "frobnicate"),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": "x"},
                        }
                    ],
                }
            ]
        },
        "messages[0].content[0].type",
    ),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "x", "citations": [{"type": "char_location"}]}
                    ],
                }
            ]
        },
        "messages[0].content[0].citations",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "frob": 2}]}]},
        "messages[0].content[0].frob",
    ),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
                    ],
                }
            ]
        },
        "messages[0].content[0].source.type",
    ),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                }
            ]
        },
        "messages[0].content[0].source.type",
    ),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "a",
                            "content": [
                                {
                                    "type": "image",
                                    "source": {
                                        "type": "base64",
                                        "media_type": "image/png",
                                        "data": PNG,
                                    },
                                }
                            ],
                        }
                    ],
                }
            ]
        },
        "messages[0].content[0].content[0].type",
    ),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "x"},
                        {"type": "tool_result", "tool_use_id": "a"},
                    ],
                }
            ]
        },
        "messages[0].content[1]",
    ),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "tool_use", "id": "a", "name": "t", "input": {}}],
                }
            ]
        },
        "messages[0].content[0].type",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "The answer is"},
            ]
        },
        "messages[1].role",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}
                    ],
                },
                {"role": "user", "content": "go on"},
            ]
        },
        "messages[1].content[0].type",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "a", "name": "t", "input": DEEP}],
                },
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "a", "content": "ok"}],
                },
            ]
        },
        "messages[1].content[0].input",
    ),
    ({"messages": [{"role": "user", "content": []}]}, "messages[0].content"),
    (
        {
            "system": [
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                }
            ]
        },
        "system",
    ),
]


@pytest.mark.parametrize(("fields", "param"), UNSUPPORTED, ids=[param for _, param in UNSUPPORTED])
def test_what_cannot_be_honoured_is_refused_by_name(fields: JSON, param: str) -> None:
    if param == "system":  # system takes text blocks only: refused when parsed
        with pytest.raises(ValidationError) as parsed:
            body(**fields)
        assert invalid_request_from(list(parsed.value.errors())).param == "system[0].type"
        return
    error = refusal(**fields)
    assert error.param == param
    assert error.status_code == 400


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 1.5}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"stop_sequences": "STOP"}, "stop_sequences"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/bmp",
                                    "data": PNG,
                                },
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].source.media_type",
        ),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice"),
        ({"tools": [{"name": "", "input_schema": {}}]}, "tools[0].name"),
    ],
)
def test_wrong_values_are_named_in_the_error(fields: JSON, param: str) -> None:
    raw: JSON = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    raw.update(fields)
    if raw["max_tokens"] is None:
        del raw["max_tokens"]
    with pytest.raises(ValidationError) as caught:
        MessageCreateRequest.model_validate(raw)
    assert invalid_request_from(list(caught.value.errors())).param == param


def test_chat_parameter_names_are_given_back_as_anthropic_ones() -> None:
    translated = translate_request(
        body(
            system="s",
            messages=[
                {"role": "user", "content": "go"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "a", "name": "t", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "a", "content": "ok"},
                        {"type": "text", "text": "look"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                    ],
                },
            ],
        )
    )
    names = {
        "messages[0]": "system",
        "messages[4].content[1].image_url": "messages[2].content[2].source",
        "messages[4].content[0]": "messages[2].content[1]",
        "messages[3].tool_call_id": "messages[2].content[0].tool_call_id",
        "messages[2].content": "messages[1].content",
        "stop": "stop_sequences",
        "max_completion_tokens": "max_tokens",
        "user": "metadata.user_id",
        "response_format.json_schema": "output_config.format",
        "tools[1].function.parameters.properties": "tools[1].input_schema.properties",
        "tools": "tools",
        "model": "model",
    }
    assert {param: translated.anthropic_param(param) for param in names} == names
    error = InvalidRequest(
        "'tools[0].function.parameters' nests too deep.", param="tools[0].function.parameters"
    )
    translated.rename_error(error)
    assert (error.param, error.message) == (
        "tools[0].input_schema",
        "'tools[0].input_schema' nests too deep.",
    )


# --- answer --------------------------------------------------------------------------


def completion(message: AssistantMessage, finish: Any) -> ChatCompletion:
    return ChatCompletion(
        id="chatcmpl-abc123",
        created=0,
        model="m",
        choices=[ChatChoice(index=0, message=message, finish_reason=finish)],
        usage=CompletionUsage(prompt_tokens=11, completion_tokens=7, total_tokens=18),
        metadata=ResponseMetadata(node_id="n"),
    )


def call(arguments: str, call_id: str = "call_1") -> ToolCall:
    return ToolCall(id=call_id, function=FunctionCall(name="t", arguments=arguments))


@pytest.mark.parametrize(
    ("finish", "tool_calls", "reason"),
    [
        ("stop", None, "end_turn"),
        ("length", None, "max_tokens"),
        ("tool_calls", [call("{}")], "tool_use"),
        ("stop", [call("{}")], "tool_use"),
        ("length", [call("{")], "max_tokens"),
        ("content_filter", None, "refusal"),
    ],
)
def test_finish_reasons_map_to_stop_reasons(finish: str, tool_calls: Any, reason: str) -> None:
    message = message_from(
        completion(AssistantMessage(content="hi", tool_calls=tool_calls), finish)
    )
    assert message.stop_reason == reason
    assert message.stop_sequence is None


def test_a_completion_becomes_a_message() -> None:
    answer = AssistantMessage(
        content="Checking.",
        tool_calls=[
            call('{"city": "Oslo", "days": [1, 2]}'),
            call("not json", "call_2"),
            call("[1, 2]", "call_3"),
            call('{"x": NaN}', "call_4"),
            call("[" * 5000 + "]" * 5000, "call_5"),
            call("", ""),
        ],
    )
    message = message_from(completion(answer, "tool_calls")).model_dump()
    assert message["id"] == "msg_abc123"
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"][0] == {"type": "text", "text": "Checking."}
    inputs = [block["input"] for block in message["content"][1:]]
    assert inputs == [{"city": "Oslo", "days": [1, 2]}, {}, {}, {}, {}, {}]
    assert message["content"][-1]["id"].startswith("toolu_")
    assert message["usage"] == {
        "input_tokens": 11,
        "output_tokens": 7,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def test_an_empty_answer_has_no_content() -> None:
    message = message_from(completion(AssistantMessage(content=None), "stop"))
    assert message.content == []


# --- stream --------------------------------------------------------------------------


def chunk(
    delta: ChoiceDelta | None, finish: Any = None, usage: CompletionUsage | None = None
) -> ChatCompletionChunk:
    choices = [] if delta is None else [ChunkChoice(index=0, delta=delta, finish_reason=finish)]
    return ChatCompletionChunk(id="chatcmpl-x", created=0, model="m", choices=choices, usage=usage)


def tool_delta(
    index: int, *, call_id: str | None = None, name: str | None = None, arguments: str | None = None
) -> ChoiceDelta:
    function = FunctionCallDelta(name=name, arguments=arguments)
    return ChoiceDelta(tool_calls=[ToolCallDelta(index=index, id=call_id, function=function)])


def dumped(events: list[StreamEvent]) -> list[JSON]:
    return [event.model_dump(exclude_none=True) for event in events]


async def feed(*chunks: str | ChatCompletionChunk | ErrorBody) -> list[JSON]:
    async def source() -> AsyncIterator[str | ChatCompletionChunk | ErrorBody]:
        for item in chunks:
            yield item

    events = message_events(source(), message_id="msg_x", model="m", input_tokens=9)
    return [event.model_dump(exclude_none=True) async for event in events]


USAGE = CompletionUsage(prompt_tokens=12, completion_tokens=5, total_tokens=17)


async def test_text_and_tool_calls_become_anthropic_events_in_order() -> None:
    events = await feed(
        chunk(ChoiceDelta(role="assistant", content="")),
        "Hel",
        "lo",
        chunk(tool_delta(0, call_id="call_a", name="wea")),
        chunk(tool_delta(0, name="ther", arguments='{"city": ')),
        chunk(tool_delta(1, call_id="call_b", name="time", arguments="{}")),
        chunk(tool_delta(0, arguments='"Oslo"}')),
        chunk(ChoiceDelta(content="!", tool_calls=[ToolCallDelta(index=1)])),
        chunk(ChoiceDelta(), finish="tool_calls"),
        chunk(None, usage=USAGE),
    )
    assert [event["type"] for event in events] == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_delta",
        "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    start = events[0]["message"]
    assert start["content"] == [] and start["usage"]["input_tokens"] == 9
    assert start["id"] == "msg_x" and start["role"] == "assistant"
    assert events[2] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert [event["delta"]["text"] for event in events[3:6]] == ["Hel", "lo", "!"]
    assert events[7]["content_block"] == {
        "type": "tool_use",
        "id": "call_a",
        "name": "weather",
        "input": {},
    }
    assert events[8]["delta"] == {"type": "input_json_delta", "partial_json": '{"city": "Oslo"}'}
    assert events[10]["content_block"]["name"] == "time" and events[10]["index"] == 2
    assert events[13] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use"},
        "usage": {"output_tokens": 5, "input_tokens": 12},
    }


async def test_broken_tool_arguments_stream_as_an_empty_input() -> None:
    events = await feed(
        chunk(tool_delta(0, name="t", arguments="{not json")),
        chunk(ChoiceDelta(), finish="tool_calls"),
        chunk(None, usage=USAGE),
    )
    assert events[2]["content_block"]["id"].startswith("toolu_")
    assert events[3]["delta"]["partial_json"] == "{}"


async def test_an_answer_cut_by_max_tokens_says_so() -> None:
    events = await feed("a", chunk(ChoiceDelta(), finish="length"), chunk(None, usage=USAGE))
    assert events[-2]["delta"]["stop_reason"] == "max_tokens"


async def test_an_error_midway_ends_the_stream_with_an_error_event() -> None:
    failure = ErrorBody(
        message="The worker went silent.", type="server_error", code="worker_timeout"
    )
    events = await feed("partial", failure)
    assert [event["type"] for event in events] == [
        "message_start", "ping", "content_block_start", "content_block_delta", "error"
    ]  # fmt: skip
    assert events[-1] == {
        "type": "error",
        "error": {"type": "timeout_error", "message": "The worker went silent."},
    }
    overloaded = MessageEvents.failed(ErrorBody(message="busy", type="service_unavailable"))
    assert overloaded.error.type == "overloaded_error"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (InvalidRequest("x"), "invalid_request_error"),
        (Unauthorized("x"), "authentication_error"),
        (PaymentRequired("x"), "billing_error"),
        (ModelNotFound("m"), "not_found_error"),
        (PayloadTooLarge("x"), "request_too_large"),
        (RateLimited("x"), "rate_limit_error"),
        (NoWorkerAvailable("x"), "overloaded_error"),
        (WorkerTimeout("x"), "timeout_error"),
        (BackendError("x"), "api_error"),
        (InfermeshError("x"), "api_error"),
    ],
)
def test_errors_have_anthropic_types(error: InfermeshError, kind: str) -> None:
    assert error_type(error) == kind
