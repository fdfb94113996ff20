"""A lean HTTP/1.1 client for a worker's engine: keep-alive connections on asyncio
protocols, responses parsed by httptools (llhttp, the parser uvicorn serves with).

A worker sends one request per job to one engine, so a general client's work per request
(httpx's models, httpcore's pool bookkeeping, h11's pure-Python parser, anyio's layers)
was most of the worker's CPU. This client does only what an engine needs: ``GET`` and
``POST`` with a JSON body, responses with ``content-length``, chunked or read to the end
of the connection, keep-alive, TLS, and no proxies or redirects.

Everything the engine controls is bounded: the size and number of headers, how much of
the body is buffered before the socket stops being read, and every wait (connect, the
response head, each piece of the body). A connection whose response was not read to its
end (the job was cancelled, or failed) is closed, so the engine sees the disconnect and
stops generating. An idle connection is used again for at most :data:`KEEPALIVE_EXPIRY`
seconds (below the 5 s after which uvicorn-based engines drop one); one the engine
closed in the meantime is noticed at once, and a request that meets a reused connection
closed before any answer is sent again once, on a new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit

import httptools

KEEPALIVE_EXPIRY = 4.0
MAX_IDLE = 256
"""Idle connections kept at most (a worker bounds the jobs it runs at once anyway)."""
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 128
HIGH_WATER = 1024 * 1024
"""Bytes of body buffered before the socket stops being read until they are taken."""


class EngineTransportError(Exception):
    """The engine could not be reached or broke the protocol; ``kind`` says which:
    ``connect``, ``timeout``, ``closed`` (the connection ended early) or ``protocol``."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class EngineResponse:
    """The head of a response; its body is read with :meth:`chunks` or :meth:`read`."""

    def __init__(self, connection: _Connection, read_timeout: float) -> None:
        self._connection = connection
        self._read_timeout = read_timeout
        self.status = connection.status
        self.headers = connection.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, each wait at most the read timeout."""
        connection = self._connection
        while True:
            data = connection.take()
            if data:
                yield data
            elif connection.complete:
                return
            else:
                await connection.wait(self._read_timeout)

    async def read(self, limit: int) -> bytes:
        """The whole body (at most ``limit`` bytes, else :class:`EngineTransportError`)."""
        parts: list[bytes] = []
        size = 0
        async for data in self.chunks():
            size += len(data)
            if size > limit:
                raise EngineTransportError("protocol", f"a body over {limit} bytes")
            parts.append(data)
        return b"".join(parts)


class EngineConnections:
    """Keep-alive connections to the engine at ``base_url`` (``http`` or ``https``).

    ``headers`` go with every request (an ``Authorization`` header, say);
    ``read_timeout`` bounds each wait for the response's next piece, ``connect_timeout``
    the opening of a connection.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str],
        read_timeout: float,
        connect_timeout: float,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        self._base_path = url.path.rstrip("/")
        authority = url.netloc.rpartition("@")[2]
        fixed = {"host": authority, "user-agent": "infermesh-worker", **headers}
        self._fixed_headers = "".join(f"{name}: {value}\r\n" for name, value in fixed.items())
        self._read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self._idle: deque[_Connection] = deque()
        self._closed = False

    @contextlib.asynccontextmanager
    async def request(
        self, method: str, path: str, body: bytes | None = None
    ) -> AsyncIterator[EngineResponse]:
        """Send ``method`` to ``{base path}/{path}``; yield the response once its head
        is in. Leaving the block early closes the connection."""
        head = self._head(method, path, body)
        connection = await self._send(head, body)
        response = EngineResponse(connection, self._read_timeout)
        try:
            yield response
        except BaseException:
            connection.close()
            raise
        self._release(connection)

    async def aclose(self) -> None:
        """Close every idle connection; those in use close when their request ends."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    def _head(self, method: str, path: str, body: bytes | None) -> bytes:
        length = (
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n" if body else ""
        )
        target = f"{self._base_path}/{path.lstrip('/')}"
        return f"{method} {target} HTTP/1.1\r\n{self._fixed_headers}{length}\r\n".encode()

    async def _send(self, head: bytes, body: bytes | None) -> _Connection:
        """Write the request on a connection and wait for the response's head."""
        connection = self._reusable()
        reused = connection is not None
        if connection is None:
            connection = await self._connect()
        try:
            connection.send(head, body)
            await connection.wait_head(self._read_timeout)
        except EngineTransportError as exc:
            connection.close()
            if not (reused and exc.kind == "closed" and not connection.received):
                raise
            connection = await self._connect()  # the engine had closed the idle one
            try:
                connection.send(head, body)
                await connection.wait_head(self._read_timeout)
            except BaseException:
                connection.close()
                raise
        except BaseException:
            connection.close()
            raise
        return connection

    def _reusable(self) -> _Connection | None:
        now = asyncio.get_running_loop().time()
        while self._idle:
            connection = self._idle.pop()  # the most recently used: warmest
            if not connection.closed and now - connection.idle_since < KEEPALIVE_EXPIRY:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(
                    _Connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except TimeoutError as exc:
            raise EngineTransportError("timeout", "connecting") from exc
        except (OSError, ssl.SSLError) as exc:
            raise EngineTransportError("connect", type(exc).__name__) from exc
        return connection

    def _release(self, connection: _Connection) -> None:
        """Keep ``connection`` for the next request if its response ended cleanly."""
        if self._closed or not connection.reusable or len(self._idle) >= MAX_IDLE:
            connection.close()
            return
        connection.reset(asyncio.get_running_loop().time())
        self._idle.append(connection)


class _Connection(asyncio.Protocol):
    """One connection and the response being read on it."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._error: EngineTransportError | None = None
        self._header_bytes = 0
        self._eof_ends_body = False
        self.closed = False
        self.received = False
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.status = 0
        self.headers: dict[str, str] = {}
        self.idle_since = 0.0

    # --- used by the client ---------------------------------------------------------

    def send(self, head: bytes, body: bytes | None) -> None:
        transport = self._transport
        if self.closed or transport is None or transport.is_closing():
            raise EngineTransportError("closed", "before the request was sent")
        try:
            transport.write(head + body if body else head)
        except (RuntimeError, OSError) as exc:  # uvloop raises on a closed handle
            raise EngineTransportError("closed", "before the request was sent") from exc

    async def wait_head(self, seconds: float) -> None:
        while not self.head_done:
            await self.wait(seconds)

    async def wait(self, seconds: float) -> None:
        """Wait for more of the response (raises on a failed or closed connection)."""
        if self._error is not None:
            raise self._error
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            async with asyncio.timeout(seconds):
                await waiter
        except TimeoutError as exc:
            raise EngineTransportError("timeout", "waiting for the engine") from exc
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def take(self) -> bytes:
        """The body bytes buffered so far (and the socket read again if it was paused)."""
        if not self._buffer:
            return b""
        data = self._buffer.popleft() if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and not self._buffer

    def reset(self, now: float) -> None:
        self.received = self.head_done = self.complete = False
        self.status, self.headers, self._header_bytes = 0, {}, 0
        self.idle_since = now

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.close()

    # --- asyncio protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # what a callback of ours raised, if it was one
            if not isinstance(cause, EngineTransportError):
                cause = EngineTransportError("protocol", "a malformed HTTP response")
            self._fail(cause)
            self.close()

    def eof_received(self) -> bool | None:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._eof_ends_body and self.head_done and not self.complete:
            self.complete = True  # a body without length or chunks ends with the connection
            self._wake()
        elif not self.complete:
            self._fail(EngineTransportError("closed", "the engine closed the connection"))

    # --- httptools callbacks --------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES or len(self.headers) >= MAX_HEADERS:
            raise EngineTransportError("protocol", "too many or too large headers")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        framed = "content-length" in self.headers or "chunked" in self.headers.get(
            "transfer-encoding", ""
        )
        self._eof_ends_body = not framed
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._buffer.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # --- ---------------------------------------------------------------------------

    def _fail(self, error: EngineTransportError) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
