"""Anthropic's system prompt and messages as chat messages, each with its origin (the
Anthropic parameter it was made of). ``thinking`` blocks of earlier assistant turns are
left out, as Anthropic leaves them out of the context."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from infermesh.chat.anthropic.refusals import refuse, shown
from infermesh.protocol.anthropic import (
    InputImageBlock,
    InputMessage,
    InputTextBlock,
    InputToolUseBlock,
    OtherBlock,
    OtherSource,
    ToolResultBlock,
)
from infermesh.protocol.chat import (
    ChatMessage,
    ContentPart,
    FunctionCall,
    ImagePart,
    ImageURL,
    TextPart,
    ToolCall,
)
from infermesh.protocol.json_depth import MAX_JSON_DEPTH, structure_nests_deeper_than

_SKIPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one chat message came from: the Anthropic parameter it was made of, and
    that of each of its content parts."""

    path: str
    parts: tuple[str, ...] = ()


@dataclass
class Conversation:
    """The chat messages made so far, each with its origin."""

    messages: list[ChatMessage] = field(default_factory=list)
    origins: list[Origin] = field(default_factory=list)

    def append(self, message: ChatMessage, origin: Origin) -> None:
        self.messages.append(message)
        self.origins.append(origin)

    def add_system(self, system: str | list[InputTextBlock] | None) -> None:
        if isinstance(system, str):
            if system:
                self.append(ChatMessage(role="system", content=system), Origin("system"))
        elif system:
            self._add_texts("system", "system", system)

    def add(self, message: InputMessage, path: str) -> None:
        content = message.content
        if isinstance(content, str):
            self.append(ChatMessage(role=message.role, content=content), Origin(path))
            return
        if not content:
            refuse(
                f"{path}.content", "A message's content must not be empty.", code="invalid_request"
            )
        if message.role == "assistant":
            self._add_assistant(content, path)
        elif message.role == "system":
            self._add_texts("system", path, content)
        else:
            self._add_user(content, path)

    def _add_texts(self, role: str, path: str, blocks: list[Any]) -> None:
        parts = Parts()
        for index, block in enumerate(blocks):
            where = f"{path}[{index}]" if path == "system" else f"{path}.content[{index}]"
            if not isinstance(block, InputTextBlock):
                refuse(f"{where}.type", f"A {role} message holds only text blocks.")
            parts.add_text(block, where)
        self.append(ChatMessage(role="system", content=parts.content()), parts.origin(path))

    def _add_user(self, blocks: list[Any], path: str) -> None:
        parts = Parts()
        for index, block in enumerate(blocks):
            where = f"{path}.content[{index}]"
            if isinstance(block, ToolResultBlock):
                if parts.parts:
                    refuse(
                        where, "tool_result blocks must come before the other blocks of a message."
                    )
                message = ChatMessage(
                    role="tool", tool_call_id=block.tool_use_id, content=_tool_result(block, where)
                )
                self.append(message, Origin(where))
            elif isinstance(block, InputTextBlock):
                parts.add_text(block, where)
            elif isinstance(block, InputImageBlock):
                parts.add_image(block, where)
            else:
                refuse(
                    f"{where}.type",
                    f"'{shown(block.type)}' blocks are not supported in user messages.",
                )
        if parts.parts:
            self.append(ChatMessage(role="user", content=parts.content()), parts.origin(path))

    def _add_assistant(self, blocks: list[Any], path: str) -> None:
        parts, calls = Parts(), []
        for index, block in enumerate(blocks):
            where = f"{path}.content[{index}]"
            if isinstance(block, InputTextBlock):
                parts.add_text(block, where)
            elif isinstance(block, InputToolUseBlock):
                calls.append(_tool_call(block, where))
            elif not (isinstance(block, OtherBlock) and block.type in _SKIPPED_BLOCKS):
                refuse(
                    f"{where}.type",
                    f"'{shown(block.type)}' blocks are not supported in assistant messages.",
                )
        content = parts.content() if parts.parts else (None if calls else "")
        message = ChatMessage(role="assistant", content=content, tool_calls=calls or None)
        self.append(message, parts.origin(path))


@dataclass
class Parts:
    """The content parts of one chat message, with the parameter each came from."""

    parts: list[ContentPart] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def add_text(self, block: InputTextBlock, path: str) -> None:
        if block.citations:
            refuse(f"{path}.citations", "Citations are not supported by infermesh.")
        self.parts.append(TextPart(type="text", text=block.text))
        self.paths.append(path)

    def add_image(self, block: InputImageBlock, path: str) -> None:
        source = block.source
        if isinstance(source, OtherSource):
            refuse(
                f"{path}.source.type",
                f"Image source '{shown(source.type)}' is not supported: send images inline, as "
                "source type 'base64' (infermesh does not fetch URLs or files).",
            )
        url = f"data:{source.media_type};base64,{source.data}"
        self.parts.append(ImagePart(type="image_url", image_url=ImageURL(url=url)))
        self.paths.append(path)

    def content(self) -> str | list[ContentPart]:
        """One text as a string; anything else (several texts, images) as parts."""
        only = self.parts[0] if len(self.parts) == 1 else None
        return only.text if isinstance(only, TextPart) else list(self.parts)

    def origin(self, path: str) -> Origin:
        return Origin(path, tuple(self.paths))


def _tool_call(block: InputToolUseBlock, path: str) -> ToolCall:
    if structure_nests_deeper_than(block.input, MAX_JSON_DEPTH):
        refuse(
            f"{path}.input",
            f"A tool input may nest objects and arrays at most {MAX_JSON_DEPTH} levels deep.",
            code="json_too_deep",
        )
    arguments = json.dumps(block.input, ensure_ascii=False)
    return ToolCall(id=block.id, function=FunctionCall(name=block.name, arguments=arguments))


def _tool_result(block: ToolResultBlock, path: str) -> str | list[ContentPart]:
    """A tool's answer as text; one that reports an error says so first (chat tool
    messages have no error flag)."""
    content = block.content
    if content is None:
        texts: list[str] = []
    elif isinstance(content, str):
        texts = [content]
    else:
        texts = []
        for index, item in enumerate(content):
            if not isinstance(item, InputTextBlock):
                refuse(
                    f"{path}.content[{index}].type",
                    f"'{shown(item.type)}' blocks are not supported in tool results: only text is.",
                )
            texts.append(item.text)
    if block.is_error:
        texts = [f"Error: {texts[0]}" if texts else "Error", *texts[1:]]
    if len(texts) == 1:
        return texts[0]
    return [TextPart(type="text", text=text) for text in texts] if texts else ""
