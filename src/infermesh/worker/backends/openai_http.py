"""A backend for any OpenAI-compatible engine reached over HTTP.

vLLM, SGLang, llama.cpp's server, Ollama and hosted providers all serve
``POST {base_url}/chat/completions``. The backend forwards the client's request under
the engine's model name, always asks for a stream with usage, and turns the
server-sent events into generation chunks. Of the fields a client sent that the
protocol models do not declare, only :data:`ENGINE_EXTRA_FIELDS` reach the engine
(the gateway drops the others too; this is the worker's own guard).

Every job is a new request on a pool of keep-alive connections (as many as the jobs
running at once: the agent bounds those). A stream is read to the end of its body after
``[DONE]`` so that its connection goes back to the pool; an engine that keeps the body
open past that loses the connection instead of holding up the job. Events are parsed
with orjson (json's grammar is the fallback, for what orjson refuses: NaN, huge numbers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from pydantic import ValidationError

from infermesh.errors import BackendError, InfermeshError, UpstreamRejected
from infermesh.protocol.chat import ChatCompletionRequest, FinishReason, ToolCallDelta, Usage
from infermesh.protocol.engine_fields import ENGINE_EXTRA_FIELDS, declared_fields
from infermesh.protocol.generation import GenerationChunk, GenerationJob
from infermesh.protocol.json_depth import MAX_JSON_DEPTH
from infermesh.worker.toolcalls import load_json, nests_deeper_than

logger = logging.getLogger(__name__)

_CHAT_PATH = "chat/completions"
_MODELS_PATH = "models"
_MAX_ERROR_CHARS = 500
_CHARS_PER_TOKEN = 4
_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "function_call": "tool_calls",
}
_FAILED_FINISH_REASONS = frozenset({"abort", "error"})
STREAMS_PER_CLIENT = 4
POOL_TIMEOUT = 5.0
"""Seconds a stream may wait for a connection of its client's pool. A client never has
more streams than connections, so a healthy pool answers at once; one that does not has
lost connections to a cancelled request (httpcore 1.0.9 can leak a slot that way,
encode/httpcore#1093): it is retired and the job fails over instead of hanging."""
_KEEPALIVE_EXPIRY = 4.0  # below the 5 s after which uvicorn-based engines drop idle ones
_END_OF_BODY_TIMEOUT = 1.0
_MAX_LINES_AFTER_DONE = 16
_JSON_HEADERS = {"content-type": "application/json"}


class OpenAIBackend:
    """Runs jobs on an OpenAI-compatible engine.

    ``base_url`` is what one gives the ``openai`` SDK: the URL ending in ``/v1``
    (``http://host:8000/v1``). ``api_key``, if any, is sent as a bearer token and never
    appears in an error message. ``timeout`` is the longest wait in seconds for the
    next piece of a response (as in the SDK), ``connect_timeout`` for a connection.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._chat_url = httpx.URL(f"{self.base_url}/{_CHAT_PATH}")  # joined once, not per job
        self._api_key = api_key
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout, pool=POOL_TIMEOUT)
        self._clients: _ClientPool | None = None
        self._warned_no_usage = False

    async def start(self) -> None:
        """Open the connection pool to the engine."""
        if self._clients is None:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._clients = _ClientPool(self.base_url + "/", headers=headers, timeout=self._timeout)

    async def close(self) -> None:
        """Close the connection pool; streams still open fail with :class:`BackendError`."""
        clients, self._clients = self._clients, None
        if clients is not None:
            await clients.aclose()

    async def list_models(self) -> list[str]:
        """The names of the models the engine serves (``GET {base_url}/models``)."""
        clients = self._require_clients()
        try:
            async with clients.stream("GET", _MODELS_PATH) as response:
                await response.aread()
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        if response.status_code >= 400:
            raise _status_error(response, engine_model=None, api_key=self._api_key)
        try:
            return [str(model["id"]) for model in response.json()["data"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError("the upstream engine sent a malformed model list") from exc

    async def generate(
        self, job: GenerationJob, engine_model: str
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream ``job`` from the engine; the last chunk has ``finish_reason`` and usage.

        Closing the iterator early closes the upstream response, so the engine sees the
        disconnect and stops generating.
        """
        clients = self._require_clients()
        content = _json_bytes(upstream_body(job.request, engine_model))
        translator = _StreamTranslator(job.request)
        try:
            async with clients.stream(
                "POST", self._chat_url, content=content, headers=_JSON_HEADERS
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _status_error(response, engine_model=engine_model, api_key=self._api_key)
                async with contextlib.aclosing(_sse_lines(response)) as lines:
                    async for line in lines:
                        chunk = translator.feed(line)
                        if chunk is not None:
                            yield chunk
                        if translator.done:
                            await _read_to_end(lines)
                            break
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        if translator.estimated_usage and not self._warned_no_usage:
            self._warned_no_usage = True
            logger.warning("upstream engine sends no usage; estimating it (about 4 chars a token)")
        yield translator.final_chunk()

    def _require_clients(self) -> _ClientPool:
        if self._clients is None:
            raise RuntimeError("OpenAIBackend.start() must be called before use")
        return self._clients


class _ClientPool:
    """Keep-alive connections to one engine, in httpx clients of a few streams each.

    httpcore's pool does work per request that grows with the square of its connections
    (and a readiness check of each idle one): at 64 streams on one client that costs
    milliseconds a request. So each client carries at most :data:`STREAMS_PER_CLIENT`
    streams at once, and as many clients are opened as the jobs running at once need
    (the agent bounds those); the first with room takes the next stream, so traffic
    stays on warm connections. The clients share one TLS context (making one per client
    would cost a tenth of a second each).
    """

    def __init__(self, base_url: str, *, headers: dict[str, str], timeout: httpx.Timeout) -> None:
        self._options: dict[str, Any] = {
            "base_url": base_url,
            "headers": headers,
            "timeout": timeout,
            "verify": httpx.create_ssl_context(),
            "limits": httpx.Limits(
                max_connections=2 * STREAMS_PER_CLIENT,
                max_keepalive_connections=STREAMS_PER_CLIENT,
                keepalive_expiry=_KEEPALIVE_EXPIRY,
            ),
        }
        self._clients: list[_Client] = []

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, url: str | httpx.URL, **options: Any
    ) -> AsyncIterator[httpx.Response]:
        """``httpx.AsyncClient.stream`` on the first client with room. A client whose
        pool gives no connection in time is retired (closed once its streams end)."""
        client = self._with_room()
        client.streams += 1
        try:
            async with client.http.stream(method, url, **options) as response:
                yield response
        except httpx.PoolTimeout:
            self._retire(client)
            raise
        finally:
            client.streams -= 1
            if client.retired and not client.streams:
                await client.http.aclose()

    def _retire(self, client: _Client) -> None:
        if not client.retired:
            logger.warning("a connection pool to the engine lost its connections; replacing it")
            client.retired = True
            self._clients = [other for other in self._clients if other is not client]

    async def aclose(self) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            await client.http.aclose()

    def _with_room(self) -> _Client:
        for client in self._clients:
            if client.streams < STREAMS_PER_CLIENT:
                return client
        client = _Client(httpx.AsyncClient(**self._options))
        self._clients.append(client)
        return client


@dataclass
class _Client:
    http: httpx.AsyncClient
    streams: int = 0
    retired: bool = False


def upstream_body(request: ChatCompletionRequest, engine_model: str) -> dict[str, Any]:
    """The JSON body for the engine: the client's request, streamed, renamed, with its
    declared fields and, of the others, only :data:`ENGINE_EXTRA_FIELDS` at the top."""
    dumped = request.model_dump(mode="json", exclude_none=True)
    body = declared_fields(request, dumped, keep=ENGINE_EXTRA_FIELDS)
    body["model"] = engine_model
    body["stream"] = True
    body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return body


def _json_bytes(body: dict[str, Any]) -> bytes:
    """``body`` as compact JSON (json's own encoder for what orjson refuses: huge ints)."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


async def _sse_lines(response: httpx.Response) -> AsyncGenerator[str, None]:
    """The lines of an event stream, split at CR, LF or CRLF only (``aiter_lines`` also
    splits at U+2028 and other characters that JSON strings may hold raw), on bytes."""
    pending = b""
    async for data in response.aiter_bytes():
        text = (pending + data).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, pending = text.split(b"\n")
        for line in lines:
            yield line.decode(errors="replace")
    if pending:
        yield pending.decode(errors="replace")


async def _read_to_end(lines: AsyncIterator[str]) -> None:
    """Read what follows ``[DONE]``, normally just the end of the body, so the connection
    can be used again; give up (the connection is then closed) on an engine that sends
    more or keeps the body open."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(_END_OF_BODY_TIMEOUT):
            extra = 0
            async for line in lines:
                extra += bool(line)
                if extra > _MAX_LINES_AFTER_DONE:
                    return


class _StreamTranslator:
    """Turns the engine's server-sent events into chunks and remembers how it ended."""

    def __init__(self, request: ChatCompletionRequest) -> None:
        self._request = request
        self._prompt_tokens: int | None = None
        self._generated_chars = 0
        self._content_chunks = 0
        self.finish_reason: FinishReason | None = None
        self.usage: Usage | None = None
        self.done = False

    @property
    def estimated_usage(self) -> bool:
        return self.usage is None

    def feed(self, line: str) -> GenerationChunk | None:
        """Take one line of the stream; return a chunk if it carried new output."""
        if not line.startswith("data:"):
            return None  # blank separators, comments, event names
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            self.done = True
            return None
        event = _decode_event(data)
        self.usage = _parse_usage(event.get("usage")) or self.usage
        choice = _first_choice(event.get("choices"))
        if choice is None:
            return None
        if choice.get("finish_reason"):
            self.finish_reason = _finish_reason(choice["finish_reason"])
        return self._delta_chunk(choice.get("delta"))

    def final_chunk(self) -> GenerationChunk:
        """The end of the generation; usage is estimated if the engine sent none."""
        if self.finish_reason is None:
            raise BackendError("the upstream engine's stream ended before the generation finished")
        return GenerationChunk(
            finish_reason=self.finish_reason, usage=self.usage or self._estimate_usage()
        )

    def _delta_chunk(self, delta: Any) -> GenerationChunk | None:
        if not isinstance(delta, dict):
            return None
        content = delta.get("content") or None
        tool_calls = _tool_call_deltas(delta.get("tool_calls"))
        if content is None and tool_calls is None:
            return None
        if not isinstance(content, str | None):
            raise BackendError("the upstream engine sent a malformed stream (content)")
        self._generated_chars += len(content or "") + _tool_call_chars(tool_calls)
        self._content_chunks += 1
        return GenerationChunk(content=content, tool_calls=tool_calls, progress=self._progress())

    def _progress(self) -> Usage:
        """Tokens so far: the engine's own running usage if it sends one, else an estimate
        (an engine streams about one token a chunk, and about four characters a token)."""
        if self.usage is not None:
            return self.usage
        prompt = self._estimated_prompt_tokens()
        completion = max(self._content_chunks, _estimate_tokens(self._generated_chars))
        return Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )

    def _estimate_usage(self) -> Usage:
        """A rough count (about four characters a token), for engines that report none."""
        prompt = self._estimated_prompt_tokens()
        completion = _estimate_tokens(self._generated_chars)
        return Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )

    def _estimated_prompt_tokens(self) -> int:
        if self._prompt_tokens is None:
            self._prompt_tokens = _estimate_tokens(_prompt_chars(self._request))
        return self._prompt_tokens


