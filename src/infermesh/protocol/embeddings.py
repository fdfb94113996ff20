"""OpenAI embeddings: the request and answer of ``POST /v1/embeddings``, and the job a
worker runs for it.

A worker sends each vector as base64 of little-endian float32 values (the same bytes as
OpenAI's ``encoding_format: "base64"``): a quarter of the size of JSON numbers, and the
gateway hands it to a client that asked for base64 without decoding it.
"""

from __future__ import annotations

from typing import Annotated, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from infermesh.protocol.base import WireModel

MAX_EMBEDDING_INPUTS = 2048
"""Inputs one request may hold (OpenAI's limit)."""
MAX_EMBEDDING_DIMENSIONS = 16384
"""The longest vector any catalog model may have."""
MAX_TOKEN_ID = 2**31 - 1

TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]
TextInputs = Annotated[list[str], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
TokenInputs = Annotated[
    list[Annotated[list[TokenId], Field(min_length=1)]],
    Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS),
]


class EmbeddingRequest(WireModel):
    """``POST /v1/embeddings``. Unknown fields are accepted and ignored."""

    model: str = Field(min_length=1)
    input: str | Annotated[list[TokenId], Field(min_length=1)] | TextInputs | TokenInputs
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1, le=MAX_EMBEDDING_DIMENSIONS)
    user: str | None = None

    def inputs(self) -> list[str] | list[list[int]]:
        """The inputs as a list: of texts, or of token arrays."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if value and isinstance(value[0], int):
            return [value]  # one array of token ids
        return cast(list[str] | list[list[int]], value)


class Embedding(WireModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(WireModel):
    """Tokens read and what they cost (``cost`` in USD, ``cost_micro_usd`` exact)."""

    prompt_tokens: int
    total_tokens: int
    cost: float | None = None
    cost_micro_usd: int | None = None


class EmbeddingList(WireModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# --- the worker's side ---------------------------------------------------------------


class EmbeddingJob(BaseModel):
    """Inputs for a worker to embed (sent in a ``job`` frame, protocol version 3).

    ``dimensions`` asks for vectors that long (cut and normalised again where the engine
    does not do it itself); None gives the model's own length."""

    model_config = ConfigDict(extra="forbid")

    id: str
    model: str
    kind: Literal["embedding"] = "embedding"
    input: TextInputs | TokenInputs
    dimensions: int | None = Field(default=None, ge=1, le=MAX_EMBEDDING_DIMENSIONS)


MAX_VECTOR_CHARS = -(-MAX_EMBEDDING_DIMENSIONS * 4 // 3) * 4
"""The base64 length of the longest vector."""


class EmbeddingVector(BaseModel):
    """One input's vector: base64 of little-endian float32 values."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0, lt=MAX_EMBEDDING_INPUTS)
    embedding: str = Field(max_length=MAX_VECTOR_CHARS)


def vector_chars(dimensions: int) -> int:
    """The base64 length of a vector of ``dimensions`` float32 values."""
    return -(-dimensions * 4 // 3) * 4
