"""A scripted OpenAI-compatible engine: the stand-in for vLLM, SGLang or llama.cpp in tests.

It is not infermesh code; it speaks OpenAI's wire protocol (``GET /v1/models``,
``POST /v1/chat/completions``, streamed as server-sent events) and answers
deterministically:

* the reply is ``"echo: " + <text of the last user message>``; every whitespace-led
  word is one token and one stream chunk (``"echo:"``, ``" hello"``, ...);
* ``max_tokens`` / ``max_completion_tokens`` truncate (finish ``length``); ``stop``
  strings cut the text before their first occurrence (finish ``stop``);
* with images in the user messages the reply is ``"saw N image(s)"``;
* with ``tools`` (``tool_choice`` not ``"none"``) and a user message last, it calls
  the first tool (or the named one) with arguments ``{"echo": <last user text>}``;
* with a ``tool`` message last the reply is ``"tool said: " + <its content>``;
* with ``report_usage=False`` it ignores ``stream_options.include_usage``, as some
  engines do (non-streamed answers still carry usage);
* model ``"fail-500"`` answers 500, ``"bad-request"`` 400 (``"scripted rejection"``),
  any other model it does not serve 404 (``model_not_found``).

Precedence: a tool message last, then a tool call, then images, then the echo.
``prompt_tokens`` is the number of whitespace words in all message text.

``POST /v1/embeddings`` answers each input (a string, or an array of token ids) with a
unit vector of ``embedding_dimensions`` numbers drawn from the SHA-256 of the input (the
same input, the same vector), cut to ``dimensions`` and normalised again if asked, as
float lists or base64 of float32 (``encoding_format``); an input's tokens are its
whitespace words (or its token ids).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import re
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.support.servers import serve_app

DEFAULT_MODELS = ("scripted-1",)
FAIL_MODEL = "fail-500"
REJECT_MODEL = "bad-request"
_FINGERPRINT = "fp_scripted"
_TOKEN = re.compile(r"\s*\S+")

JSON = dict[str, Any]


@dataclass
class _Reply:
    """What the engine answers: text tokens, or one tool call whose arguments stream."""

    finish_reason: str
    tokens: list[str] = field(default_factory=list)
    tool_name: str | None = None
    tool_call_id: str = ""
    argument_pieces: list[str] = field(default_factory=list)

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens) + len(self.argument_pieces)

    @property
    def text(self) -> str | None:
        return None if self.tool_name else "".join(self.tokens)


class ScriptedEngine:
    """An OpenAI-compatible engine with scripted answers; serve ``app`` to use it.

    ``requests`` holds every JSON body POSTed to it, ``disconnects`` counts streams
    whose client went away before the end (``disconnected`` is set on the first).
    ``base_url`` (``http://127.0.0.1:PORT/v1``) is set by :func:`run_engine`.
    """

    def __init__(
        self,
        *,
        models: Sequence[str] | None = None,
        chunk_delay: float = 0.0,
        api_key: str | None = None,
        report_usage: bool = True,
        embedding_dimensions: int = 16,
    ) -> None:
        self.models = list(models) if models is not None else list(DEFAULT_MODELS)
        self.embedding_dimensions = embedding_dimensions
        self.chunk_delay = chunk_delay
        self.api_key = api_key
        self.report_usage = report_usage
        self.base_url = ""
        self.requests: list[JSON] = []
        self.disconnects = 0
        self.disconnected = threading.Event()
        self.events_sent = 0  # stream events written, over all requests
        self.app = Starlette(
            routes=[
                Route("/v1/models", self._list_models, methods=["GET"]),
                Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            ]
        )

    async def _accepted(
        self, request: Request, check: Callable[[JSON], Response | None]
    ) -> JSON | Response:
        """The JSON body of a POST (kept in :attr:`requests`), or the refusal to answer."""
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request.")
        self.requests.append(body)
        refusal = self._check_auth(request) or check(body)
        return body if refusal is None else refusal

    async def _embeddings(self, request: Request) -> Response:
        body = await self._accepted(request, self._check_model)
        if isinstance(body, Response):
            return body
        inputs = body.get("input")
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and _is_ids(inputs)):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            return _error(400, "'input' must be a string or a non-empty array.", param="input")
        dimensions = body.get("dimensions") or self.embedding_dimensions
        base64_wanted = body.get("encoding_format") == "base64"
        data, tokens = [], 0
        for index, item in enumerate(inputs):
            vector = embedding_of(item, self.embedding_dimensions, dimensions)
            tokens += len(item) if isinstance(item, list) else len(_TOKEN.findall(item))
            value: Any = encode_vector(vector) if base64_wanted else vector
            data.append({"object": "embedding", "index": index, "embedding": value})
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse(
            {"object": "list", "data": data, "model": body["model"], "usage": usage}
        )

    async def _list_models(self, request: Request) -> Response:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": "scripted"}
            for model in self.models
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _chat_completions(self, request: Request) -> Response:
        body = await self._accepted(request, self._check_request)
        if isinstance(body, Response):
            return body
        reply = _plan_reply(body)
        head = _head(body["model"])
        if body.get("stream"):
            asked = bool((body.get("stream_options") or {}).get("include_usage"))
            include_usage = asked and self.report_usage
            events = _stream_events(reply, head, body, include_usage=include_usage)
            return _EventStream(
                events,
                delay=self.chunk_delay,
                on_disconnect=self._note_gone,
                on_event=self._note_event,
            )
        return JSONResponse(_completion(reply, head, body))

    def _check_auth(self, request: Request) -> Response | None:
        if self.api_key is None:
            return None
        if request.headers.get("authorization") == f"Bearer {self.api_key}":
            return None
        return _error(401, "Incorrect API key provided.", code="invalid_api_key")

    def _check_request(self, body: JSON) -> Response | None:
        refusal = self._check_model(body)
        if refusal is not None:
            return refusal
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error(400, "'messages' must be a non-empty array.", param="messages")
        return None

    def _check_model(self, body: JSON) -> Response | None:
        model = body.get("model")
        if model == FAIL_MODEL:
            return _error(500, "scripted failure", error_type="server_error")
        if model == REJECT_MODEL:
            return _error(400, "scripted rejection", param="messages")
        if model not in self.models:
            message = f"The model `{model}` does not exist or you do not have access to it."
            return _error(404, message, code="model_not_found", param="model")
        return None

    def _note_gone(self) -> None:
        self.disconnects += 1
        self.disconnected.set()

    def _note_event(self) -> None:
        self.events_sent += 1


@contextmanager
def run_engine(
    *,
    models: Sequence[str] | None = None,
    chunk_delay: float = 0.0,
    api_key: str | None = None,
    report_usage: bool = True,
    embedding_dimensions: int = 16,
) -> Iterator[ScriptedEngine]:
    """Serve a :class:`ScriptedEngine` on a real uvicorn server for the ``with`` block."""
    engine = ScriptedEngine(
        models=models,
        chunk_delay=chunk_delay,
        api_key=api_key,
        report_usage=report_usage,
        embedding_dimensions=embedding_dimensions,
    )
    with serve_app(engine.app) as root:
        engine.base_url = f"{root}/v1"
        yield engine


class _EventStream(Response):
    """Server-sent events, one per chunk, that notice a client going away mid-stream."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: list[JSON],
        *,
        delay: float,
        on_disconnect: Callable[[], None],
        on_event: Callable[[], None] = lambda: None,
    ) -> None:
        self.events = events
        self.delay = delay
        self.on_disconnect = on_disconnect
        self.on_event = on_event
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()
        watcher = asyncio.create_task(_wait_for_disconnect(receive, gone))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            payloads = [*map(json.dumps, self.events), "[DONE]"]
            for index, payload in enumerate(payloads):
                if await _client_gone(gone, self.delay if index else 0.0):
                    self.on_disconnect()
                    return
                body = f"data: {payload}\n\n".encode()
                await send({"type": "http.response.body", "body": body, "more_body": True})
                self.on_event()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()


