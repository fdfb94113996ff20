"""A chat completion as an Anthropic message: content blocks, stop reason, usage."""

from __future__ import annotations

import json
import secrets
from typing import Any, NoReturn

from infermesh.protocol.anthropic import (
    ContentBlock,
    Message,
    MessageUsage,
    StopReason,
    TextBlock,
    ToolUseBlock,
)
from infermesh.protocol.chat import ChatCompletion, FinishReason, ToolCall
from infermesh.protocol.json_depth import MAX_JSON_DEPTH, structure_nests_deeper_than


def message_id(completion_id: str) -> str:
    """The message id of a completion: ``msg_`` and the completion id's random part
    (``chatcmpl-3f2a…`` is ``msg_3f2a…``, which finds its record in ``/v1/usage``)."""
    return "msg_" + completion_id.rpartition("-")[2]


def stop_reason(finish_reason: FinishReason | None, *, tool_use: bool) -> StopReason:
    """Anthropic's stop reason for a chat finish reason. A chat answer does not say
    whether a stop sequence ended it, so one that stopped is an ``end_turn``."""
    if finish_reason == "length":
        return "max_tokens"
    if finish_reason == "content_filter":
        return "refusal"
    return "tool_use" if tool_use else "end_turn"


def tool_input(arguments: str) -> dict[str, Any]:
    """The input of a tool call from the arguments a worker sent: a JSON object, or
    ``{}`` when they are not one (a worker's output is a claim; it never fails the answer)."""
    try:
        value = json.loads(arguments, parse_constant=_not_json) if arguments else {}
    except (ValueError, RecursionError):
        return {}
    if not isinstance(value, dict) or structure_nests_deeper_than(value, MAX_JSON_DEPTH):
        return {}
    return value


def _not_json(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not JSON")


def tool_use_block(call: ToolCall) -> ToolUseBlock:
    return ToolUseBlock(
        id=call.id or new_tool_use_id(),
        name=call.function.name,
        input=tool_input(call.function.arguments),
    )


def new_tool_use_id() -> str:
    """An id for a tool call whose worker sent none, in Anthropic's style."""
    return f"toolu_{secrets.token_hex(12)}"


def message_from(completion: ChatCompletion) -> Message:
    """The Anthropic message of a (non-streamed) chat completion."""
    choice = completion.choices[0]
    answer = choice.message
    content: list[ContentBlock] = [TextBlock(text=answer.content)] if answer.content else []
    content.extend(tool_use_block(call) for call in answer.tool_calls or ())
    usage = completion.usage
    return Message(
        id=message_id(completion.id),
        model=completion.model,
        content=content,
        stop_reason=stop_reason(choice.finish_reason, tool_use=bool(answer.tool_calls)),
        usage=MessageUsage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens),
    )