def _load_event(data: str) -> Any:
    """The JSON of one event, nested at most :data:`MAX_JSON_DEPTH` deep (else ValueError)."""
    if nests_deeper_than(data, MAX_JSON_DEPTH):
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return load_json(data)


def _decode_event(data: str) -> dict[str, Any]:
    try:
        event = _load_event(data)
    except ValueError as exc:
        raise BackendError("the upstream engine sent a malformed stream (bad JSON)") from exc
    if not isinstance(event, dict):
        raise BackendError("the upstream engine sent a malformed stream (not an object)")
    if "error" in event or event.get("object") == "error":
        logger.warning("upstream engine reported an error in the middle of a stream")
        raise BackendError("the upstream engine failed during the generation")
    return event


def _first_choice(choices: Any) -> dict[str, Any] | None:
    """The choice with index 0 (a job has one choice; others are ignored)."""
    if not isinstance(choices, list):
        return None
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            return choice
    return None


def _finish_reason(raw: Any) -> FinishReason:
    reason = str(raw)
    if reason in _FAILED_FINISH_REASONS:
        raise BackendError(f"the upstream engine ended the generation with '{reason}'")
    return _FINISH_REASONS.get(reason, "stop")


def _tool_call_deltas(raw: Any) -> list[ToolCallDelta] | None:
    if not raw:
        return None
    if not isinstance(raw, list):
        raise BackendError("the upstream engine sent a malformed stream (tool_calls)")
    try:
        # Some engines leave out ``index`` when there is one call per delta.
        return [ToolCallDelta.model_validate({"index": i, **call}) for i, call in enumerate(raw)]
    except (ValidationError, TypeError) as exc:
        raise BackendError("the upstream engine sent a malformed stream (tool_calls)") from exc


