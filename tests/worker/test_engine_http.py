"""The worker's HTTP client for engines, against raw HTTP servers that misbehave on cue.

Each server here is a real socket server written byte by byte, so a test can send what
an engine (or something pretending to be one) could: bodies framed every legal way,
answers cut short, stalls, oversized heads, garbage, and connections closed under the
client's feet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import uvloop

from infermesh.errors import BackendError
from infermesh.protocol.chat import ChatCompletionRequest
from infermesh.protocol.generation import GenerationJob
from infermesh.worker.backends import engine_http
from infermesh.worker.backends.engine_http import EngineConnections, EngineTransportError
from infermesh.worker.backends.openai_http import OpenAIBackend


@pytest.fixture(params=["asyncio", "uvloop"], scope="module")
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Each test on asyncio's loop and on uvloop's (the worker runs on uvloop)."""
    if request.param == "uvloop":
        return uvloop.EventLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()


Answer = Callable[[int], bytes]
"""The bytes a server writes for its n-th request (n from 0)."""


@dataclass
class RawEngine:
    answer: Answer
    close_after: bool = False
    url: str = ""
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    closed_by_peer: asyncio.Event = field(default_factory=asyncio.Event)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                self.requests.append(head + await reader.readexactly(length))
                writer.write(self.answer(len(self.requests) - 1))
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_peer.set()
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def raw_engine(answer: Answer, *, close_after: bool = False) -> AsyncIterator[RawEngine]:
    engine = RawEngine(answer, close_after=close_after)
    server = await asyncio.start_server(engine.handle, "127.0.0.1", 0)
    engine.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    try:
        yield engine
    finally:
        for writer in engine.writers:
            writer.close()
        server.close()


def events(*contents: str, usage: bool = True) -> bytes:
    lines = [
        {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        for text in contents
    ]
    final: dict[str, object] = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    if usage:
        final["usage"] = {"prompt_tokens": 3, "completion_tokens": len(contents)}
    body = "".join(f"data: {json.dumps(event)}\n\n" for event in [*lines, final])
    return (body + "data: [DONE]\n\n").encode()


def sse(body: bytes, framing: str = "length", extra_headers: str = "") -> bytes:
    head = f"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n{extra_headers}"
    if framing == "length":
        return f"{head}content-length: {len(body)}\r\n\r\n".encode() + body
    if framing == "chunked":
        pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
        chunked = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces)
        return f"{head}transfer-encoding: chunked\r\n\r\n".encode() + chunked + b"0\r\n\r\n"
    return f"{head}connection: close\r\n\r\n".encode() + body  # the body ends with the socket


def job() -> GenerationJob:
    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    )
    return GenerationJob(id="job-1", model="m", request=request)


async def text_of(backend: OpenAIBackend) -> str:
    chunks = [chunk async for chunk in backend.generate(job(), "engine-model")]
    assert chunks[-1].finish_reason == "stop"
    return "".join(chunk.content or "" for chunk in chunks)


@contextlib.asynccontextmanager
async def backend_for(url: str, **options: float) -> AsyncIterator[OpenAIBackend]:
    backend = OpenAIBackend(url, **options)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


@pytest.mark.parametrize("framing", ["length", "chunked", "eof"])
async def test_every_body_framing_reads_the_same(framing: str) -> None:
    answer = sse(events("Hel", "lo", " wörld\u2028!"), framing)
    close_after = framing == "eof"
    async with (
        raw_engine(lambda _: answer, close_after=close_after) as engine,
        backend_for(engine.url) as backend,
    ):
        assert await text_of(backend) == "Hello wörld\u2028!"
        assert await text_of(backend) == "Hello wörld\u2028!"
    assert engine.connections == (2 if close_after else 1)
    request = engine.requests[0]
    assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert json.loads(request.partition(b"\r\n\r\n")[2])["model"] == "engine-model"


async def test_jobs_one_after_another_share_one_connection() -> None:
    async with (
        raw_engine(lambda _: sse(events("a", "b"))) as engine,
        backend_for(engine.url) as backend,
    ):
        for _ in range(5):
            assert await text_of(backend) == "ab"
    assert engine.connections == 1
    assert len(engine.requests) == 5


async def test_jobs_at_once_each_get_a_connection_then_reuse_them() -> None:
    async with (
        raw_engine(lambda _: sse(events("a", "b"))) as engine,
        backend_for(engine.url) as backend,
    ):
        for _ in range(3):
            texts = await asyncio.gather(*(text_of(backend) for _ in range(4)))
            assert texts == ["ab"] * 4
    assert engine.connections <= 4
    assert len(engine.requests) == 12


