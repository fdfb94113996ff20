"""The vectors of an embedding job, checked as a worker sends them, and the answer made
of them.

A worker is untrusted: every vector must be for an input of the job, come once, be as
long as asked and hold finite numbers. Anything else fails the job (it is tried on
another worker) and counts against the worker.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from infermesh.errors import WorkerMisbehaved
from infermesh.protocol.embeddings import EmbeddingVector, vector_chars


class VectorAssembly:
    """The vectors of one embedding job: ``count`` inputs, ``dimensions`` numbers each."""

    def __init__(self, count: int, dimensions: int) -> None:
        self.count = count
        self.dimensions = dimensions
        self._chars = vector_chars(dimensions)
        self._vectors: list[str | None] = [None] * count
        self._decoded: list[bytes] = [b""] * count
        self._received = 0

    @property
    def complete(self) -> bool:
        return self._received == self.count

    def add(self, vectors: list[EmbeddingVector]) -> None:
        """Take vectors from one chunk; raises :class:`WorkerMisbehaved` for a bad one."""
        for vector in vectors:
            index = vector.index
            if index >= self.count:
                raise _bad(f"a vector for input {index} of a job of {self.count} inputs")
            if self._vectors[index] is not None:
                raise _bad(f"a second vector for input {index}")
            if len(vector.embedding) != self._chars:
                raise _bad(f"a vector of the wrong length for input {index}")
            try:
                raw = base64.b64decode(vector.embedding, validate=True)
            except (binascii.Error, ValueError):
                raise _bad(f"a vector that is not base64 for input {index}") from None
            if not _finite(raw):
                raise _bad(f"a vector with a number that is not finite for input {index}")
            self._vectors[index] = vector.embedding
            self._decoded[index] = raw
            self._received += 1

    def finish(self) -> None:
        """The job ended: every input must have its vector."""
        if not self.complete:
            raise _bad(f"{self._received} vectors for {self.count} inputs")

    def encoded(self) -> list[str]:
        """The vectors, in input order, as base64 of little-endian float32 values."""
        return [vector for vector in self._vectors if vector is not None]

    def decoded(self) -> list[bytes]:
        """The vectors, in input order, as little-endian float32 values (decoded once,
        when they were checked)."""
        return self._decoded if self.complete else []


def embedding_list(
    vectors: list[str],
    decoded: list[bytes],
    *,
    model: str,
    encoding: str,
    usage: dict[str, Any],
) -> bytes:
    """The ``list`` of ``embedding`` objects a client gets, as JSON bytes (float vectors
    are written by orjson straight from their float32 values, ``decoded``)."""
    import numpy as np  # not on the import path of a gateway that serves no embeddings

    data: list[dict[str, Any]] = []
    for index, vector in enumerate(vectors):
        value: Any = vector
        if encoding != "base64":
            value = np.frombuffer(decoded[index], dtype="<f4")
        data.append({"object": "embedding", "index": index, "embedding": value})
    body = {"object": "list", "data": data, "model": model, "usage": usage}
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _finite(raw: bytes) -> bool:
    import numpy as np

    return bool(np.isfinite(np.frombuffer(raw, dtype="<f4")).all())


def _bad(what: str) -> WorkerMisbehaved:
    return WorkerMisbehaved(f"The worker sent {what}.")
