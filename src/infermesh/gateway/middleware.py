"""Request context for every HTTP request: id, body size limit, errors, log line, metrics."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infermesh.errors import InfermeshError, PayloadTooLarge
from infermesh.gateway.errors import render
from infermesh.telemetry import Metrics, RequestRecord, access_logger_name, format_access_line

logger = logging.getLogger(__name__)
access_logger = logging.getLogger(access_logger_name)

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


ErrorRenderer = Callable[[InfermeshError, str], Response]
"""An error (and the request's id) as the response of one API's envelope."""


def new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


class RequestContextMiddleware:
    """Pure ASGI middleware (streams pass through untouched).

    - gives each request an id (a client's own ``x-request-id`` is kept if sane) and
      returns it as ``x-request-id`` on every response, errors included;
    - refuses bodies over ``max_body_bytes`` with 413;
    - turns any unexpected exception into a 500 envelope, never a bare page;
    - writes one access-log line and the metrics when the response is over.

    - hands the requests named in ``shortcuts`` (method and path) straight to their own
      ASGI app, past the framework's routing (the chat completions route);
    - renders its own errors (413, 500) with the renderer of ``error_renderers`` whose
      path prefix the request's path has (Anthropic's envelope on ``/v1/messages``), else
      in OpenAI's envelope.

    Per request that is a few header scans, one record, the metrics (cached label
    children) and the access line, formatted only when the access logger logs INFO.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        log_json: bool,
        shortcuts: Mapping[tuple[str, str], ASGIApp] | None = None,
        error_renderers: Mapping[str, ErrorRenderer] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.log_json = log_json
        self.shortcuts = dict(shortcuts or {})
        self.error_renderers = dict(error_renderers or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(
            request_id=_request_id(scope), method=scope["method"], path=scope["path"]
        )
        scope.setdefault("state", {})["record"] = record
        started = time.perf_counter()
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                record.status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", record.request_id.encode()))
                if record.response_headers:
                    _add_missing(headers, record.response_headers)
                message = {**message, "headers": headers}
            await send(message)

        shortcut = self.shortcuts.get((scope["method"], scope["path"]))
        if shortcut is not None:
            record.route = scope["path"]
        try:
            if _declared_length(scope) > self.max_body_bytes:
                await self._render(scope, record, self._too_large())(scope, receive, send_with_id)
            else:
                await (shortcut or self.app)(scope, self._limited(receive), send_with_id)
        except Exception:
            logger.exception("unhandled error in request %s", record.request_id)
            if not response_started:
                error = InfermeshError(
                    "The server had an error while processing your request. "
                    f"Quote the request id {record.request_id} if you report it.",
                    code="internal_error",
                )
                await self._render(scope, record, error)(scope, receive, send_with_id)
        finally:
            if shortcut is None:
                record.route = getattr(scope.get("route"), "path", "unmatched")
            record.latency_ms = (time.perf_counter() - started) * 1000
            self.metrics.observe(record)
            if access_logger.isEnabledFor(logging.INFO):  # the line is built only if logged
                access_logger.info(format_access_line(record, as_json=self.log_json))

    def _render(self, scope: Scope, record: RequestRecord, error: InfermeshError) -> Response:
        record.error_code = error.code
        path: str = scope["path"]
        for prefix, renderer in self.error_renderers.items():
            if path == prefix or path.startswith(prefix + "/"):
                return renderer(error, record.request_id)
        return render(error)

    def _limited(self, receive: Receive) -> Receive:
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise self._too_large()
            return message

        return limited_receive

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"The request body is larger than the limit of {self.max_body_bytes} bytes."
        )


def _add_missing(headers: list[tuple[bytes, bytes]], extra: dict[str, str]) -> None:
    """Append the headers of ``extra`` that ``headers`` does not have yet."""
    present = {name for name, _ in headers}
    for name, value in extra.items():
        if name.encode() not in present:
            headers.append((name.encode(), value.encode("latin-1")))


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate = bytes(value).decode("latin-1")
            if _CLIENT_REQUEST_ID.match(candidate):
                return candidate
    return new_request_id()


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def request_record(state: Any) -> RequestRecord:
    """The record the middleware put in a request's state."""
    record = getattr(state, "record", None)
    assert isinstance(record, RequestRecord), "RequestContextMiddleware is not installed"
    return record
