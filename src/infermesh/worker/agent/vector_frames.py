"""An embedding job's vectors, packed into the ``chunk`` frames a worker sends.

A chunk frame carries at most :data:`VECTOR_FRAME_BYTES` of vectors, well under the
1 MiB a gateway expects a frame to stay within (a ``batch`` frame of several stays within
:data:`~infermesh.protocol.wire.MAX_FRAME_BYTES`: the outbox sees to it), and never
none, so a job of n inputs takes at most n chunk frames. The first vectors go at once
(the gateway times a job's first piece); those that follow are gathered and sent when a
frame is full, when :data:`JOIN_SECONDS` have passed, or at the end. The engine's
vectors are checked on the way: one for no input, one sent twice, or an end without a
vector for every input fails the job here (:class:`BackendError`) rather than reach a
gateway that would penalise the worker for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from infermesh.errors import BackendError
from infermesh.protocol.embeddings import EmbeddingVector
from infermesh.protocol.generation import GenerationChunk

VECTOR_FRAME_BYTES = 512 * 1024
"""The most bytes of vectors (base64 and their JSON around it) one chunk frame carries."""
VECTOR_JSON_BYTES = 32
"""The JSON around one vector's base64: ``{"index":2047,"embedding":""},``."""
JOIN_SECONDS = 1.0
"""The longest vectors are held back before they are sent."""


class VectorFrames:
    """Packs the vectors of one job of ``inputs`` inputs into chunks; ``clock`` tells
    the time in seconds."""

    def __init__(self, inputs: int, clock: Callable[[], float]) -> None:
        self._inputs = inputs
        self._clock = clock
        self._seen: set[int] = set()
        self._pending: list[EmbeddingVector] = []
        self._size = 0
        self._first = True
        self._since = clock()

    def add(self, vectors: Iterable[EmbeddingVector]) -> list[GenerationChunk]:
        """The chunks to send now that ``vectors`` came from the engine."""
        ready: list[GenerationChunk] = []
        for vector in vectors:
            self._check(vector.index)
            size = len(vector.embedding) + VECTOR_JSON_BYTES
            if self._pending and self._size + size > VECTOR_FRAME_BYTES:
                ready.append(self._take())
            self._pending.append(vector)
            self._size += size
        if self._pending and (self._first or self._clock() - self._since >= JOIN_SECONDS):
            self._first = False
            ready.append(self._take())
        return ready

    def finish(self) -> list[GenerationChunk]:
        """The chunk of the vectors still held, once the engine has ended the job."""
        if len(self._seen) != self._inputs:
            missing = self._inputs - len(self._seen)
            raise BackendError(f"The engine ended the job without {missing} of its vectors.")
        return [self._take()] if self._pending else []

    def _check(self, index: int) -> None:
        if not 0 <= index < self._inputs or index in self._seen:
            raise BackendError("The engine sent a vector for no input, or one twice.")
        self._seen.add(index)

    def _take(self) -> GenerationChunk:
        chunk = GenerationChunk(embeddings=self._pending)
        self._pending, self._size = [], 0
        self._since = self._clock()
        return chunk
