"""The ``response`` object of a chat answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from infermesh.protocol import responses as wire
from infermesh.protocol.chat import (
    AssistantMessage,
    ChatCompletion,
    CompletionUsage,
    FinishReason,
)
from infermesh.protocol.responses import ItemStatus, ResponseObject, ResponseRequest


def response_id_of(completion_id: str) -> str:
    """The ``resp_…`` id of a response, from its chat completion's ``chatcmpl-…`` id."""
    return "resp_" + completion_id.rpartition("-")[2]


def envelope(
    request: ResponseRequest, *, response_id: str, created_at: int, model: str
) -> ResponseObject:
    """A response in progress, with the settings of ``request`` echoed."""
    text = request.text.model_dump(exclude_unset=True, by_alias=True) if request.text else {}
    return ResponseObject(
        id=response_id,
        created_at=created_at,
        status="in_progress",
        model=model,
        instructions=request.instructions,
        metadata=request.metadata or {},
        tools=[tool.model_dump(exclude_unset=True) for tool in request.tools or []],
        tool_choice=_echo(request.tool_choice) or "auto",
        parallel_tool_calls=request.parallel_tool_calls is not False,
        temperature=request.temperature,
        top_p=request.top_p,
        max_output_tokens=request.max_output_tokens,
        max_tool_calls=request.max_tool_calls,
        text={"format": {"type": "text"}, **text},
        truncation=request.truncation or "disabled",
        user=request.user,
    )


def _echo(value: Any) -> Any:
    return value.model_dump(exclude_unset=True) if isinstance(value, BaseModel) else value


_INCOMPLETE: dict[str, wire.IncompleteReason] = {
    "length": "max_output_tokens",
    "content_filter": "content_filter",
}
"""The chat finish reasons that leave a response incomplete, and why."""


def item_status(finish_reason: FinishReason | None) -> ItemStatus:
    return "incomplete" if finish_reason in _INCOMPLETE else "completed"


def finished(
    response: ResponseObject,
    output: list[wire.OutputItem],
    finish_reason: FinishReason | None,
    usage: CompletionUsage | None,
    *,
    completed_at: int,
) -> ResponseObject:
    """``response`` complete (or incomplete, if the answer was cut short)."""
    reason = _INCOMPLETE.get(finish_reason or "")
    return response.model_copy(
        update={
            "status": "incomplete" if reason else "completed",
            "incomplete_details": wire.IncompleteDetails(reason=reason) if reason else None,
            "completed_at": completed_at,
            "output": output,
            "usage": _usage(usage) if usage is not None else None,
        }
    )


def response_from(
    completion: ChatCompletion, request: ResponseRequest, *, completed_at: int
) -> ResponseObject:
    """The ``response`` object of a whole chat completion."""
    choice = completion.choices[0]
    key = completion.id.rpartition("-")[2]
    output = [
        item.item() for item in items_of(choice.message, key, item_status(choice.finish_reason))
    ]
    response = envelope(
        request,
        response_id=response_id_of(completion.id),
        created_at=completion.created,
        model=completion.model,
    )
    return finished(
        response, output, choice.finish_reason, completion.usage, completed_at=completed_at
    )


def _usage(usage: CompletionUsage) -> wire.ResponseUsage:
    return wire.ResponseUsage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cost=usage.cost,
        cost_micro_usd=usage.cost_micro_usd,
    )


@dataclass
class Item:
    """An output item as it is built: a message (no ``call_id``) or a function call."""

    id: str
    index: int
    call_id: str | None = None
    name: str = ""
    pieces: list[str] = field(default_factory=list)
    status: ItemStatus = "in_progress"

    def text(self) -> str:
        return "".join(self.pieces)

    def item(self, *, content: bool = True) -> wire.OutputItem:
        if self.call_id is None:
            parts = [wire.OutputText(text=self.text())] if content else []
            return wire.OutputMessage(id=self.id, status=self.status, content=parts)
        return wire.FunctionCall(
            id=self.id,
            call_id=self.call_id,
            name=self.name,
            arguments=self.text(),
            status=self.status,
        )


def items_of(message: AssistantMessage, key: str, status: ItemStatus) -> list[Item]:
    items = []
    if message.content or not message.tool_calls:
        items.append(Item(f"msg_{key}_0", 0, pieces=[message.content or ""], status=status))
    for call in message.tool_calls or []:
        index = len(items)
        function = call.function
        call_id = call.id or f"call_{key}_{index}"
        items.append(
            Item(f"fc_{key}_{index}", index, call_id, function.name, [function.arguments], status)
        )
    return items
