"""Embedding vectors as a worker sends them: base64 of little-endian float32 values.

Shared by the backends: shortening a vector to the ``dimensions`` a job asked for (cut,
then normalised again), encoding it, and the chunks an embedding job yields (pieces of
vectors, then the end with the input tokens read).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from infermesh.errors import InvalidRequest
from infermesh.protocol.chat import Usage
from infermesh.protocol.embeddings import EmbeddingVector
from infermesh.protocol.generation import GenerationChunk

Vectors = npt.NDArray[np.float32]
"""Vectors as the rows of a matrix."""
_TINY_NORM = 1e-12


def checked_dimensions(requested: int | None, model_dimensions: int) -> int:
    """The length of a job's vectors: what it asked for, at most the model's own."""
    if requested is None:
        return model_dimensions
    if requested > model_dimensions:
        raise InvalidRequest(
            f"This model's vectors have {model_dimensions} dimensions; {requested} were requested.",
            param="dimensions",
        )
    return requested


def normalized(vectors: Vectors) -> Vectors:
    """Each row scaled to length 1 (a row of zeros stays zeros)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    scaled: Vectors = (vectors / np.maximum(norms, _TINY_NORM)).astype(np.float32, copy=False)
    return scaled


def shortened(vectors: Vectors, dimensions: int) -> Vectors:
    """The first ``dimensions`` values of each row, normalised again; as they are if the
    rows are that long already."""
    if vectors.shape[1] <= dimensions:
        return vectors
    return normalized(vectors[:, :dimensions])


def encode_vector(vector: npt.NDArray[np.float32]) -> str:
    """A vector as base64 of little-endian float32 values."""
    return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")


def vector_chunk(indices: Sequence[int], vectors: Vectors) -> GenerationChunk:
    """The chunk carrying ``vectors`` (rows) for the inputs at ``indices``."""
    pieces = [
        EmbeddingVector(index=index, embedding=encode_vector(vector))
        for index, vector in zip(indices, vectors, strict=True)
    ]
    return GenerationChunk(embeddings=pieces)


def final_chunk(prompt_tokens: int) -> GenerationChunk:
    """The last chunk of an embedding job: it read ``prompt_tokens`` and wrote none."""
    usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=0, total_tokens=prompt_tokens)
    return GenerationChunk(finish_reason="stop", usage=usage)
