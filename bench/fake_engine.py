"""A fast fake OpenAI-compatible engine, so that the engine is never the bottleneck.

Run: python bench/fake_engine.py --port 8001 [--tokens 32] [--model fast=0 --model slow=50]
    [--dimensions 768]

A raw asyncio (uvloop when installed) HTTP/1.1 server with keep-alive. It answers
``GET /v1/models`` and ``POST /v1/chat/completions``, plain or streamed as server-sent
events (chunked), in the shapes of tests/fakes/engine.py: a role delta, one delta per
token, a finish chunk, and the ``usage`` chunk when ``stream_options.include_usage``.
A reply has ``max_tokens`` (or ``max_completion_tokens``) tokens, else ``--tokens``.
Each ``--model NAME=MS`` is served with MS milliseconds between streamed tokens
(0: the whole stream in one write). ``POST /v1/embeddings`` answers every model with
unit vectors of ``dimensions`` (else ``--dimensions``) float32 values drawn from each
input's SHA-256, as base64 or as numbers (``encoding_format``), and a token per word.
Replies are cached by request body, so a repeated request costs a dictionary lookup and
one write.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import math
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

_CACHE_LIMIT = 4096
_HEAD_END = b"\r\n\r\n"
_JSON_HEAD = (
    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
)
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_LAST_CHUNK = b"0\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Reply:
    """What to write for one request: ``first`` at once, then each of ``rest`` after
    ``delay`` seconds (all at once when the delay is 0)."""

    first: bytes
    rest: tuple[bytes, ...] = ()
    delay: float = 0.0


def json_response(payload: object, status: str = "200 OK") -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _JSON_HEAD.format(status=status, length=len(body)).encode() + body


def error_response(status: str, message: str) -> Reply:
    envelope = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
    return Reply(json_response(envelope, status))


def sse_chunk(payload: object) -> bytes:
    data = b"data: " + (payload if isinstance(payload, bytes) else _dumps(payload)) + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _dumps(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _usage(body: dict, completion: int) -> dict[str, int]:
    messages = body.get("messages") or []
    prompt = sum(len(str(m.get("content") or "").split()) for m in messages if isinstance(m, dict))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _head(model: str) -> dict[str, object]:
    return {"id": "chatcmpl-bench", "created": int(time.time()), "model": model}


def completion_reply(body: dict, tokens: list[str]) -> Reply:
    message = {"role": "assistant", "content": "".join(tokens)}
    choice = {"index": 0, "message": message, "finish_reason": "length"}
    payload = {**_head(body["model"]), "object": "chat.completion", "choices": [choice]}
    return Reply(json_response({**payload, "usage": _usage(body, len(tokens))}))


def stream_reply(body: dict, tokens: list[str], delay: float) -> Reply:
    head = {**_head(body["model"]), "object": "chat.completion.chunk"}

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return sse_chunk({**head, "choices": [choice]})

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": token}) for token in tokens]
    events.append(chunk({}, "length"))
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append(sse_chunk({**head, "choices": [], "usage": _usage(body, len(tokens))}))
    events += [sse_chunk(b"[DONE]"), _LAST_CHUNK]
    if delay <= 0:
        return Reply(_STREAM_HEAD + b"".join(events))
    # The role delta and the first token at once; every later token after the delay.
    return Reply(_STREAM_HEAD + events[0] + events[1], tuple(events[2:]), delay)


def unit_vector(item: object, dimensions: int) -> bytes:
    """A unit vector of ``dimensions`` little-endian float32 values, the same for the
    same ``item`` (a string or a list of token ids)."""
    seed = hashlib.sha256(json.dumps(item).encode()).digest()
    numbers = random.Random(seed).random
    values = [numbers() - 0.5 for _ in range(dimensions)]
    norm = math.sqrt(sum(value * value for value in values)) or 1.0
    return struct.pack(f"<{dimensions}f", *(value / norm for value in values))


def embeddings_reply(body: dict, dimensions: int) -> Reply:
    inputs = body.get("input")
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and _all_ints(inputs)):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        return error_response("400 Bad Request", "'input' must be a string or a non-empty array")
    size = int(body.get("dimensions") or dimensions)
    as_base64 = body.get("encoding_format") == "base64"
    data, tokens = [], 0
    for index, item in enumerate(inputs):
        raw = unit_vector(item, size)
        value = (
            base64.b64encode(raw).decode() if as_base64 else list(struct.unpack(f"<{size}f", raw))
        )
        data.append({"object": "embedding", "index": index, "embedding": value})
        tokens += len(item) if isinstance(item, list) else len(str(item).split())
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return Reply(
        json_response({"object": "list", "data": data, "model": body["model"], "usage": usage})
    )


def _all_ints(values: list) -> bool:
    return all(type(value) is int for value in values)


class Engine:
    """Plans the reply to each request; ``models`` maps a model name to its token delay
    (embedding vectors have ``dimensions`` values unless a request asks for fewer)."""

    def __init__(
        self, models: dict[str, float], default_tokens: int, dimensions: int = 768
    ) -> None:
        self.models = models
        self.default_tokens = default_tokens
        self.dimensions = dimensions
        self._cache: dict[bytes, Reply] = {}
        self._embeddings_cache: dict[bytes, Reply] = {}
        listing = [{"id": name, "object": "model", "owned_by": "bench"} for name in models]
        self._models_reply = Reply(json_response({"object": "list", "data": listing}))

    def reply(self, method: bytes, path: bytes, body: bytes) -> Reply:
        if method == b"GET" and path.startswith(b"/v1/models"):
            return self._models_reply
        if method == b"POST" and path.startswith(b"/v1/chat/completions"):
            return _cached(self._cache, body, self._plan)
        if method == b"POST" and path.startswith(b"/v1/embeddings"):
            return _cached(self._embeddings_cache, body, self._plan_embeddings)
        return error_response("404 Not Found", "no such endpoint")

    def _request(self, raw: bytes) -> dict | Reply:
        """The JSON body of a request for a known model, or the error reply."""
        try:
            body = json.loads(raw)
        except ValueError:
            return error_response("400 Bad Request", "bad JSON")
        if not isinstance(body, dict) or body.get("model") not in self.models:
            return error_response("404 Not Found", "unknown model")
        return body

    def _plan_embeddings(self, raw: bytes) -> Reply:
        body = self._request(raw)
        return body if isinstance(body, Reply) else embeddings_reply(body, self.dimensions)

    def _plan(self, raw: bytes) -> Reply:
        body = self._request(raw)
        if isinstance(body, Reply):
            return body
        count = body.get("max_completion_tokens") or body.get("max_tokens") or self.default_tokens
        tokens = [f" t{index}" for index in range(int(count))]
        if body.get("stream"):
            return stream_reply(body, tokens, self.models[body["model"]])
        return completion_reply(body, tokens)


def _cached(cache: dict[bytes, Reply], body: bytes, plan: Callable[[bytes], Reply]) -> Reply:
    cached = cache.get(body)
    if cached is None:
        cached = plan(body)
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[body] = cached
    return cached


def _content_length(head: bytes) -> int:
    lowered = head.lower()
    start = lowered.find(b"\r\ncontent-length:")
    if start < 0:
        return 0
    end = lowered.find(b"\r\n", start + 2)
    return int(lowered[start + 17 : end if end >= 0 else None])


class EngineProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: requests one after another, each answered in full."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.streaming: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streaming is not None:
            self.streaming.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.streaming is None:
            self._serve_buffered()

    def _serve_buffered(self) -> None:
        while self.transport is not None and self.streaming is None:
            end = self.buffer.find(_HEAD_END)
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            total = end + 4 + _content_length(head)
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            method, path, _ = head.split(b" ", 2)
            self._send(self.engine.reply(method, path, body))

    def _send(self, reply: Reply) -> None:
        assert self.transport is not None
        self.transport.write(reply.first)
        if reply.rest:
            self.streaming = asyncio.get_running_loop().create_task(self._trickle(reply))

    async def _trickle(self, reply: Reply) -> None:
        for piece in reply.rest:
            await asyncio.sleep(reply.delay)
            if self.transport is None:
                return
            self.transport.write(piece)
        self.streaming = None
        self._serve_buffered()


def parse_models(values: list[str]) -> dict[str, float]:
    """``["fast=0", "slow=50"]`` as ``{"fast": 0.0, "slow": 0.05}`` (seconds a token)."""
    models = {}
    for value in values:
        name, _, delay_ms = value.partition("=")
        models[name] = float(delay_ms or 0) / 1000
    return models


async def serve(host: str, port: int, engine: Engine) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: EngineProtocol(engine), host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--tokens", type=int, default=32, help="tokens when max_tokens is unset")
    parser.add_argument("--model", action="append", help="NAME=MS between tokens (repeatable)")
    parser.add_argument("--dimensions", type=int, default=768, help="embedding vector length")
    args = parser.parse_args()
    models = parse_models(args.model or ["fast=0", "slow=50"])
    engine = Engine(models, args.tokens, args.dimensions)
    run = asyncio.run
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        pass
    run(serve(args.host, args.port, engine))


if __name__ == "__main__":
    main()
