"""An OpenAI-compatible engine's event stream, turned into generation chunks.

:func:`sse_lines` splits the body into lines at CR, LF or CRLF only (a JSON string may
hold U+2028 and other line breaks raw); :class:`StreamTranslator` reads each ``data:``
line and keeps how the stream ended. The engine is not trusted: an event that is not
JSON, nests deeper than :data:`MAX_JSON_DEPTH`, reports an error or ends the
generation as failed is a :class:`BackendError`; usage that is not a sane count is
ignored (and estimated at about four characters a token).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncGenerator, AsyncIterable
from typing import Any

import orjson
from pydantic import ValidationError

from infermesh.errors import BackendError
from infermesh.protocol.chat import ChatCompletionRequest, FinishReason, ToolCallDelta, Usage
from infermesh.protocol.generation import GenerationChunk
from infermesh.protocol.json_depth import MAX_JSON_DEPTH
from infermesh.worker.toolcalls import load_json, nests_deeper_than

logger = logging.getLogger(__name__)

_CHARS_PER_TOKEN = 4
_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "function_call": "tool_calls",
}
_FAILED_FINISH_REASONS = frozenset({"abort", "error"})
MAX_LINE = 16 * 1024 * 1024
"""The longest event line accepted (a tool call's arguments come in one piece at most)."""


async def sse_lines(chunks: AsyncIterable[bytes]) -> AsyncGenerator[bytes, None]:
    """The lines of an event stream, without their ends."""
    pending = b""
    async for data in chunks:
        text = pending + data
        if b"\r" in text:
            text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, pending = text.split(b"\n")
        if len(pending) > MAX_LINE:
            raise BackendError("the upstream engine sent an event line that is too long")
        for line in lines:
            yield line
    if pending:
        yield pending


class StreamTranslator:
    """Turns the engine's server-sent events into chunks and remembers how it ended."""

    def __init__(self, request: ChatCompletionRequest) -> None:
        self._request = request
        self._prompt_tokens: int | None = None
        self._generated_chars = 0
        self._content_chunks = 0
        self.finish_reason: FinishReason | None = None
        self.usage: Usage | None = None
        self.done = False

    @property
    def estimated_usage(self) -> bool:
        return self.usage is None

    def feed(self, line: bytes) -> GenerationChunk | None:
        """Take one line of the stream; return a chunk if it carried new output."""
        if not line.startswith(b"data:"):
            return None  # blank separators, comments, event names
        data = line[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return None
        event = _decode_event(data)
        raw_usage = event.get("usage")
        if raw_usage is not None:
            self.usage = _parse_usage(raw_usage) or self.usage
        choice = _first_choice(event.get("choices"))
        if choice is None:
            return None
        if choice.get("finish_reason"):
            self.finish_reason = _finish_reason(choice["finish_reason"])
        return self._delta_chunk(choice.get("delta"))

    def final_chunk(self) -> GenerationChunk:
        """The end of the generation; usage is estimated if the engine sent none."""
        if self.finish_reason is None:
            raise BackendError("the upstream engine's stream ended before the generation finished")
        return GenerationChunk(
            finish_reason=self.finish_reason, usage=self.usage or self._estimate_usage()
        )

    def _delta_chunk(self, delta: Any) -> GenerationChunk | None:
        if not isinstance(delta, dict):
            return None
        content = delta.get("content") or None
        raw_calls = delta.get("tool_calls")
        if content is None and not raw_calls:
            return None
        if not isinstance(content, str | None):
            raise BackendError("the upstream engine sent a malformed stream (content)")
        tool_calls = _tool_call_deltas(raw_calls)
        self._generated_chars += len(content or "") + _tool_call_chars(tool_calls)
        self._content_chunks += 1
        if tool_calls is None:
            return GenerationChunk(content=content, progress=self._progress())
        return GenerationChunk(content=content, tool_calls=tool_calls, progress=self._progress())

    def _progress(self) -> Usage:
        """Tokens so far: the engine's own running usage if it sends one, else an estimate
        (an engine streams about one token a chunk, and about four characters a token)."""
        if self.usage is not None:
            return self.usage
        prompt = self._estimated_prompt_tokens()
        completion = max(self._content_chunks, _estimate_tokens(self._generated_chars))
        return _usage(prompt, completion)

    def _estimate_usage(self) -> Usage:
        """A rough count (about four characters a token), for engines that report none."""
        return _usage(self._estimated_prompt_tokens(), _estimate_tokens(self._generated_chars))

    def _estimated_prompt_tokens(self) -> int:
        if self._prompt_tokens is None:
            self._prompt_tokens = _estimate_tokens(_prompt_chars(self._request))
        return self._prompt_tokens


def _usage(prompt: int, completion: int) -> Usage:
    """Usage from counts this module made (non-negative, bounded by what was read)."""
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def _load_event(data: bytes) -> Any:
    """The JSON of one event, nested at most :data:`MAX_JSON_DEPTH` deep (else ValueError)."""
    if data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH and nests_deeper_than(
        data.decode(errors="replace"), MAX_JSON_DEPTH
    ):
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return load_json(data.decode(errors="replace"))  # NaN, huge numbers: json's grammar


def _decode_event(data: bytes) -> dict[str, Any]:
    try:
        event = _load_event(data)
    except ValueError as exc:
        raise BackendError("the upstream engine sent a malformed stream (bad JSON)") from exc
    if not isinstance(event, dict):
        raise BackendError("the upstream engine sent a malformed stream (not an object)")
    if "error" in event or event.get("object") == "error":
        logger.warning("upstream engine reported an error in the middle of a stream")
        raise BackendError("the upstream engine failed during the generation")
    return event


def _first_choice(choices: Any) -> dict[str, Any] | None:
    """The choice with index 0 (a job has one choice; others are ignored)."""
    if not isinstance(choices, list):
        return None
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            return choice
    return None


def _finish_reason(raw: Any) -> FinishReason:
    reason = str(raw)
    if reason in _FAILED_FINISH_REASONS:
        raise BackendError(f"the upstream engine ended the generation with '{reason}'")
    return _FINISH_REASONS.get(reason, "stop")


def _tool_call_deltas(raw: Any) -> list[ToolCallDelta] | None:
    if not raw:
        return None
    if not isinstance(raw, list):
        raise BackendError("the upstream engine sent a malformed stream (tool_calls)")
    try:
        # Some engines leave out ``index`` when there is one call per delta.
        return [ToolCallDelta.model_validate({"index": i, **call}) for i, call in enumerate(raw)]
    except (ValidationError, TypeError) as exc:
        raise BackendError("the upstream engine sent a malformed stream (tool_calls)") from exc


def _tool_call_chars(tool_calls: list[ToolCallDelta] | None) -> int:
    functions = [call.function for call in tool_calls or [] if call.function is not None]
    return sum(len(f.name or "") + len(f.arguments or "") for f in functions)


def _parse_usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    total = raw.get("total_tokens")
    try:
        return Usage.model_validate(
            {**raw, "total_tokens": total if isinstance(total, int) else prompt + completion}
        )
    except ValidationError:
        return None


def _prompt_chars(request: ChatCompletionRequest) -> int:
    chars = 0
    for message in request.messages:
        if isinstance(message.content, str):
            chars += len(message.content)
        elif message.content is not None:
            chars += sum(len(getattr(part, "text", "")) for part in message.content)
        chars += sum(len(call.function.arguments) for call in message.tool_calls or [])
    return chars


def _estimate_tokens(chars: int) -> int:
    return math.ceil(chars / _CHARS_PER_TOKEN)