async def test_an_idle_connection_the_engine_closed_is_not_used_again() -> None:
    async with raw_engine(lambda _: sse(events("a"))) as engine, backend_for(engine.url) as backend:
        assert await text_of(backend) == "a"
        for writer in engine.writers:  # the engine drops its idle keep-alive connection
            writer.close()
        assert await text_of(backend) == "a"
    assert engine.connections == 2


async def test_a_reused_connection_closed_before_any_answer_is_retried_once() -> None:
    """The engine closes its keep-alive connection just as the next request goes out:
    the request goes again, once, on a new connection."""
    first = sse(events("a"))

    def answer(index: int) -> bytes:
        return first if index == 0 else sse(events("b"))

    async with raw_engine(answer) as engine, backend_for(engine.url) as backend:
        assert await text_of(backend) == "a"
        (idle,) = backend._require_connections()._idle
        engine.writers[0].close()
        with pytest.raises(EngineTransportError, match="closed"):
            await idle.wait(10)  # until the close reaches this side
        idle.closed = False  # as if the close had not been seen yet
        assert await text_of(backend) == "b"
    assert engine.connections == 2


async def test_old_idle_connections_are_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_http, "KEEPALIVE_EXPIRY", 0.0)
    async with raw_engine(lambda _: sse(events("a"))) as engine, backend_for(engine.url) as backend:
        assert await text_of(backend) == "a"
        assert await text_of(backend) == "a"
    assert engine.connections == 2


async def test_an_engine_that_stalls_mid_body_times_out_and_is_disconnected() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 999\r\n\r\n"
    stalled = head + events("a").partition(b"\n\n")[0] + b"\n\n"
    async with (
        raw_engine(lambda _: stalled) as engine,
        backend_for(engine.url, timeout=0.3) as backend,
    ):
        with pytest.raises(BackendError, match="timed out"):
            await text_of(backend)
        async with asyncio.timeout(10):
            await engine.closed_by_peer.wait()


async def test_an_engine_that_never_answers_times_out() -> None:
    async with raw_engine(lambda _: b"") as engine, backend_for(engine.url, timeout=0.3) as backend:
        with pytest.raises(BackendError, match="timed out"):
            await text_of(backend)


@pytest.mark.parametrize(
    "answer",
    [
        b"this is not HTTP at all\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: nope\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"y" * (70 * 1024) + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
    ],
    ids=["garbage", "bad-length", "huge-header", "many-headers"],
)
async def test_malformed_answers_are_backend_errors(answer: bytes) -> None:
    async with (
        raw_engine(lambda _: answer) as engine,
        backend_for(engine.url, timeout=5) as backend,
    ):
        with pytest.raises(BackendError, match="connection to the upstream engine failed"):
            await text_of(backend)


async def test_an_answer_cut_short_is_a_backend_error() -> None:
    whole = sse(events("a", "b", "c"))
    async with (
        raw_engine(lambda _: whole[: len(whole) - 40], close_after=True) as engine,
        backend_for(engine.url, timeout=5) as backend,
    ):
        with pytest.raises(BackendError, match="failed \\(closed\\)"):
            await text_of(backend)


async def test_a_body_larger_than_the_buffer_arrives_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The socket is paused while more than the high-water mark waits unread, and read
    again as it is taken: nothing is lost or reordered."""
    monkeypatch.setattr(engine_http, "HIGH_WATER", 1024)
    body = bytes(range(256)) * 2000
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    async with raw_engine(lambda _: answer) as engine:
        connections = EngineConnections(engine.url, headers={}, read_timeout=5, connect_timeout=5)
        async with connections.request("GET", "models") as response:
            got = bytearray()
            async for data in response.chunks():
                got += data
                await asyncio.sleep(0)  # let the socket fill the buffer again
        assert bytes(got) == body
        async with connections.request("GET", "models") as response:
            with pytest.raises(EngineTransportError, match="over 1000 bytes"):
                await response.read(1000)
        await connections.aclose()


async def test_engine_that_cannot_be_reached_is_a_connect_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with backend_for(f"http://127.0.0.1:{port}/v1") as backend:
        with pytest.raises(BackendError, match="could not connect"):
            await text_of(backend)


def test_only_http_urls_are_engines() -> None:
    for url in ("ftp://host/v1", "http:///v1", "/v1"):
        with pytest.raises(ValueError, match="not an http"):
            EngineConnections(url, headers={}, read_timeout=1, connect_timeout=1)
