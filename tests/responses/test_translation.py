"""The translation between the Responses API and chat completions, without a server:
every field maps onto the chat request and back, every field infermesh cannot honour is
refused by name, and what comes out parses as the official SDK's own types."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types import responses as sdk

from infermesh.chat.assembly import ResponseIdentity
from infermesh.chat.responses import ResponseStream, envelope, response_from, translate
from infermesh.errors import InvalidRequest
from infermesh.protocol.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatMessage,
    Choice,
    ChoiceDelta,
    CompletionUsage,
    FunctionCall,
    FunctionCallDelta,
    ResponseMetadata,
    ToolCall,
    ToolCallDelta,
)
from infermesh.protocol.errors import ErrorBody
from infermesh.protocol.responses import ResponseRequest, StreamEvent

TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}
SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}}
EVERY_FIELD: dict[str, Any] = {
    "model": "m",
    "instructions": "Be brief.",
    "input": [
        {"role": "system", "content": "sys"},
        {"role": "developer", "content": [{"type": "input_text", "text": "dev"}]},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": "https://x.test/a.png", "detail": "high"},
            ],
        },
        {
            "type": "message",
            "role": "assistant",
            "id": "msg_1",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Let me see.", "annotations": []}],
        },
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {
            "type": "function_call_output",
            "call_id": "c2",
            "output": [{"type": "input_text", "text": "rain"}],
        },
    ],
    "tools": [TOOL],
    "tool_choice": {"type": "function", "name": "get_weather"},
    "parallel_tool_calls": False,
    "max_output_tokens": 64,
    "temperature": 0.5,
    "top_p": 0.8,
    "text": {
        "format": {
            "type": "json_schema",
            "name": "out",
            "schema": SCHEMA,
            "strict": True,
            "description": "d",
        }
    },
    "user": "u-1",
    "metadata": {"k": "v"},
    "stream": True,
    "store": False,
    "seed": 3,
    "top_k": 5,
}
NEUTRAL: dict[str, Any] = {
    "previous_response_id": None,
    "conversation": None,
    "background": False,
    "prompt": None,
    "reasoning": {"effort": None, "summary": None},
    "include": [],
    "truncation": "disabled",
    "top_logprobs": 0,
    "service_tier": "auto",
    "context_management": None,
    "metadata": {},
    "store": False,
    "stream_options": {"include_obfuscation": False},
    "prompt_cache_key": "k",
    "safety_identifier": "s",
    "max_tool_calls": 3,
}


def chat_of(body: dict[str, Any]) -> dict[str, Any]:
    return translate(ResponseRequest.model_validate(body)).chat.model_dump(exclude_unset=True)


def refused(body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        translate(ResponseRequest.model_validate({"model": "m", "input": "hi", **body}))
    return caught.value


def test_every_field_maps_onto_the_chat_request() -> None:
    image = {"url": "https://x.test/a.png", "detail": "high"}
    calls = [
        {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
        for call_id in ("c1", "c2")
    ]
    assert chat_of(EVERY_FIELD) == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "system", "content": "sys"},
            {"role": "developer", "content": [{"type": "text", "text": "dev"}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": image},
                ],
            },
            {"role": "assistant", "content": "Let me see.", "tool_calls": calls},
            {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
            {"role": "tool", "content": [{"type": "text", "text": "rain"}], "tool_call_id": "c2"},
        ],
        "temperature": 0.5,
        "top_p": 0.8,
        "max_completion_tokens": 64,
        "tools": [{"type": "function", "function": {k: v for k, v in TOOL.items() if k != "type"}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "out", "schema": SCHEMA, "strict": True, "description": "d"},
        },
        "user": "u-1",
        "stream": True,
        "seed": 3,
        "top_k": 5,
    }


def test_the_response_echoes_every_setting_as_sent() -> None:
    request = ResponseRequest.model_validate(EVERY_FIELD)
    echoed = envelope(request, response_id="resp_1", created_at=1, model="m").model_dump(
        by_alias=True
    )
    for name in ("instructions", "tools", "tool_choice", "parallel_tool_calls", "metadata"):
        assert echoed[name] == EVERY_FIELD[name], name
    for name in ("max_output_tokens", "temperature", "top_p", "text", "user"):
        assert echoed[name] == EVERY_FIELD[name], name
    assert echoed["store"] is False and echoed["previous_response_id"] is None
    sdk.Response.model_validate(echoed)


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("auto", "auto"), ("none", "none"), ("required", "required"), (None, None)],
)
def test_tool_choice_modes(choice: str | None, expected: str | None) -> None:
    chat = chat_of({"model": "m", "input": "hi", "tools": [TOOL], "tool_choice": choice})
    assert chat.get("tool_choice") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ({"format": {"type": "text"}}, None),
        ({"format": {"type": "json_object"}}, {"type": "json_object"}),
        ({}, None),
    ],
)
def test_text_formats(text: dict[str, Any], expected: dict[str, Any] | None) -> None:
    assert chat_of({"model": "m", "input": "hi", "text": text}).get("response_format") == expected


def test_neutral_values_of_unsupported_fields_are_accepted() -> None:
    chat = chat_of({"model": "m", "input": "hi", **NEUTRAL})
    assert chat == {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    for accepted in (
        {"include": ["reasoning.encrypted_content"]},
        {"reasoning": {"effort": "none"}},
        {"truncation": "auto"},
        {"store": True},
        {"text": {"verbosity": "medium"}},
        {"service_tier": "default"},
    ):
        assert chat_of({"model": "m", "input": "hi", **accepted})["messages"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"conversation": {"id": "conv_1"}}, "conversation"),
        ({"background": True}, "background"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"reasoning": {"effort": "high"}}, "reasoning.effort"),
        ({"reasoning": {"summary": "auto"}}, "reasoning.summary"),
        ({"include": ["file_search_call.results"]}, "include"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"context_management": [{"type": "compaction"}]}, "context_management"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [TOOL, {"type": "file_search", "vector_store_ids": ["v"]}]}, "tools[1].type"),
        ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[0].type"),
        ({"tools": [{"type": "computer_use_preview"}]}, "tools[0].type"),
        ({"tools": [{"type": "image_generation"}]}, "tools[0].type"),
        ({"tools": [{"type": "mcp", "server_label": "x"}]}, "tools[0].type"),
        ({"tools": [TOOL], "tool_choice": {"type": "web_search_preview"}}, "tool_choice.type"),
        ({"tools": [TOOL], "tool_choice": {"type": "allowed_tools"}}, "tool_choice.type"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input[0].type"),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].file_id",
        ),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_image", "image_url": "https://x", "detail": "original"}
                        ],
                    }
                ]
            },
            "input[0].content[0].detail",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "gone", "output": "x"}]},
            "input[0].call_id",
        ),
        ({"input": []}, "input"),
        ({"text": {"format": {"type": "json_schema", "schema": SCHEMA}}}, "text.format.name"),
        ({"text": {"format": {"type": "json_schema", "name": "n"}}}, "text.format.schema"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(body: dict[str, Any], param: str) -> None:
    error = refused(body)
    assert error.param == param
    assert error.status_code == 400


def test_storage_refusals_say_to_send_the_whole_conversation() -> None:
    message = refused({"previous_response_id": "resp_1"}).message
    assert "previous_response_id" in message and "whole conversation" in message


def test_chat_errors_are_explained_in_the_terms_of_the_request() -> None:
    body = {
        "model": "m",
        "instructions": "x",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "a"}]}],
    }
    translation = translate(ResponseRequest.model_validate(body))
    cases = {
        "messages[1].content[0].image_url": "input[0].content[0].image_url",
        "max_completion_tokens": "max_output_tokens",
        "tools[2].function.parameters": "tools[2].parameters",
        "response_format": "text.format",
        "temperature": "temperature",
    }
    for chat_param, param in cases.items():
        error = InvalidRequest(f"{chat_param} is wrong", param=chat_param, code="c")
        explained = translation.explain(error)
        assert (explained.param, explained.message, explained.code) == (
            param,
            f"{param} is wrong",
            "c",
        )


# --- answers -------------------------------------------------------------------------

USAGE = CompletionUsage(
    prompt_tokens=7, completion_tokens=5, total_tokens=12, cost=0.000125, cost_micro_usd=125
)
IDENTITY = ResponseIdentity(
    completion_id="chatcmpl-abc123", created=1_700_000_000, model="m", node_id="local"
)
SDK_EVENTS: dict[str, Any] = {
    "response.created": sdk.ResponseCreatedEvent,
    "response.in_progress": sdk.ResponseInProgressEvent,
    "response.completed": sdk.ResponseCompletedEvent,
    "response.incomplete": sdk.ResponseIncompleteEvent,
    "response.failed": sdk.ResponseFailedEvent,
    "response.output_item.added": sdk.ResponseOutputItemAddedEvent,
    "response.output_item.done": sdk.ResponseOutputItemDoneEvent,
    "response.content_part.added": sdk.ResponseContentPartAddedEvent,
    "response.content_part.done": sdk.ResponseContentPartDoneEvent,
    "response.output_text.delta": sdk.ResponseTextDeltaEvent,
    "response.output_text.done": sdk.ResponseTextDoneEvent,
    "response.function_call_arguments.delta": sdk.ResponseFunctionCallArgumentsDeltaEvent,
    "response.function_call_arguments.done": sdk.ResponseFunctionCallArgumentsDoneEvent,
}


def completion(message: AssistantMessage, finish: str) -> ChatCompletion:
    choice = Choice(index=0, message=message, finish_reason=finish)  # type: ignore[arg-type]
    return ChatCompletion(
        id="chatcmpl-abc123",
        created=1_700_000_000,
        model="m",
        choices=[choice],
        usage=USAGE,
        metadata=ResponseMetadata(node_id="local"),
    )


def test_a_completion_with_text_and_tool_calls_becomes_output_items() -> None:
    call = ToolCall(id="call_1", function=FunctionCall(name="get_weather", arguments='{"a":1}'))
    message = AssistantMessage(content="Checking.", tool_calls=[call])
    request = ResponseRequest.model_validate({"model": "m", "input": "hi", "tools": [TOOL]})
    response = response_from(completion(message, "tool_calls"), request, completed_at=5)
    parsed = sdk.Response.model_validate(response.model_dump(by_alias=True))
    assert parsed.id == "resp_abc123" and parsed.status == "completed"
    assert parsed.output_text == "Checking."
    text, function_call = parsed.output
    assert text.type == "message" and text.content[0].type == "output_text"
    assert function_call.type == "function_call"
    assert (function_call.call_id, function_call.name) == ("call_1", "get_weather")
    assert function_call.arguments == '{"a":1}'
    assert parsed.usage is not None
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens) == (7, 5)
    assert (parsed.usage.model_extra or {})["cost_micro_usd"] == 125


def test_a_completion_cut_at_its_length_is_incomplete() -> None:
    request = ResponseRequest.model_validate({"model": "m", "input": "hi"})
    response = response_from(
        completion(AssistantMessage(content="a b"), "length"), request, completed_at=5
    )
    parsed = sdk.Response.model_validate(response.model_dump(by_alias=True))
    assert parsed.status == "incomplete"
    assert parsed.incomplete_details is not None
    assert parsed.incomplete_details.reason == "max_output_tokens"
    assert parsed.output[0].status == "incomplete"


def events_of(stream: ResponseStream, chunks: list[Any], *, closing: bool = True) -> list[Any]:
    events: list[StreamEvent] = [*stream.opening()]
    for chunk in chunks:
        events += stream.add(chunk)
    if closing:
        events += stream.closing(completed_at=5)
    assert [event.sequence_number for event in events] == list(range(len(events)))
    return [SDK_EVENTS[e.type].model_validate(e.model_dump(by_alias=True)) for e in events]


def chunk(delta: ChoiceDelta | None, **options: Any) -> ChatCompletionChunk:
    return IDENTITY.chunk(delta, **options)


def call_delta(
    index: int, *, call_id: str | None = None, name: str | None = None, args: str = ""
) -> ChoiceDelta:
    function = FunctionCallDelta(name=name, arguments=args)
    return ChoiceDelta(tool_calls=[ToolCallDelta(index=index, id=call_id, function=function)])


def test_a_stream_of_text_then_tool_calls_becomes_items_in_order() -> None:
    request = ResponseRequest.model_validate({"model": "m", "input": "hi", "tools": [TOOL]})
    chunks = [
        chunk(ChoiceDelta(role="assistant", content="")),
        "Let me ",
        "check.",
        chunk(call_delta(0, call_id="call_a", name="get_weather")),
        chunk(call_delta(0, args='{"city":')),
        chunk(call_delta(1, call_id="call_b", name="get_weather", args="{}")),
        chunk(call_delta(0, args='"Oslo"}')),
        chunk(ChoiceDelta(), finish_reason="tool_calls"),
        chunk(None, usage=USAGE),
    ]
    events = events_of(ResponseStream(request, IDENTITY), chunks)
    assert [event.type for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1].response
    assert final.output_text == "Let me check."
    _, first, second = final.output
    assert (first.call_id, first.arguments, first.status) == (
        "call_a",
        '{"city":"Oslo"}',
        "completed",
    )
    assert (second.call_id, second.arguments) == ("call_b", "{}")
    assert [item.id for item in final.output] == [
        event.item.id for event in events if event.type == "response.output_item.added"
    ]
    assert final.usage.total_tokens == 12


def test_an_error_midway_fails_the_response_with_what_was_written() -> None:
    request = ResponseRequest.model_validate({"model": "m", "input": "hi"})
    stream = ResponseStream(request, IDENTITY)
    error = ErrorBody(message="The worker went silent.", type="server_error", code="worker_timeout")
    events = events_of(stream, ["partial ", "answer", error, "ignored"])
    assert events[-1].type == "response.failed"
    failed = events[-1].response
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.code == "server_error"
    assert "worker_timeout" in failed.error.message
    assert failed.output[0].content[0].text == "partial answer"
    assert failed.output[0].status == "incomplete"
    assert stream.closing(completed_at=6) == []


def test_a_message_of_several_roles_keeps_its_order() -> None:
    body = {
        "model": "m",
        "input": [
            {"role": "user", "content": "a"},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "b"},
            {"role": "assistant", "content": "c"},
        ],
    }
    messages = translate(ResponseRequest.model_validate(body)).chat.messages
    assert [message.role for message in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1] == ChatMessage(
        role="assistant",
        tool_calls=[ToolCall(id="c", function=FunctionCall(name="f", arguments="{}"))],
    )