def _tool_call_chars(tool_calls: list[ToolCallDelta] | None) -> int:
    functions = [call.function for call in tool_calls or [] if call.function is not None]
    return sum(len(f.name or "") + len(f.arguments or "") for f in functions)


def _parse_usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    total = raw.get("total_tokens")
    try:
        return Usage.model_validate(
            {**raw, "total_tokens": total if isinstance(total, int) else prompt + completion}
        )
    except ValidationError:
        return None


def _prompt_chars(request: ChatCompletionRequest) -> int:
    chars = 0
    for message in request.messages:
        if isinstance(message.content, str):
            chars += len(message.content)
        elif message.content is not None:
            chars += sum(len(getattr(part, "text", "")) for part in message.content)
        chars += sum(len(call.function.arguments) for call in message.tool_calls or [])
    return chars


def _estimate_tokens(chars: int) -> int:
    return math.ceil(chars / _CHARS_PER_TOKEN)


# --- errors --------------------------------------------------------------------------


def _transport_error(exc: httpx.HTTPError) -> BackendError:
    """Translate an httpx failure; the message names the kind, never the URL or key."""
    if isinstance(exc, httpx.TimeoutException):
        return BackendError("the upstream engine timed out")
    if isinstance(exc, httpx.ConnectError):
        return BackendError("could not connect to the upstream engine")
    return BackendError(f"the connection to the upstream engine failed ({type(exc).__name__})")


