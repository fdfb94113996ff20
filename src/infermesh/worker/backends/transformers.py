"""The in-process backend: models loaded with ``transformers``, served by the batched engine.

Each chat model gets its own :class:`~infermesh.worker.engine.Engine` (a scheduler
thread with a continuous batch). ``generate`` renders the chat template, submits the
prompt and turns the engine's events, delivered into an ``asyncio.Queue`` with
``call_soon_threadsafe``, into :class:`GenerationChunk` objects, reading Hermes-style
tool calls out of the text when the request offered tools. Each embedding model gets an
:class:`~infermesh.worker.engine.embedder.Embedder`; ``embed`` yields its vectors a
batch at a time.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infermesh.errors import BackendError, InvalidRequest
from infermesh.protocol.chat import ChatCompletionRequest, FunctionCallDelta, ToolCallDelta, Usage
from infermesh.protocol.embeddings import EmbeddingJob
from infermesh.protocol.generation import GenerationChunk, GenerationJob
from infermesh.worker.backends.vectors import (
    checked_dimensions,
    final_chunk,
    shortened,
    vector_chunk,
)
from infermesh.worker.toolcalls import ToolCallStream

if TYPE_CHECKING:
    from infermesh.worker.engine import Engine, EngineEvent, EngineStatsSnapshot, Finished
    from infermesh.worker.engine.embedder import Embedder

_DEFAULT_CONTEXT_LENGTH = 4096


@dataclass
class _ServedModel:
    """One loaded model: its engine, a tokenizer for prompts, and its context length."""

    engine: Engine
    tokenizer: Any
    context_length: int
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)

    def render(self, request: ChatCompletionRequest) -> list[int]:
        """The prompt tokens of ``request`` (the tokenizer is not safe to share across threads)."""
        from infermesh.worker.engine import render_prompt

        with self.tokenizer_lock:
            return render_prompt(self.tokenizer, request)

    def max_new_tokens(self, request: ChatCompletionRequest, prompt_tokens: int) -> int:
        """The request's ``max_tokens``, or all the room the context leaves; refuse overflow."""
        room = self.context_length - prompt_tokens
        requested = request.requested_max_tokens()
        if room < 1 or (requested is not None and requested > room):
            asked = prompt_tokens + (requested or 1)
            raise InvalidRequest(
                f"This model's maximum context length is {self.context_length} tokens. "
                f"However, you requested {asked} tokens ({prompt_tokens} in the messages, "
                f"{requested or 1} in the completion).",
                param="messages" if room < 1 else "max_tokens",
                code="context_length_exceeded",
            )
        return requested or room


