"""OpenAI's ``POST /embeddings`` as a worker asks an engine for it, and the checks on what
the engine answers.

The engine is asked for base64 vectors (a quarter of the size of JSON numbers); an
answer with lists of numbers (some engines ignore ``encoding_format``) is read too. The
engine is trusted no more than a worker is: its body is read up to a bound set by the
job, and its answer must hold one vector for each input, each index once, all of one
length (a longer one than the job's ``dimensions``, from an engine that ignores
``dimensions``, is cut and normalised again here; a shorter one fails the job), of
finite float32 values.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from infermesh.errors import BackendError
from infermesh.protocol.embeddings import (
    MAX_EMBEDDING_DIMENSIONS,
    MAX_TOKEN_ID,
    MAX_VECTOR_CHARS,
    EmbeddingJob,
)
from infermesh.worker.backends.vectors import Vectors, shortened

MAX_BODY_BYTES = 256 * 1024 * 1024
"""The largest answer read from an engine, whatever the job."""
_NUMBER_CHARS = 26
"""The most characters a float32 takes in JSON, with its separator."""
_BODY_SLACK = 64 * 1024
_CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class EmbeddingAnswer:
    """An engine's checked answer: the vectors (rows) of the inputs at ``indices``, and
    the tokens it says it read (None when it did not say)."""

    indices: list[int]
    vectors: Vectors
    prompt_tokens: int | None


def embeddings_body(job: EmbeddingJob, engine_model: str) -> dict[str, Any]:
    """The JSON body asking the engine for ``job``'s vectors, as base64."""
    body: dict[str, Any] = {
        "model": engine_model,
        "input": job.input,
        "encoding_format": "base64",
    }
    if job.dimensions is not None:
        body["dimensions"] = job.dimensions
    return body


def body_limit(job: EmbeddingJob) -> int:
    """The most bytes an honest answer to ``job`` can take (vectors as JSON numbers of
    the longest length a model may have)."""
    per_vector = MAX_EMBEDDING_DIMENSIONS * _NUMBER_CHARS + 128
    return min(len(job.input) * per_vector + _BODY_SLACK, MAX_BODY_BYTES)


def estimated_tokens(job: EmbeddingJob) -> int:
    """The input tokens of ``job`` for an engine that does not say (about 4 characters a
    token for text)."""
    return sum(
        len(item) if isinstance(item, list) else max(1, -(-len(item) // _CHARS_PER_TOKEN))
        for item in job.input
    )


def read_answer(content: bytes, job: EmbeddingJob) -> EmbeddingAnswer:
    """Check an engine's answer to ``job``; raise :class:`BackendError` if it is not one."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise BackendError("the upstream engine sent embeddings that are not JSON") from None
    data = body.get("data") if isinstance(body, dict) else None
    count = len(job.input)
    if not isinstance(data, list) or len(data) != count:
        found = len(data) if isinstance(data, list) else "no"
        raise BackendError(f"the upstream engine sent {found} vectors for {count} inputs")
    indices: list[int] = []
    rows: list[Vectors] = []
    for position, item in enumerate(data):
        if not isinstance(item, dict):
            raise BackendError("the upstream engine sent a malformed embedding")
        index = item.get("index", position)
        if type(index) is not int or not 0 <= index < count:
            raise BackendError("the upstream engine sent a vector for no input")
        indices.append(index)
        rows.append(_vector(item.get("embedding")))
    if len(set(indices)) != count:
        raise BackendError("the upstream engine sent an input's vector twice")
    if len({len(row) for row in rows}) != 1:
        raise BackendError("the upstream engine sent vectors of different lengths")
    vectors = _of_dimensions(np.stack(rows), job.dimensions)
    return EmbeddingAnswer(indices, vectors, _prompt_tokens(body.get("usage")))


def _vector(value: object) -> Vectors:
    """One vector as the engine sent it: base64 of float32 values, or a list of numbers."""
    if isinstance(value, str):
        if len(value) > MAX_VECTOR_CHARS:
            raise BackendError("the upstream engine sent a vector that is too long")
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BackendError("the upstream engine sent a vector that is not base64") from None
        if not raw or len(raw) % 4:
            raise BackendError("the upstream engine sent a vector that is not float32 values")
        vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    elif isinstance(value, list) and len(value) <= MAX_EMBEDDING_DIMENSIONS:
        try:
            numbers = np.array(value, dtype=np.float64)
        except (ValueError, TypeError):
            raise BackendError("the upstream engine sent a vector that is not numbers") from None
        if numbers.ndim != 1 or not len(numbers):
            raise BackendError("the upstream engine sent a vector that is not numbers")
        with np.errstate(over="ignore"):  # past float32's range: infinite, refused below
            vector = numbers.astype(np.float32)
    else:
        raise BackendError("the upstream engine sent a malformed or too long vector")
    if len(vector) > MAX_EMBEDDING_DIMENSIONS or not np.isfinite(vector).all():
        raise BackendError("the upstream engine sent a vector that is too long or not finite")
    return vector


def _of_dimensions(vectors: Vectors, dimensions: int | None) -> Vectors:
    if dimensions is None:
        return vectors
    if vectors.shape[1] < dimensions:
        raise BackendError(
            f"the upstream engine sent vectors of {vectors.shape[1]} dimensions; "
            f"{dimensions} were asked for"
        )
    return shortened(vectors, dimensions)


def _prompt_tokens(usage: object) -> int | None:
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if type(tokens) is int and 0 <= tokens <= MAX_TOKEN_ID:
        return tokens
    return None
