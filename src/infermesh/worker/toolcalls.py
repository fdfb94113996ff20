"""Tool calls in Qwen/Hermes output: ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``.

:func:`parse_tool_calls` reads a finished text; :class:`ToolCallStream` is fed the text
as it is generated, lets through what is surely content and holds back everything from
the first ``<tool_call>`` on until the end. A block whose JSON does not parse, or nests
deeper than :data:`MAX_JSON_DEPTH`, is plain content: nothing here raises on model output.
:func:`load_json` is the depth-bounded ``json.loads`` for anything the worker reads from
model output or request data.
"""

from __future__ import annotations

import json
import operator
import re
import secrets
from itertools import accumulate, count
from typing import Any

from infermesh.protocol.chat import FunctionCall, ToolCall
from infermesh.protocol.json_depth import MAX_JSON_DEPTH

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
# Brackets as steps of a running sum: an opening one counts 2, a closing one 0, so
# after the i-th bracket the sum minus i is the number of levels open.
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")

_BLOCK = re.compile(
    rf"{re.escape(TOOL_CALL_OPEN)}(.*?)(?:{re.escape(TOOL_CALL_CLOSE)}|\Z)", re.DOTALL
)


def new_tool_call_id() -> str:
    """An id in OpenAI's style, ``call_`` and random hex."""
    return f"call_{secrets.token_hex(12)}"


def parse_tool_calls(text: str) -> tuple[str | None, list[ToolCall]]:
    """Split ``text`` into its content (``None`` if empty) and the tool calls it holds.

    A final ``<tool_call>`` whose closing tag never came is still read if its JSON is
    complete (a model may stop right after the object).
    """
    calls: list[ToolCall] = []
    content_parts: list[str] = []
    position = 0
    for match in _BLOCK.finditer(text):
        call = _tool_call_from_json(match.group(1))
        if call is None:
            continue
        calls.append(call)
        content_parts.append(text[position : match.start()])
        position = match.end()
    content_parts.append(text[position:])
    content = "".join(content_parts)
    if calls:
        content = content.strip()
    return (content or None), calls


def _tool_call_from_json(body: str) -> ToolCall | None:
    """The tool call in one block's body, or ``None`` when it is not a valid call."""
    try:
        payload = load_json(body.strip())
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    name = payload.get("name")
    if not isinstance(name, str) or not name:
        return None
    arguments = _arguments_json(payload.get("arguments", payload.get("parameters", {})))
    return ToolCall(id=new_tool_call_id(), function=FunctionCall(name=name, arguments=arguments))


def _arguments_json(arguments: Any) -> str:
    """Arguments as the JSON string OpenAI sends (a string the model wrote is kept)."""
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)


def load_json(text: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for untrusted text: ``ValueError`` when it is not JSON or nests too deep.

    It never raises ``RecursionError``: text that may nest arrays and objects deeper than
    ``max_depth`` is refused before it is parsed.
    """
    if nests_deeper_than(text, max_depth):
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    return json.loads(text)


def nests_deeper_than(text: str, depth: int) -> bool:
    """Whether ``json.loads(text)`` may nest arrays and objects more than ``depth`` levels.

    Brackets inside strings do not count. The answer is exact for JSON; for other text it
    errs towards deep, never below the depth ``json.loads`` reaches before it fails. The
    scan runs in C string and iterator operations, not a Python loop per character: ten
    megabytes take a second or two at worst, much less unless they are mostly brackets.
    """
    if text.count("[") + text.count("{") <= depth:
        return False
    outside_strings = _JSON_STRING.sub(b"", text.encode("utf-8", "surrogatepass"))
    steps = outside_strings.translate(_BRACKET_STEPS, _NOT_BRACKETS)
    if b"\x02" * (depth + 1) in steps:  # that many brackets opened in a row
        return True
    return max(map(operator.sub, accumulate(steps), count(1)), default=0) > depth


def held_back_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``marker``."""
    for length in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-length:]):
            return length
    return 0


class ToolCallStream:
    """Incremental tool-call parsing for a streamed generation.

    :meth:`feed` returns the text that can be sent as content now; :meth:`finish`
    returns the content still held back and the tool calls found.
    """

    def __init__(self) -> None:
        self._pending = ""
        self._in_calls = False

    def feed(self, delta: str) -> str:
        """Take the next piece of generated text; return what is safe to emit as content."""
        self._pending += delta
        if self._in_calls:
            return ""
        start = self._pending.find(TOOL_CALL_OPEN)
        if start >= 0:
            self._in_calls = True
            safe, self._pending = self._pending[:start], self._pending[start:]
            return safe
        keep = held_back_suffix(self._pending, TOOL_CALL_OPEN)
        cut = len(self._pending) - keep
        safe, self._pending = self._pending[:cut], self._pending[cut:]
        return safe

    def finish(self) -> tuple[str, list[ToolCall]]:
        """End of generation: the held-back content (maybe empty) and the tool calls."""
        pending, self._pending = self._pending, ""
        if not self._in_calls:
            return pending, []
        content, calls = parse_tool_calls(pending)
        return content or "", calls
