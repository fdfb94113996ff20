"""From an OpenAI chat request to the prompt tokens and sampling settings the engine runs."""

from __future__ import annotations

from typing import Any

from infermesh.errors import InvalidRequest
from infermesh.protocol.chat import ChatCompletionRequest, ChatMessage, ImagePart, ToolCall
from infermesh.protocol.json_depth import MAX_JSON_DEPTH, structure_nests_deeper_than
from infermesh.worker.engine.sampling import SamplingParams
from infermesh.worker.toolcalls import load_json


def sampling_params(request: ChatCompletionRequest) -> SamplingParams:
    """The request's sampling knobs with OpenAI's defaults for those it left out."""
    return SamplingParams(
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        frequency_penalty=request.frequency_penalty or 0.0,
        presence_penalty=request.presence_penalty or 0.0,
        seed=request.seed,
    )


def uses_tools(request: ChatCompletionRequest) -> bool:
    """Whether the model is offered tools (and its output is read for tool calls)."""
    return bool(request.tools) and request.tool_choice != "none"


def render_prompt(tokenizer: Any, request: ChatCompletionRequest) -> list[int]:
    """Apply the model's chat template (with the tools, if any) and tokenize the result."""
    if request.n is not None and request.n > 1:
        raise InvalidRequest("This engine generates one choice per request (n=1).", param="n")
    messages = [_template_message(message, index) for index, message in enumerate(request.messages)]
    tools = _template_tools(request)
    try:
        text = tokenizer.apply_chat_template(
            messages, tools=tools or None, add_generation_prompt=True, tokenize=False
        )
    except Exception as exc:  # the template itself rejects the conversation
        raise InvalidRequest(f"The chat template rejected the messages: {exc}") from exc
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InvalidRequest("The prompt is empty.", param="messages")
    return ids


def _template_tools(request: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The offered tools as plain data; one nested too deep for the template's JSON is refused."""
    tools = [tool.model_dump(exclude_none=True) for tool in request.tools or []]
    for index, tool in enumerate(tools):
        if structure_nests_deeper_than(tool, MAX_JSON_DEPTH):
            raise InvalidRequest(
                f"A tool definition may nest objects and arrays at most {MAX_JSON_DEPTH} deep.",
                param=f"tools[{index}]",
            )
    return tools


def _template_message(message: ChatMessage, index: int) -> dict[str, Any]:
    """A message as chat templates expect it: plain-text content, arguments as objects."""
    role = "system" if message.role == "developer" else message.role
    rendered: dict[str, Any] = {"role": role, "content": _text_content(message, index)}
    if message.name is not None:
        rendered["name"] = message.name
    if message.tool_calls:
        rendered["tool_calls"] = [_template_tool_call(call) for call in message.tool_calls]
    if message.tool_call_id is not None:
        rendered["tool_call_id"] = message.tool_call_id
    return rendered


def _text_content(message: ChatMessage, index: int) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    texts: list[str] = []
    for part in message.content:
        if isinstance(part, ImagePart):
            raise InvalidRequest(
                "This model does not accept images.", param=f"messages[{index}].content"
            )
        texts.append(part.text)
    return "\n".join(texts)


def _template_tool_call(call: ToolCall) -> dict[str, Any]:
    """A past tool call; arguments that are not JSON, or nest too deep, stay as written."""
    try:
        arguments: Any = load_json(call.function.arguments)
    except ValueError:
        arguments = call.function.arguments
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.function.name, "arguments": arguments},
    }