async def _wait_for_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


async def _client_gone(gone: asyncio.Event, delay: float) -> bool:
    """Wait ``delay`` seconds (returning early if the client leaves); say if it left."""
    if delay > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gone.wait(), timeout=delay)
    else:
        await asyncio.sleep(0)
    return gone.is_set()


# --- what to answer ------------------------------------------------------------------


def _plan_reply(body: JSON) -> _Reply:
    messages: list[JSON] = body["messages"]
    last = messages[-1]
    if last.get("role") == "tool":
        return _text_reply("tool said: " + _message_text(last), body)
    tool_name = _chosen_tool(body, last)
    if tool_name is not None:
        return _tool_reply(tool_name, _last_user_text(messages))
    images = sum(_image_count(m) for m in messages if m.get("role") == "user")
    if images:
        return _text_reply(f"saw {images} image(s)", body)
    return _text_reply("echo: " + _last_user_text(messages), body)


def _chosen_tool(body: JSON, last: JSON) -> str | None:
    tools = body.get("tools") or []
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none" or last.get("role") != "user":
        return None
    if isinstance(choice, dict):
        return str(choice["function"]["name"])
    return str(tools[0]["function"]["name"])


def _text_reply(text: str, body: JSON) -> _Reply:
    finish = "stop"
    stops = body.get("stop") or []
    for stop in [stops] if isinstance(stops, str) else stops:
        text = text.split(stop, 1)[0]
    tokens = _TOKEN.findall(text)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None and len(tokens) > limit:
        tokens, finish = tokens[:limit], "length"
    return _Reply(finish_reason=finish, tokens=tokens)


