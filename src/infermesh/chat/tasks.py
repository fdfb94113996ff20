"""What a run does for each kind of request it can own.

A :class:`~infermesh.chat.run.ChatRun` owns a request's life (admission, hold, dispatch,
failover, settlement) whatever its kind; its :class:`Task` says what the request is:
how it is checked against the model, what it draws from the rate limits, the most it can
cost, the job a worker runs for it, and the bounds of the usage a worker may claim.
Chat completions (and the Responses and Messages APIs, translated to them) are a
:class:`ChatTask`; embeddings an :class:`EmbeddingTask`.
"""

from __future__ import annotations

import math
from typing import Protocol

from infermesh.billing.pricing import TokenBound, token_bound
from infermesh.catalog.spec import ModelSpec
from infermesh.chat.accounting import UsageBounds
from infermesh.chat.counting import TokenCounter
from infermesh.chat.validation import check_request, engine_request
from infermesh.errors import InvalidRequest
from infermesh.limits.service import CHARS_PER_TOKEN, requested_tokens
from infermesh.protocol.chat import ChatCompletionRequest
from infermesh.protocol.embeddings import EmbeddingJob, EmbeddingRequest, vector_chars
from infermesh.protocol.generation import GenerationJob, WorkerJob

EMBEDDING_INPUT_OVERHEAD = 8
"""Tokens an embedding model may add to each input (start, end, separator tokens)."""


class Task(Protocol):
    """One kind of request, as its run needs it."""

    @property
    def model(self) -> str: ...

    @property
    def streamed(self) -> bool: ...

    @property
    def id_prefix(self) -> str:
        """The prefix of the run's id (which is also its charge's and usage record's)."""
        ...

    def check(self, spec: ModelSpec, *, max_image_bytes: int) -> None:
        """Raise :class:`InvalidRequest` for anything the model cannot honour."""

    def token_budget(self) -> int:
        """The tokens it draws from the rate limits before it runs (an estimate)."""
        ...

    def token_bound(self, spec: ModelSpec) -> TokenBound:
        """The most tokens it can use on ``spec``: what its hold is priced at."""
        ...

    def job(self, job_id: str, spec: ModelSpec) -> WorkerJob:
        """The job a worker runs for it."""
        ...

    def max_output_tokens(self, spec: ModelSpec) -> int:
        """The most tokens a worker may generate for it."""
        ...

    def vector_chars(self, spec: ModelSpec) -> int:
        """The most characters of vectors (base64) a worker may send for it."""
        ...

    def usage_bounds(self, counter: TokenCounter, spec: ModelSpec) -> UsageBounds:
        """The bounds of the usage a worker may claim for it (computed at its end)."""
        ...

    @property
    def vector_count(self) -> int:
        """The vectors a worker sends for it (one per input of an embedding request)."""
        ...


class ChatTask:
    """A chat completion."""

    id_prefix = "chatcmpl"
    vector_count = 0

    def __init__(self, request: ChatCompletionRequest) -> None:
        self.request = request

    @property
    def model(self) -> str:
        return self.request.model

    @property
    def streamed(self) -> bool:
        return bool(self.request.stream)

    def check(self, spec: ModelSpec, *, max_image_bytes: int) -> None:
        check_request(self.request, spec, max_image_bytes=max_image_bytes)

    def token_budget(self) -> int:
        return requested_tokens(self.request)

    def token_bound(self, spec: ModelSpec) -> TokenBound:
        return token_bound(self.request, context_length=spec.context_length)

    def job(self, job_id: str, spec: ModelSpec) -> GenerationJob:
        return GenerationJob(id=job_id, model=spec.id, request=engine_request(self.request))

    def max_output_tokens(self, spec: ModelSpec) -> int:
        requested = self.request.requested_max_tokens()
        context = spec.context_length
        return context if requested is None else min(requested, context)

    def vector_chars(self, spec: ModelSpec) -> int:
        return 0

    def usage_bounds(self, counter: TokenCounter, spec: ModelSpec) -> UsageBounds:
        request = self.request
        return UsageBounds(
            prompt_tokens=counter.prompt_bound(request),
            max_output_tokens=self.max_output_tokens(spec),
            stop_bytes=sum(len(stop.encode()) for stop in request.stop_list()),
        )


