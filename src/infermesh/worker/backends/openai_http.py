"""A backend for any OpenAI-compatible engine reached over HTTP.

vLLM, SGLang, llama.cpp's server, Ollama and hosted providers all serve
``POST {base_url}/chat/completions``. The backend forwards the client's request under
the engine's model name, always asks for a stream with usage, and turns the
server-sent events into generation chunks (:mod:`.openai_events`). Of the fields a client
sent that the protocol models do not declare, only :data:`ENGINE_EXTRA_FIELDS` reach the
engine (the gateway drops the others too; this is the worker's own guard).

An embedding job is one ``POST {base_url}/embeddings`` whose answer is checked whole
(:mod:`.openai_embeddings`) before its vectors go on.

Every job is a new request on keep-alive connections (:mod:`.engine_http`: as many as
the jobs running at once, which the agent bounds). A stream is read to the end of its
body after ``[DONE]`` so that its connection can be used again; an engine that keeps the
body open past that loses the connection instead of holding up the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson

from infermesh.errors import BackendError, InfermeshError, UpstreamRejected
from infermesh.protocol.chat import ChatCompletionRequest
from infermesh.protocol.embeddings import EmbeddingJob
from infermesh.protocol.engine_fields import ENGINE_EXTRA_FIELDS, declared_fields
from infermesh.protocol.generation import GenerationChunk, GenerationJob
from infermesh.worker.backends import openai_embeddings
from infermesh.worker.backends.engine_http import (
    EngineConnections,
    EngineResponse,
    EngineTransportError,
)
from infermesh.worker.backends.openai_events import StreamTranslator, sse_lines
from infermesh.worker.backends.vectors import final_chunk, vector_chunk
from infermesh.worker.toolcalls import load_json

logger = logging.getLogger(__name__)

_CHAT_PATH = "chat/completions"
_EMBEDDINGS_PATH = "embeddings"
_MODELS_PATH = "models"
_MAX_ERROR_CHARS = 500
_MAX_ERROR_BODY = 64 * 1024
_MAX_MODEL_LIST = 8 * 1024 * 1024
_END_OF_BODY_TIMEOUT = 1.0
_MAX_LINES_AFTER_DONE = 16
_PARSE_ON_THREAD_BYTES = 256 * 1024


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
        self._api_key = api_key
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._connections: EngineConnections | None = None
        self._warned_no_usage = False

    async def start(self) -> None:
        """Get ready to connect to the engine (connections open as jobs need them)."""
        if self._connections is None:
            headers = {"authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._connections = EngineConnections(
                self.base_url,
                headers=headers,
                read_timeout=self._timeout,
                connect_timeout=self._connect_timeout,
            )

    async def close(self) -> None:
        """Close the idle connections; streams still open end with their jobs."""
        connections, self._connections = self._connections, None
        if connections is not None:
            await connections.aclose()

    async def list_models(self) -> list[str]:
        """The names of the models the engine serves (``GET {base_url}/models``)."""
        connections = self._require_connections()
        try:
            async with connections.request("GET", _MODELS_PATH) as response:
                if response.status >= 400:
                    raise await _status_error(response, engine_model=None, api_key=self._api_key)
                body = await response.read(_MAX_MODEL_LIST)
        except EngineTransportError as exc:
            raise _transport_error(exc) from exc
        try:
            return [str(model["id"]) for model in orjson.loads(body)["data"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError("the upstream engine sent a malformed model list") from exc

    async def generate(
        self, job: GenerationJob, engine_model: str
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream ``job`` from the engine; the last chunk has ``finish_reason`` and usage.

        Closing the iterator early closes the upstream connection, so the engine sees the
        disconnect and stops generating.
        """
        connections = self._require_connections()
        content = _json_bytes(upstream_body(job.request, engine_model))
        translator = StreamTranslator(job.request)
        try:
            async with connections.request("POST", _CHAT_PATH, content) as response:
                if response.status >= 400:
                    raise await _status_error(
                        response, engine_model=engine_model, api_key=self._api_key
                    )
                async with contextlib.aclosing(sse_lines(response.chunks())) as lines:
                    async for line in lines:
                        chunk = translator.feed(line)
                        if chunk is not None:
                            yield chunk
                        if translator.done:
                            await _read_to_end(lines)
                            break
        except EngineTransportError as exc:
            raise _transport_error(exc) from exc
        if translator.estimated_usage and not self._warned_no_usage:
            self._warned_no_usage = True
            logger.warning("upstream engine sends no usage; estimating it (about 4 chars a token)")
        yield translator.final_chunk()

    async def embed(
        self, job: EmbeddingJob, engine_model: str
    ) -> AsyncGenerator[GenerationChunk, None]:
        """The engine's vectors for ``job``'s inputs, checked, then the tokens it read."""
        connections = self._require_connections()
        content = _json_bytes(openai_embeddings.embeddings_body(job, engine_model))
        try:
            async with connections.request("POST", _EMBEDDINGS_PATH, content) as response:
                if response.status >= 400:
                    raise await _status_error(
                        response, engine_model=engine_model, api_key=self._api_key
                    )
                body = await response.read(openai_embeddings.body_limit(job))
        except EngineTransportError as exc:
            raise _transport_error(exc) from exc
        if len(body) > _PARSE_ON_THREAD_BYTES:  # a large answer takes a while to check
            answer = await asyncio.to_thread(openai_embeddings.read_answer, body, job)
        else:
            answer = openai_embeddings.read_answer(body, job)
        prompt_tokens = answer.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = openai_embeddings.estimated_tokens(job)
            if not self._warned_no_usage:
                self._warned_no_usage = True
                logger.warning("upstream engine sends no usage; estimating it")
        yield vector_chunk(answer.indices, answer.vectors)
        yield final_chunk(prompt_tokens)

    def _require_connections(self) -> EngineConnections:
        if self._connections is None:
            raise RuntimeError("OpenAIBackend.start() must be called before use")
        return self._connections


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


# --- errors --------------------------------------------------------------------------


def _transport_error(exc: EngineTransportError) -> BackendError:
    """Translate a transport failure; the message names the kind, never the URL or key."""
    if exc.kind == "timeout":
        return BackendError("the upstream engine timed out")
    if exc.kind == "connect":
        return BackendError("could not connect to the upstream engine")
    return BackendError(f"the connection to the upstream engine failed ({exc.kind})")


async def _status_error(
    response: EngineResponse, *, engine_model: str | None, api_key: str | None
) -> InfermeshError:
    """The error for an engine's 4xx/5xx answer (its body is read here, up to a bound)."""
    status = response.status
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
    try:
        content = await response.read(_MAX_ERROR_BODY)
    except EngineTransportError:
        content = b""
    message, param = _envelope(content)
    message = _redact(
        message or f"the upstream engine rejected the request (HTTP {status})", api_key
    )
    return UpstreamRejected(message, param=param)


async def _read_to_end(lines: AsyncIterator[bytes]) -> None:
    """Read what follows ``[DONE]``, normally just the end of the body, so the connection
    can be used again; give up (the connection is then closed) on an engine that sends
    more or keeps the body open."""
    with contextlib.suppress(TimeoutError, EngineTransportError, BackendError):
        async with asyncio.timeout(_END_OF_BODY_TIMEOUT):
            extra = 0
            async for line in lines:
                extra += bool(line)
                if extra > _MAX_LINES_AFTER_DONE:
                    return


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


def _retry_after(response: EngineResponse) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
