"""Load for bench/serving.py: wrk for plain requests, and a raw-socket asyncio client for
streams (time to first token, gaps between tokens, many streams held open).

The stream client speaks HTTP/1.1 itself (keep-alive, chunked bodies) so that what it
measures is the server, not a client library: it notes the arrival time of each
server-sent event that carries content.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_chat.lua"
CHAT_PATH = "/v1/chat/completions"
_CONTENT = re.compile(rb'"content":\s*"(?!")')


# --- wrk ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured (latencies in milliseconds; None if nothing came back)."""

    requests: int
    seconds: float
    errors: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    p999_ms: float | None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run_wrk(
    port: int, body: bytes, key: str, *, connections: int, seconds: float, cpus: str
) -> WrkResult:
    """``connections`` keep-alive connections POSTing ``body`` for ``seconds`` (one thread)."""
    command = [
        "taskset", "-c", cpus, "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        "--latency", "--timeout", "10s", "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}{CHAT_PATH}",
    ]  # fmt: skip
    env = dict(os.environ, BENCH_BODY=body.decode(), BENCH_KEY=key)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
    return parse_wrk(done.stdout + done.stderr)


def wrk_result(raw: dict[str, int | float]) -> WrkResult:
    """A run in which nothing was answered has no latencies and counts as one error."""
    requests = int(raw["requests"])
    errors = sum(int(raw[name]) for name in raw if name.endswith("errors") or name == "timeouts")

    def ms(name: str) -> float | None:
        return raw[name] / 1000 if requests else None

    return WrkResult(
        requests=requests,
        seconds=raw["duration_us"] / 1e6,
        errors=errors if requests else max(errors, 1),
        p50_ms=ms("p50_us"),
        p90_ms=ms("p90_us"),
        p99_ms=ms("p99_us"),
        p999_ms=ms("p999_us"),
    )


def parse_wrk(output: str) -> WrkResult:
    """The ``BENCH_JSON`` line that wrk_chat.lua prints at the end."""
    for line in output.splitlines():
        if line.startswith("BENCH_JSON "):
            return wrk_result(json.loads(line.removeprefix("BENCH_JSON ")))
    raise RuntimeError(f"wrk printed no result:\n{output[-2000:]}")


# --- a raw HTTP/1.1 stream client --------------------------------------------------


@dataclass
class StreamTiming:
    """One streamed request: when it was sent, when each content event arrived."""

    sent: float
    status: int = 0
    token_times: list[float] = field(default_factory=list)
    error: str | None = None
    finished: bool = False
    ended: float | None = None

    @property
    def ttft(self) -> float | None:
        return self.token_times[0] - self.sent if self.token_times else None

    def gaps(self) -> list[float]:
        times = self.token_times
        return [later - earlier for earlier, later in itertools.pairwise(times)]


def request_bytes(
    port: int, body: bytes, key: str, *, method: str = "POST", path: str = CHAT_PATH
) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ", 2)[1]), headers


