"""What the Messages API tests send, and how they read what came back."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
from anthropic.types import MessageParam, ToolParam

from tests.fakes.engine import ScriptedEngine

JSON = dict[str, Any]

PNG = (  # a 1x1 PNG, base64
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmM"
    "IQAAAABJRU5ErkJggg=="
)
PNG_BLOCK: JSON = {
    "type": "image",
    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
}
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "The weather of a city.",
    "input_schema": {"type": "object", "properties": {"echo": {"type": "string"}}},
}


def user(text: str) -> list[MessageParam]:
    return [{"role": "user", "content": text}]


def tool_result(tool_use_id: str, content: str, **options: Any) -> MessageParam:
    """A user turn that answers the tool call ``tool_use_id``."""
    block = {"type": "tool_result", "tool_use_id": tool_use_id, "content": content, **options}
    return {"role": "user", "content": [block]}  # type: ignore[list-item]


def marker() -> str:
    """A word no other test sends, to find this test's request at the engine."""
    return f"m{uuid.uuid4().hex[:10]}"


def engine_body(engine: ScriptedEngine, word: str) -> JSON:
    """The last request the engine received whose messages hold ``word``."""
    found = [body for body in engine.requests if word in json.dumps(body.get("messages"))]
    assert found, f"no engine request holds {word!r}"
    return found[-1]


def sse_events(response: httpx.Response) -> list[tuple[str, JSON]]:
    """The (event name, data) pairs of a whole server-sent event stream."""
    events = []
    for frame in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events
