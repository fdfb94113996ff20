"""Anthropic's tools and tool choice as chat function tools and tool choice."""

from __future__ import annotations

from typing import Any

from infermesh.chat.anthropic.refusals import refuse, shown
from infermesh.protocol.anthropic import (
    CustomTool,
    MessagesInput,
    ServerTool,
    ToolChoiceAny,
    ToolChoiceAuto,
    ToolChoiceNone,
    ToolChoiceTool,
)
from infermesh.protocol.chat import (
    FunctionDefinition,
    NamedToolChoice,
    Tool,
    ToolChoice,
    ToolChoiceFunction,
)


def tool_fields(body: MessagesInput) -> dict[str, Any]:
    """The chat request fields of ``body``'s tools: ``tools``, ``tool_choice``, and
    ``parallel_tool_calls`` when parallel use is disabled."""
    tools = [_tool(tool, f"tools[{index}]") for index, tool in enumerate(body.tools or ())]
    choice, parallel = _tool_choice(body, bool(tools))
    fields: dict[str, Any] = {"tools": tools or None, "tool_choice": choice}
    if parallel is not None:
        fields["parallel_tool_calls"] = parallel
    return fields


def _tool(tool: CustomTool | ServerTool, path: str) -> Tool:
    if isinstance(tool, ServerTool):
        refuse(
            f"{path}.type",
            f"'{shown(tool.type)}' is a server tool, which infermesh does not run: declare "
            "a custom tool with an input_schema instead.",
        )
    if tool.defer_loading:
        refuse(f"{path}.defer_loading", "Deferred tool loading is not supported by infermesh.")
    if tool.allowed_callers not in (None, [], ["direct"]):
        refuse(f"{path}.allowed_callers", "Tools can only be called directly by the model.")
    if tool.input_examples:
        refuse(f"{path}.input_examples", "Tool input examples are not supported by infermesh.")
    definition = FunctionDefinition(
        name=tool.name,
        description=tool.description,
        parameters=tool.input_schema,
        strict=tool.strict,
    )
    return Tool(type="function", function=definition)


def _tool_choice(body: MessagesInput, has_tools: bool) -> tuple[ToolChoice | None, bool | None]:
    """The chat tool choice, and ``parallel_tool_calls`` (False when parallel use is
    disabled). Without tools, ``auto`` and ``none`` choose nothing and are left out."""
    choice = body.tool_choice
    if choice is None or (not has_tools and isinstance(choice, ToolChoiceAuto | ToolChoiceNone)):
        return None, None
    if isinstance(choice, ToolChoiceNone):
        return "none", None
    parallel = False if choice.disable_parallel_tool_use else None
    if isinstance(choice, ToolChoiceAny):
        return "required", parallel
    if isinstance(choice, ToolChoiceTool):
        named = NamedToolChoice(type="function", function=ToolChoiceFunction(name=choice.name))
        return named, parallel
    return "auto", parallel