def _status_error(
    response: httpx.Response, *, engine_model: str | None, api_key: str | None
) -> InfermeshError:
    """The error for an engine's 4xx/5xx answer (its body must have been read)."""
    status = response.status_code
    logger.warning("upstream engine answered HTTP %d", status)
    if status in (401, 403):
        return BackendError(f"the upstream engine refused the worker's credentials (HTTP {status})")
    if status == 404:
        if engine_model is None:
            return BackendError("the upstream engine has no such endpoint (HTTP 404)")
        return BackendError(f"the upstream engine does not serve the model '{engine_model}'")
    if status == 408:
        return BackendError("the upstream engine timed out (HTTP 408)")
    if status == 429:
        return BackendError(
            "the upstream engine is rate limiting requests (HTTP 429)",
            retry_after=_retry_after(response),
        )
    if status >= 500:
        return BackendError(f"the upstream engine failed (HTTP {status})")
    message, param = _envelope(response.content)
    message = _redact(
        message or f"the upstream engine rejected the request (HTTP {status})", api_key
    )
    return UpstreamRejected(message, param=param)


def _envelope(content: bytes) -> tuple[str | None, str | None]:
    """Message and param of an error body: OpenAI's envelope, vLLM's flat one, or FastAPI's."""
    try:
        body = load_json(content.decode(errors="replace"))
    except ValueError:
        return None, None
    error = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(error, str):
        return error, None
    if not isinstance(error, dict):
        return None, None
    message = error.get("message") or error.get("detail")
    param = error.get("param")
    return (str(message) if message else None), (param if isinstance(param, str) else None)


def _redact(message: str, api_key: str | None) -> str:
    if api_key:
        message = message.replace(api_key, "***")
    if len(message) > _MAX_ERROR_CHARS:
        message = message[: _MAX_ERROR_CHARS - 3] + "..."
    return message


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