def _tool_reply(tool_name: str, user_text: str) -> _Reply:
    arguments = json.dumps({"echo": user_text})
    return _Reply(
        finish_reason="tool_calls",
        tool_name=tool_name,
        tool_call_id=f"call_{uuid.uuid4().hex[:24]}",
        argument_pieces=_TOKEN.findall(arguments),
    )


def _message_text(message: JSON) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if part.get("type") == "text")
    return ""


def _last_user_text(messages: list[JSON]) -> str:
    users = [m for m in messages if m.get("role") == "user"]
    return _message_text(users[-1]) if users else ""


def _image_count(message: JSON) -> int:
    content = message.get("content")
    if not isinstance(content, list):
        return 0
    return sum(1 for part in content if part.get("type") == "image_url")


def _usage(reply: _Reply, body: JSON) -> JSON:
    prompt = sum(len(_message_text(m).split()) for m in body["messages"])
    completion = reply.completion_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


# --- OpenAI's shapes -----------------------------------------------------------------


def _head(model: str) -> JSON:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": _FINGERPRINT,
    }


def _completion(reply: _Reply, head: JSON, body: JSON) -> JSON:
    message: JSON = {"role": "assistant", "content": reply.text, "refusal": None}
    if reply.tool_name:
        function = {"name": reply.tool_name, "arguments": "".join(reply.argument_pieces)}
        message["tool_calls"] = [
            {"id": reply.tool_call_id, "type": "function", "function": function}
        ]
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": reply.finish_reason,
    }
    return {
        **head,
        "object": "chat.completion",
        "choices": [choice],
        "usage": _usage(reply, body),
    }


def _stream_events(reply: _Reply, head: JSON, body: JSON, *, include_usage: bool) -> list[JSON]:
    deltas: list[JSON] = [_first_delta(reply)]
    deltas += [{"content": token} for token in reply.tokens]
    deltas += [
        {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
        for piece in reply.argument_pieces
    ]
    extra: JSON = {"usage": None} if include_usage else {}
    events = [_chunk(head, delta, None, extra) for delta in deltas]
    events.append(_chunk(head, {}, reply.finish_reason, extra))
    if include_usage:
        events.append(
            {**_chunk(head, {}, None, extra), "choices": [], "usage": _usage(reply, body)}
        )
    return events


def _first_delta(reply: _Reply) -> JSON:
    if reply.tool_name is None:
        return {"role": "assistant", "content": "", "refusal": None}
    call = {
        "index": 0,
        "id": reply.tool_call_id,
        "type": "function",
        "function": {"name": reply.tool_name, "arguments": ""},
    }
    return {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}


def _chunk(head: JSON, delta: JSON, finish_reason: str | None, extra: JSON) -> JSON:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return {**head, "object": "chat.completion.chunk", "choices": [choice], **extra}


def _error(
    status: int,
    message: str,
    *,
    error_type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> JSONResponse:
    envelope = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return JSONResponse(envelope, status_code=status)


def _is_ids(value: list[Any]) -> bool:
    return all(isinstance(item, int) for item in value)


def embedding_of(item: str | list[int], size: int, dimensions: int) -> list[float]:
    """The engine's vector of an input: ``size`` numbers from its SHA-256, cut to
    ``dimensions`` and normalised (float32 values, as an engine sends them)."""
    seed = hashlib.sha256(json.dumps(item).encode()).digest()
    raw = [(seed[i % 32] + i * 7) % 255 - 127 + 0.5 for i in range(size)][:dimensions]
    norm = math.sqrt(sum(value * value for value in raw))
    vector = [value / norm for value in raw]
    return list(struct.unpack(f"<{len(vector)}f", struct.pack(f"<{len(vector)}f", *vector)))


def encode_vector(vector: list[float]) -> str:
    """A vector as base64 of little-endian float32 values."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