class TransformersBackend:
    """Serves local or hub models with ``transformers`` on this machine's GPU or CPU.

    ``engine_models`` (chat: causal LMs) and ``embedding_models`` (encoders, loaded with
    ``AutoModel``) are paths or hub ids; each is loaded by :meth:`start` in bf16/fp16 on
    CUDA when available, else float32 on CPU.
    """

    def __init__(
        self,
        engine_models: list[str],
        *,
        embedding_models: list[str] | None = None,
        device: str | None = None,
        max_batch_size: int = 8,
    ) -> None:
        self._engine_models = list(engine_models)
        self._embedding_models = list(embedding_models or [])
        self._device = device
        self._max_batch_size = max_batch_size
        self._served: dict[str, _ServedModel] = {}
        self._embedders: dict[str, Embedder] = {}

    async def start(self) -> None:
        """Load every engine model and start its engine thread."""
        for name in self._engine_models:
            if name not in self._served:
                self._served[name] = await asyncio.to_thread(self._load, name)
        for name in self._embedding_models:
            if name not in self._embedders:
                self._embedders[name] = await asyncio.to_thread(self._load_embedder, name)

    async def close(self) -> None:
        """Stop every engine; jobs still running end with :class:`BackendError`."""
        served, self._served = list(self._served.values()), {}
        embedders, self._embedders = list(self._embedders.values()), {}
        for embedder in embedders:
            await embedder.close()
        await asyncio.gather(*(asyncio.to_thread(model.engine.close) for model in served))

    def engine_stats(self, engine_model: str) -> EngineStatsSnapshot:
        """What the engine of ``engine_model`` has done so far (batch sizes, totals)."""
        return self._model(engine_model).engine.stats.snapshot()

    async def generate(
        self, job: GenerationJob, engine_model: str
    ) -> AsyncIterator[GenerationChunk]:
        """Run ``job`` on ``engine_model``, streaming chunks; closing early cancels it."""
        from infermesh.worker.engine import EngineRequest, sampling_params, uses_tools

        served = self._model(engine_model)
        request = job.request
        prompt_ids = await asyncio.to_thread(served.render, request)
        max_new_tokens = served.max_new_tokens(request, len(prompt_ids))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[EngineEvent] = asyncio.Queue()

        def emit(event: EngineEvent) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        request_id = f"{job.id}:{uuid.uuid4().hex[:12]}"
        served.engine.submit(
            EngineRequest(
                request_id=request_id,
                prompt_ids=prompt_ids,
                max_new_tokens=max_new_tokens,
                emit=emit,
                sampling=sampling_params(request),
                stop=tuple(request.stop_list()),
            )
        )
        try:
            chunks = stream_chunks(
                events, parse_tools=uses_tools(request), prompt_tokens=len(prompt_ids)
            )
            async for chunk in chunks:
                yield chunk
        finally:
            served.engine.cancel(request_id)

    async def embed(self, job: EmbeddingJob, engine_model: str) -> AsyncIterator[GenerationChunk]:
        """The vectors of ``job``'s inputs, a batch at a time, then the tokens read."""
        embedder = self._embedders.get(engine_model)
        if embedder is None:
            raise BackendError(f"The embedding model '{engine_model}' is not loaded here.")
        dimensions = checked_dimensions(job.dimensions, embedder.dimensions)
        ids = await asyncio.to_thread(embedder.tokenize, job.input)
        async for indices, vectors in embedder.vectors(ids):
            yield vector_chunk(indices, shortened(vectors, dimensions))
        yield final_chunk(sum(len(tokens) for tokens in ids))

    def _model(self, engine_model: str) -> _ServedModel:
        served = self._served.get(engine_model)
        if served is None:
            raise BackendError(f"The engine model '{engine_model}' is not loaded on this worker.")
        return served

    def _weights(self, name: str, *, embedding: bool) -> tuple[Any, Any]:
        """The tokenizer and the model (a causal LM, or an encoder for embeddings) of
        ``name``, on this backend's device, for inference (runs in a thread)."""
        import torch
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

        device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
        auto = AutoModel if embedding else AutoModelForCausalLM
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
            model: Any = auto.from_pretrained(name, dtype=_dtype_for(device))
            return tokenizer, model.to(device).eval()
        except Exception as exc:
            what = "embedding model" if embedding else "engine model"
            raise BackendError(f"Could not load the {what} '{name}': {exc}") from exc

    def _load(self, name: str) -> _ServedModel:
        """Load tokenizer and weights, and start an engine for them (runs in a thread)."""
        from infermesh.worker.engine import Engine

        tokenizer, model = self._weights(name, embedding=False)
        engine = Engine(
            model,
            copy.deepcopy(tokenizer),
            eos_token_ids=_eos_token_ids(model, tokenizer),
            max_batch_size=self._max_batch_size,
            name=f"engine:{name}",
        )
        engine.start()
        return _ServedModel(engine, tokenizer, _context_length(model, tokenizer))

    def _load_embedder(self, name: str) -> Embedder:
        """Load an embedding model's tokenizer and weights (runs in a thread)."""
        from infermesh.worker.engine.embedder import Embedder, pooling_of

        tokenizer, model = self._weights(name, embedding=True)
        return Embedder(
            model,
            tokenizer,
            context_length=_embedding_context_length(model, tokenizer),
            max_batch_size=self._max_batch_size,
            pooling=pooling_of(_model_directory(name)),
        )


