"""Metrics (Prometheus) and the per-request record behind the one access-log line.

Only counts, ids and timings are recorded here: never message content. Some fields
come from the client (the path, the method): the access line bounds their length and
escapes them, so that no request can forge a log line or a field.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field, fields
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
access_logger_name = "infermesh.access"
MAX_LOGGED_CHARS = 256
"""The most characters of one string field an access line holds (a longer one is cut)."""

_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}
_BARE = re.compile(r"^[^\s\"\\=]+$")


@dataclass
class RequestRecord:
    """What one request did, filled in as it goes: ids, counts and timings only."""

    request_id: str
    method: str = ""
    path: str = ""
    route: str = "unmatched"
    status: int = 0
    key_id: str | None = None
    model: str | None = None
    node_id: str | None = None
    stream: bool | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    cost_micro_usd: int | None = None
    time_to_first_token_ms: float | None = None
    latency_ms: float = 0.0
    error_code: str | None = None
    response_headers: dict[str, str] = field(default_factory=dict, repr=False)
    """Headers for the response, errors included (the rate-limit headers); not logged."""


_LOGGED_FIELDS = tuple(
    item.name for item in fields(RequestRecord) if item.name != "response_headers"
)


class Metrics:
    """The gateway's Prometheus metrics, on a registry of its own (not the global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "infermesh_requests",
            "HTTP requests by route, model and status.",
            ["route", "model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "infermesh_request_latency_seconds",
            "Time from request to the end of the response.",
            ["route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "infermesh_time_to_first_token_seconds",
            "Time from request to the first generated token.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "infermesh_tokens",
            "Tokens processed, by model and direction (prompt or completion).",
            ["model", "direction"],
            registry=self.registry,
        )
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def observe(self, record: RequestRecord) -> None:
        """Count a finished request: two to five metric updates, no label lookups after
        the first request of a route, model and status."""
        model = record.model or ""
        self._child(self.requests, record.route, model, str(record.status)).inc()
        self._child(self.latency, record.route, model).observe(record.latency_ms / 1000)
        if record.time_to_first_token_ms is not None:
            ttft = record.time_to_first_token_ms / 1000
            self._child(self.time_to_first_token, model).observe(ttft)
        if record.prompt_tokens:
            self._child(self.tokens, model, "prompt").inc(record.prompt_tokens)
        if record.completion_tokens:
            self._child(self.tokens, model, "completion").inc(record.completion_tokens)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered (the client's own lookup takes a lock
        and checks the labels each time). Holds no more than the metric itself does:
        routes and models are the app's and the catalog's, statuses are few."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data


def where_it_failed(exc: BaseException) -> str:
    """An exception's type and the innermost frame it was raised in, without its message:
    what a log line may say of a failure while handling text (a message may quote the
    text, e.g. a validation error's input)."""
    frame = None
    traceback = exc.__traceback__
    while traceback is not None:
        frame, traceback = traceback, traceback.tb_next
    if frame is None:
        return type(exc).__name__
    code = frame.tb_frame.f_code
    return f"{type(exc).__name__} at {code.co_filename}:{frame.tb_lineno} in {code.co_name}"


def format_access_line(record: RequestRecord, *, as_json: bool) -> str:
    """The one log line of a request. Built from ids and counts only.

    Strings are cut to :data:`MAX_LOGGED_CHARS`. As JSON, one object (JSON escapes
    control characters itself); as text, ``key=value`` pairs in the logfmt style: a
    value with a space, a quote, a backslash, an ``=`` or a character that is not
    printable is written in double quotes with backslash escapes (``\\n``, ``\\x1b``).
    """
    logged: dict[str, Any] = {}
    for name in _LOGGED_FIELDS:
        value = getattr(record, name)
        if value is not None:
            logged[name] = _bounded(value)
    logged["latency_ms"] = round(record.latency_ms, 1)
    if record.time_to_first_token_ms is not None:
        logged["time_to_first_token_ms"] = round(record.time_to_first_token_ms, 1)
    if as_json:
        return json.dumps(logged, separators=(",", ":"))
    return " ".join(f"{key}={_logfmt_value(value)}" for key, value in logged.items())


def _bounded(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_LOGGED_CHARS:
        return value[:MAX_LOGGED_CHARS] + "..."
    return value


def _logfmt_value(value: Any) -> str:
    if isinstance(value, int | float):  # numbers (and booleans) are always bare
        return str(value)
    text = str(value)
    if _BARE.match(text) and text.isprintable():
        return text
    return '"' + "".join(_escaped_char(char) for char in text) + '"'


def _escaped_char(char: str) -> str:
    """``char`` as it may stand in a quoted log value: printable, on one line."""
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    if char.isprintable():
        return char
    return _code_escape(char)


def escape_control(text: str) -> str:
    """``text`` with every character that is not printable (newlines, escape codes,
    Unicode line separators) written as a Python-style escape; the rest is kept."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _code_escape(char) for char in text)


def _code_escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


_SQL_ECHOING_LOGGERS = ("aiosqlite", "sqlalchemy.engine", "asyncpg")
"""Libraries that log statements with their parameters (an async job's request is one)."""


def configure_logging(*, level: str = "info", as_json: bool = False) -> None:
    """Send infermesh's logs to stderr, one line each.

    The process (a CLI command) then skips what logging would gather for each record
    and no line prints (where the call was made, thread and process names): the
    logging HOWTO's "Optimization" settings. A gateway logs a line per request."""
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    if as_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for chatty in _SQL_ECHOING_LOGGERS:  # their DEBUG lines hold SQL parameters
        logging.getLogger(chatty).setLevel(logging.WARNING)
    root = logging.getLogger("infermesh")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class _SecondsCached(logging.Formatter):
    """``formatTime`` as the default makes it, with the date and time of the current
    second formatted once rather than for every line."""

    _second = -1
    _stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(self.default_time_format, self.converter(record.created))
        return f"{self._stamp},{int(record.msecs):03d}"


class _TextFormatter(_SecondsCached):
    """One line a message: control characters in a message are escaped (a traceback
    after it keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_control(record.message)
        return super().formatMessage(record)


class _JsonFormatter(_SecondsCached):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == access_logger_name and message.startswith("{"):
            return message
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name}
        entry["message"] = message
        return json.dumps(entry)
