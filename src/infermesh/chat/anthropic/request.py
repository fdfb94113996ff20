"""An Anthropic Messages request as the chat completion request that runs it.

The translation keeps everything the chat lifecycle can honour and refuses, by name, what
it cannot (``thinking`` budgets, server tools, documents, containers, …: see
:mod:`.refusals`). ``cache_control`` is accepted everywhere and changes nothing:
infermesh keeps no prompt cache.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from infermesh.chat.anthropic.conversation import Conversation, Origin
from infermesh.chat.anthropic.refusals import refuse, refuse_unsupported
from infermesh.chat.anthropic.tools import tool_fields
from infermesh.errors import InfermeshError
from infermesh.protocol.anthropic import MessageCreateRequest, MessagesInput
from infermesh.protocol.chat import ChatCompletionRequest, ResponseFormat

__all__ = ["Origin", "Translated", "translate_request"]


@dataclass(frozen=True, slots=True)
class Translated:
    """The chat request of an Anthropic request, and where each of its messages came from
    (to name the Anthropic parameter in the chat lifecycle's errors)."""

    request: ChatCompletionRequest
    origins: tuple[Origin, ...]

    def anthropic_param(self, param: str) -> str:
        """The Anthropic name of the chat request parameter ``param``."""
        if (found := _CHAT_MESSAGE.match(param)) and int(found[1]) < len(self.origins):
            origin, part, rest = self.origins[int(found[1])], found[2], found[3]
            if part is None:
                return origin.path + rest
            if int(part) < len(origin.parts):
                return origin.parts[int(part)] + re.sub(r"^\.image_url", ".source", rest)
            return f"{origin.path}.content[{part}]{rest}"
        if found := _CHAT_TOOL.match(param):
            return f"tools[{found[1]}]{_TOOL_FIELDS.get(found[2], '')}{found[3]}"
        return _RENAMED.get(param.partition(".")[0], param)

    def rename_error(self, error: InfermeshError) -> None:
        """Name the Anthropic parameter in ``error`` (raised for the chat request)."""
        if error.param is None:
            return
        renamed = self.anthropic_param(error.param)
        error.message = error.message.replace(f"'{error.param}'", f"'{renamed}'")
        error.param = renamed


_CHAT_MESSAGE = re.compile(r"^messages\[(\d+)\](?:\.content\[(\d+)\])?(.*)$", re.DOTALL)
_CHAT_TOOL = re.compile(r"^tools\[(\d+)\](?:\.function(?:\.(\w+))?)?(.*)$", re.DOTALL)
_TOOL_FIELDS = {"parameters": ".input_schema", "name": ".name", "description": ".description"}
_RENAMED = {
    "stop": "stop_sequences",
    "user": "metadata.user_id",
    "max_completion_tokens": "max_tokens",
    "response_format": "output_config.format",
}


def translate_request(body: MessagesInput) -> Translated:
    """The chat completion request that runs ``body`` (a :class:`MessageCreateRequest`,
    or the conversation alone, as ``count_tokens`` takes it); :class:`InvalidRequest`
    naming the parameter for anything the chat lifecycle cannot honour."""
    refuse_unsupported(body)
    conversation = Conversation()
    conversation.add_system(body.system)
    for index, message in enumerate(body.messages):
        conversation.add(message, f"messages[{index}]")
    if body.messages[-1].role == "assistant":
        refuse(
            f"messages[{len(body.messages) - 1}].role",
            "The last message must not be an assistant message: infermesh does not continue "
            "a partial answer (prefill).",
        )
    fields: dict[str, Any] = {
        "model": body.model,
        "messages": conversation.messages,
        **tool_fields(body),
    }
    if body.output_config is not None and body.output_config.format is not None:
        schema = body.output_config.format.json_schema
        fields["response_format"] = ResponseFormat(
            type="json_schema", json_schema={"name": "output", "schema": schema, "strict": True}
        )
    if isinstance(body, MessageCreateRequest):
        fields.update(_sampling_fields(body))
    request = ChatCompletionRequest.model_validate(fields)
    return Translated(request, tuple(conversation.origins))


def _sampling_fields(body: MessageCreateRequest) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "max_tokens": body.max_tokens,
        "stop": body.stop_sequences or None,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "stream": bool(body.stream),
    }
    if body.top_k is not None:
        fields["top_k"] = body.top_k  # an engine field (see protocol/engine_fields.py)
    if body.metadata is not None and body.metadata.user_id is not None:
        fields["user"] = body.metadata.user_id
    return fields
