"""One worker's WebSocket, as frames: sent in order, received and parsed with limits.

The socket is served without permessage-deflate (uvicorn's ``ws_per_message_deflate``
is off, and the worker does not offer it): frames are small and many, and compressing
each one costs more CPU than the bytes it saves on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import get_args

from pydantic import BaseModel, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from infermesh.errors import WorkerLost
from infermesh.mesh.remote import GatewayMessage, WorkerMessage
from infermesh.protocol.wire import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Batch,
    Chunk,
    Done,
    Drain,
    Heartbeat,
    Hello,
    JobError,
    encode_gateway_frame,
    worker_frames,
)

logger = logging.getLogger(__name__)

POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011
NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
_MAX_CLOSE_REASON_BYTES = 123
_MAX_UTF8_BYTES_PER_CHAR = 4


@dataclass(frozen=True)
class Disconnected:
    """The worker closed the connection (or it broke)."""

    code: int
    reason: str = ""


class MalformedFrame(Exception):
    """A frame that is not one valid worker frame (or is too large)."""


class WebSocketLink:
    """A :class:`~infermesh.mesh.remote.FrameLink` over an accepted Starlette WebSocket.

    Sends are serialized (jobs, cancels and heartbeats come from different tasks) and
    a failed send raises :class:`WorkerLost`.
    """

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket
        self._send_lock = asyncio.Lock()
        self.version = PROTOCOL_VERSION
        """The protocol version of the connection, once the hello is answered."""

    async def send(self, frame: GatewayMessage) -> None:
        async with self._send_lock:
            try:
                await self._websocket.send_text(encode_gateway_frame(frame, self.version))
            except (WebSocketDisconnect, RuntimeError, OSError) as exc:
                raise WorkerLost("the worker's connection is closed") from exc

    async def receive_text(self) -> str | Disconnected:
        """The next text frame; raises :class:`MalformedFrame` for binary or oversized ones."""
        try:
            message = await self._websocket.receive()
        except (RuntimeError, OSError):
            return Disconnected(1006, "connection lost")
        if message["type"] == "websocket.disconnect":
            return Disconnected(int(message.get("code") or 1005), str(message.get("reason") or ""))
        text = message.get("text")
        if text is None:
            raise MalformedFrame("binary frame (frames are JSON text)")
        if _utf8_size_over(text, MAX_FRAME_BYTES):
            raise MalformedFrame(f"frame larger than {MAX_FRAME_BYTES} bytes")
        return str(text)

    async def receive(self) -> WorkerMessage | Disconnected:
        """The next frame; raises :class:`MalformedFrame` for one that is not valid."""
        text = await self.receive_text()
        if isinstance(text, Disconnected):
            return text
        try:
            return worker_frames.validate_json(text)
        except ValidationError as exc:
            raise MalformedFrame(describe_invalid(exc)) from None

    async def close(self, code: int, reason: str) -> None:
        """Close the connection with ``code`` and ``reason`` (if it is still open)."""
        if self._websocket.application_state == WebSocketState.DISCONNECTED:
            return
        if self._websocket.client_state == WebSocketState.DISCONNECTED:
            return
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await self._websocket.close(code, close_reason(reason))


def _utf8_size_over(text: str, limit: int) -> bool:
    """Whether ``text`` takes more than ``limit`` bytes of UTF-8 (encoded only when its
    length leaves it in doubt)."""
    if len(text) * _MAX_UTF8_BYTES_PER_CHAR <= limit:
        return False
    return len(text) > limit or len(text.encode()) > limit


def _field_names(model: type[BaseModel], seen: set[str]) -> set[str]:
    names: set[str] = set()
    if model.__name__ in seen:
        return names
    seen.add(model.__name__)
    for name, info in model.model_fields.items():
        names.add(name)
        for argument in _types_in(info.annotation):
            if isinstance(argument, type) and issubclass(argument, BaseModel):
                names |= _field_names(argument, seen)
    return names


def _types_in(annotation: object) -> list[object]:
    arguments = list(get_args(annotation))
    found: list[object] = [annotation]
    for argument in arguments:
        found += _types_in(argument)
    return found


_KNOWN_NAMES = frozenset(
    _field_names(Hello, set())
    | {
        name
        for frame in (Heartbeat, Chunk, Done, JobError, Drain, Batch)
        for name in _field_names(frame, set())
    }
    | {"hello", "heartbeat", "chunk", "done", "error", "drain", "batch"}
)


def _known(part: str | int) -> str:
    return str(part) if isinstance(part, int) or part in _KNOWN_NAMES else "?"


def close_reason(reason: str) -> str:
    """``reason`` cut to what a WebSocket close frame can carry (123 bytes of UTF-8)."""
    encoded = reason.encode()
    if len(encoded) <= _MAX_CLOSE_REASON_BYTES:
        return reason
    return encoded[: _MAX_CLOSE_REASON_BYTES - 3].decode(errors="ignore") + "..."


def describe_invalid(exc: ValidationError) -> str:
    """A short account of why a frame is invalid (never the frame's content: a key the
    worker made up is shown as ``?``, since it could carry a prompt)."""
    first = exc.errors(include_input=False, include_url=False)[0]
    location = ".".join(_known(part) for part in first["loc"])[:100] or "frame"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"malformed frame: {location}: {first['msg']}{more}"