def _model_directory(name: str) -> Path | None:
    """Where the files of model ``name`` lie: the directory itself, or the snapshot of a
    hub model in the local Hugging Face cache (looked up offline, never downloaded); None
    if the cache holds none of its sentence-transformers files."""
    directory = Path(name)
    if directory.is_dir():
        return directory
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "modules.json")
    except Exception:  # no huggingface_hub, or not a valid repository id
        return None
    return Path(found).parent if isinstance(found, str) else None


async def stream_chunks(
    events: asyncio.Queue[EngineEvent], *, parse_tools: bool, prompt_tokens: int = 0
) -> AsyncIterator[GenerationChunk]:
    """Turn engine events into chunks: content as it comes, then tool calls, finish and usage.

    Every content chunk carries the tokens counted so far (``progress``), so a generation
    cut short can be charged for what it used.
    """
    from infermesh.worker.engine import Failed, TextDelta

    tool_stream = ToolCallStream() if parse_tools else None
    while True:
        event = await events.get()
        if isinstance(event, Failed):
            raise event.error
        if isinstance(event, TextDelta):
            text = tool_stream.feed(event.text) if tool_stream else event.text
            if text:
                yield GenerationChunk(
                    content=text, progress=_usage(prompt_tokens, event.completion_tokens)
                )
            continue
        for chunk in _final_chunks(event, tool_stream):
            yield chunk
        return


def _final_chunks(event: Finished, tool_stream: ToolCallStream | None) -> list[GenerationChunk]:
    """Held-back content, the tool calls found, and the chunk with finish reason and usage."""
    chunks: list[GenerationChunk] = []
    finish_reason = event.reason
    if tool_stream is not None:
        content, calls = tool_stream.finish()
        if content:
            chunks.append(GenerationChunk(content=content))
        if calls:
            deltas = [
                ToolCallDelta(
                    index=index,
                    id=call.id,
                    type="function",
                    function=FunctionCallDelta(
                        name=call.function.name, arguments=call.function.arguments
                    ),
                )
                for index, call in enumerate(calls)
            ]
            chunks.append(GenerationChunk(tool_calls=deltas))
    usage = _usage(event.prompt_tokens, event.completion_tokens)
    reason = "tool_calls" if any(chunk.tool_calls for chunk in chunks) else finish_reason
    chunks.append(GenerationChunk(finish_reason=reason, usage=usage))
    return chunks


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def _dtype_for(device: str) -> Any:
    import torch

    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """End-of-sequence ids from the generation config and the tokenizer together."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids: list[int | None] = list(configured) if isinstance(configured, list) else [configured]
    ids.append(tokenizer.eos_token_id)
    return {int(token) for token in ids if token is not None}


def _context_length(model: Any, tokenizer: Any) -> int:
    """The model's context window: its config's position limit, else the tokenizer's."""
    config = model.config.get_text_config()
    for value in (
        getattr(config, "max_position_embeddings", None),
        getattr(tokenizer, "model_max_length", None),
    ):
        if isinstance(value, int) and 0 < value < 10_000_000:
            return value
    return _DEFAULT_CONTEXT_LENGTH


def _embedding_context_length(model: Any, tokenizer: Any) -> int:
    """The most tokens an input may have: the smaller of the model's position limit and
    the tokenizer's (an encoder's position table may hold a few more than it was
    trained on)."""
    config = model.config.get_text_config()
    limits = [
        value
        for value in (
            getattr(config, "max_position_embeddings", None),
            getattr(tokenizer, "model_max_length", None),
        )
        if isinstance(value, int) and 0 < value < 10_000_000
    ]
    return min(limits, default=_DEFAULT_CONTEXT_LENGTH)