class Connection:
    """One keep-alive connection for streamed requests, one after another. It reads
    whatever has arrived in one go and takes the chunked framing apart itself."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.buffer = b""

    async def stream(
        self, body: bytes, key: str, timing: StreamTiming | None = None, *, method: str = "POST",
        path: str = CHAT_PATH,
    ) -> StreamTiming:  # fmt: skip
        """Send one request and read its whole answer into ``timing`` (a new one if None)."""
        timing = timing or StreamTiming(sent=time.perf_counter())
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            timing.sent = time.perf_counter()
            self.writer.write(request_bytes(self.port, body, key, method=method, path=path))
            await self._read_response(timing)
            timing.ended = time.perf_counter()
            if timing.status != 200:
                timing.error = f"HTTP {timing.status}"
        except (OSError, EOFError, ValueError) as exc:
            timing.error = type(exc).__name__
        if timing.error or not timing.finished:
            await self.close()
        return timing

    async def _more(self) -> float:
        assert self.reader is not None
        data = await self.reader.read(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self.buffer += data
        return time.perf_counter()

    async def _read_response(self, timing: StreamTiming) -> None:
        now = time.perf_counter()
        while b"\r\n\r\n" not in self.buffer:
            now = await self._more()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        timing.status, headers = parse_head(head)
        events = EventScanner(timing)
        if headers.get("transfer-encoding", "").lower() != "chunked":
            length = int(headers.get("content-length", "0"))
            while len(self.buffer) < length:
                now = await self._more()
            events.feed(self.buffer[:length] + b"\n", now)
            self.buffer = self.buffer[length:]
            timing.finished = True  # a whole answer, not a stream
            return
        while not self._take_chunks(events, now):
            now = await self._more()

    def _take_chunks(self, events: EventScanner, now: float) -> bool:
        """Feed the complete chunks in the buffer to ``events``; True at the last chunk."""
        while (line_end := self.buffer.find(b"\r\n")) >= 0:
            size = int(self.buffer[:line_end].split(b";")[0], 16)
            end = line_end + 2 + size + 2
            if len(self.buffer) < end:
                return False
            if size == 0:
                self.buffer = self.buffer[end:]
                return True
            events.feed(self.buffer[line_end + 2 : end - 2], now)
            self.buffer = self.buffer[end:]
        return False

    async def close(self) -> None:
        writer, self.writer, self.reader, self.buffer = self.writer, None, None, b""
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class EventScanner:
    """Server-sent event lines into a :class:`StreamTiming`: the arrival of each content
    event, an error event, the final ``[DONE]``."""

    def __init__(self, timing: StreamTiming) -> None:
        self.timing = timing
        self.pending = b""

    def feed(self, data: bytes, now: float) -> None:
        *lines, self.pending = (self.pending + data).split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            if line.startswith(b"data: [DONE]"):
                self.timing.finished = True
            elif b'"error"' in line:
                self.timing.error = "error event"
            elif _CONTENT.search(line):
                self.timing.token_times.append(now)


async def stream_load(
    port: int, body: bytes, key: str, *, concurrency: int, seconds: float
) -> list[StreamTiming]:
    """``concurrency`` connections streaming ``body`` back to back for ``seconds``."""
    deadline = time.perf_counter() + seconds
    timings: list[StreamTiming] = []

    async def loop() -> None:
        connection = Connection(port)
        while time.perf_counter() < deadline:
            timings.append(await connection.stream(body, key))
        await connection.close()

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return timings


# --- many streams held open ---------------------------------------------------------


@dataclass(frozen=True)
class SideRequest:
    """A request sent again and again while the streams are held open."""

    method: str
    path: str
    body: bytes = b""


@dataclass
class OpenStreamsResult:
    """What holding ``streams`` streams open did to the server, and how long the side
    requests took meanwhile (seconds, per side request)."""

    streams: int
    first_token: int
    errors: int
    peak_rss: int
    seconds_to_all_first_tokens: float | None
    side_latencies: dict[str, list[float]]
    side_errors: dict[str, int]


async def _hold_stream(port: int, body: bytes, key: str, stop: asyncio.Event) -> StreamTiming:
    """One stream, read until ``stop`` is set (then dropped) or until it ends."""
    connection, timing = Connection(port), StreamTiming(sent=time.perf_counter())
    reading = asyncio.create_task(connection.stream(body, key, timing))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([reading, stopping], return_when=asyncio.FIRST_COMPLETED)
    for task in (reading, stopping):
        task.cancel()
    await connection.close()
    return timing


async def _sample_rss(rss: Callable[[], int], stop: asyncio.Event, peak: list[int]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)


async def _side_requests(
    port: int, key: str, request: SideRequest, stop: asyncio.Event
) -> list[StreamTiming]:
    """``request`` one after another (10 a second at most) until ``stop``."""
    connection, timings = Connection(port), []
    while not stop.is_set():
        timing = await connection.stream(
            request.body, key, method=request.method, path=request.path
        )
        timings.append(timing)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)
    await connection.close()
    return timings


async def open_streams(
    port: int,
    key: str,
    *,
    streams: int,
    hold: float,
    body: bytes,
    side: dict[str, SideRequest],
    rss: Callable[[], int],
) -> OpenStreamsResult:
    """Open ``streams`` streams of ``body`` at once, hold them ``hold`` seconds while the
    ``side`` requests keep coming, then drop them."""
    stop, peak = asyncio.Event(), [rss()]
    started = time.perf_counter()
    sampler = asyncio.create_task(_sample_rss(rss, stop, peak))
    probes = {
        name: asyncio.create_task(_side_requests(port, key, request, stop))
        for name, request in side.items()
    }
    held = [asyncio.create_task(_hold_stream(port, body, key, stop)) for _ in range(streams)]
    await asyncio.sleep(hold)
    stop.set()
    timings = await asyncio.gather(*held)
    side_timings = {name: await probe for name, probe in probes.items()}
    await sampler
    firsts = [t.token_times[0] for t in timings if t.token_times]
    return OpenStreamsResult(
        streams=streams,
        first_token=len(firsts),
        errors=sum(1 for t in timings if t.error),
        peak_rss=peak[0],
        seconds_to_all_first_tokens=max(firsts) - started if len(firsts) == streams else None,
        side_latencies={
            name: [t.ended - t.sent for t in done if t.ended is not None and not t.error]
            for name, done in side_timings.items()
        },
        side_errors={name: sum(1 for t in done if t.error) for name, done in side_timings.items()},
    )


def percentile(values: list[float], share: float) -> float | None:
    """The ``share`` (0-100) percentile of ``values``, None if there are none."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[max(0, round(share * 10) - 1)]