class EmbeddingTask:
    """Embeddings of one or more inputs."""

    id_prefix = "embd"

    def __init__(self, request: EmbeddingRequest) -> None:
        self.request = request
        self.inputs = request.inputs()
        self.vector_count = len(self.inputs)

    @property
    def model(self) -> str:
        return self.request.model

    @property
    def streamed(self) -> bool:
        return False

    def dimensions(self, spec: ModelSpec) -> int:
        """The length of every vector of the answer."""
        assert spec.dimensions is not None  # the catalog holds no embedding model without
        return self.request.dimensions or spec.dimensions

    def check(self, spec: ModelSpec, *, max_image_bytes: int) -> None:
        if spec.kind != "embedding":
            raise InvalidRequest(
                f"'{spec.id}' is a chat model; it does not make embeddings. Use an embedding "
                "model (GET /v1/models lists each model's kind and endpoints).",
                param="model",
                code="model_not_embedding",
            )
        assert spec.dimensions is not None
        wanted = self.request.dimensions
        if wanted is not None and wanted > spec.dimensions:
            raise InvalidRequest(
                f"dimensions is {wanted}; '{spec.id}' makes vectors of {spec.dimensions} at most.",
                param="dimensions",
            )
        for index, item in enumerate(self.inputs):
            if isinstance(item, str):
                if not item:
                    raise InvalidRequest(
                        "An input must not be an empty string.", param=f"input[{index}]"
                    )
            elif len(item) > spec.context_length:
                raise InvalidRequest(
                    f"input[{index}] has {len(item)} tokens, more than the context length "
                    f"of '{spec.id}' ({spec.context_length} tokens).",
                    param=f"input[{index}]",
                    code="context_length_exceeded",
                )

    def token_budget(self) -> int:
        return sum(
            max(math.ceil(len(item) / CHARS_PER_TOKEN), 1) if isinstance(item, str) else len(item)
            for item in self.inputs
        )

    def token_bound(self, spec: ModelSpec) -> TokenBound:
        context = spec.context_length
        prompt = sum(min(_size(item) + EMBEDDING_INPUT_OVERHEAD, context) for item in self.inputs)
        return TokenBound(prompt_tokens=prompt, completion_tokens=0)

    def job(self, job_id: str, spec: ModelSpec) -> EmbeddingJob:
        return EmbeddingJob(
            id=job_id, model=spec.id, input=self.inputs, dimensions=self.request.dimensions
        )

    def max_output_tokens(self, spec: ModelSpec) -> int:
        return 0

    def vector_chars(self, spec: ModelSpec) -> int:
        return len(self.inputs) * vector_chars(self.dimensions(spec))

    def usage_bounds(self, counter: TokenCounter, spec: ModelSpec) -> UsageBounds:
        """Each input's tokens as the gateway counts them (its tokenizer, else its bytes),
        plus the few an embedding model adds, within the context."""
        context = spec.context_length
        prompt = 0
        for item in self.inputs:
            counted = counter.count_text(item) if isinstance(item, str) else len(item)
            size = _size(item) if counted is None else counted
            prompt += min(size + EMBEDDING_INPUT_OVERHEAD, context)
        return UsageBounds(prompt_tokens=prompt, max_output_tokens=0)


def _size(item: str | list[int]) -> int:
    """An upper bound on an input's tokens: its UTF-8 bytes, or its token count."""
    return len(item.encode()) if isinstance(item, str) else len(item)


def task_for(request: ChatCompletionRequest | EmbeddingRequest) -> ChatTask | EmbeddingTask:
    """The task of a request."""
    if isinstance(request, EmbeddingRequest):
        return EmbeddingTask(request)
    return ChatTask(request)
