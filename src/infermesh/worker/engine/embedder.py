"""Embeddings from an encoder loaded with ``transformers``, in batches that jobs share.

:class:`Embedder` holds one model. A job's inputs are tokenized and checked first (an
input longer than the context window is refused, never cut), sorted by length so that a
batch pads little, then queued. One task takes up to ``max_batch_size`` inputs at a time
(and at most :data:`MAX_BATCH_TOKENS` padded tokens), one from each job waiting in turn,
so a job that came late shares the forward passes of a large one instead of waiting
behind it; the forward pass runs on a thread. A vector pools the last hidden states of
the input's tokens as the model was trained to (:class:`Pooling`, read from its
sentence-transformers files by :func:`pooling_of`; the mean when it has none), normalised
to length 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from infermesh.errors import BackendError, InvalidRequest
from infermesh.worker.backends.vectors import Vectors

logger = logging.getLogger(__name__)

MAX_BATCH_TOKENS = 32768
"""Padded tokens one forward pass takes at most (beyond one input: each goes alone)."""


PoolingMode = Literal["mean", "cls", "last", "max"]

_MODES: dict[str, PoolingMode] = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "last",
    "pooling_mode_max_tokens": "max",
}
_POOLING_MODULE = "sentence_transformers.models.Pooling"
_NORMALIZE_MODULE = "sentence_transformers.models.Normalize"


@dataclass(frozen=True)
class Pooling:
    """How one vector is made of an input's last hidden states: ``mode`` is the mean of
    its tokens, its first (CLS) token, its last real token or the maximum of each value;
    ``normalize`` scales the vector to length 1."""

    mode: PoolingMode = "mean"
    normalize: bool = True


def pooling_of(directory: Path | None) -> Pooling:
    """The pooling a model was trained with, from the sentence-transformers files in its
    ``directory`` (``modules.json`` and its Pooling module's ``config.json``); the mean
    when there are none or they cannot be read, and, with a warning, when they ask for
    a pooling not supported here (several modes together, ``mean_sqrt_len``, ...).

    The vectors are always normalised, even for a model whose files have no Normalize
    module (e5, for one): an OpenAI-compatible API promises vectors of length 1, and its
    clients rank by dot product as if it were the cosine. A cosine ranking is the same
    either way, and a vector cut to ``dimensions`` is normalised again anyway; only a
    client after the raw length (which no OpenAI model gives) would lose.
    """
    found = _sentence_transformers_pooling(directory) if directory is not None else None
    if found is None:
        logger.info("embedding model %s: mean pooling (no sentence-transformers files)", directory)
        return Pooling()
    mode, normalize = found
    if mode is None:
        logger.warning(
            "embedding model %s: unsupported sentence-transformers pooling; using the mean",
            directory,
        )
        mode = "mean"
    unlike = "" if normalize else " (its files have no Normalize module)"
    logger.info("embedding model %s: %s pooling, normalised%s", directory, mode, unlike)
    return Pooling(mode, normalize=True)


def _sentence_transformers_pooling(directory: Path) -> tuple[PoolingMode | None, bool] | None:
    """The pooling mode (None if not supported) and whether a Normalize module follows,
    from ``directory``'s sentence-transformers files; None without readable ones."""
    try:
        modules = json.loads((directory / "modules.json").read_text(encoding="utf-8"))
        types = {module["type"]: str(module.get("path", "")) for module in modules}
        if _POOLING_MODULE not in types:
            return None
        config_file = directory / types[_POOLING_MODULE] / "config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not isinstance(config, dict):
        return None
    chosen = [key for key, on in config.items() if key.startswith("pooling_mode") and on is True]
    mode = _MODES.get(chosen[0]) if len(chosen) == 1 else None
    return mode, _NORMALIZE_MODULE in types


@dataclass(eq=False)
class _Input:
    ids: list[int]
    vector: asyncio.Future[Vectors]


class Embedder:
    """One embedding model: ``dimensions`` is the length of its vectors,
    ``context_length`` the most tokens an input may have, ``pooling`` how its vectors
    are made of the last hidden states, ``passes`` the forward passes it has run."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        context_length: int,
        max_batch_size: int = 8,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
        pooling: Pooling = Pooling(),
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.context_length = context_length
        self.dimensions = _hidden_size(model)
        self.pooling = pooling
        self._model = model
        self._tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()
        self._vocabulary = int(model.get_input_embeddings().num_embeddings)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._max_batch_size = max_batch_size
        self._max_batch_tokens = max_batch_tokens
        self._waiting: dict[int, deque[_Input]] = {}
        self._jobs = itertools.count()
        self._runner: asyncio.Task[None] | None = None
        self.passes = 0

    def tokenize(self, inputs: list[str] | list[list[int]]) -> list[list[int]]:
        """The token ids of each input (texts tokenized, token arrays checked against the
        vocabulary); raises :class:`InvalidRequest` for an input too long or empty. Call
        it on a thread: a long text takes a while."""
        if inputs and isinstance(inputs[0], str):
            with self._tokenizer_lock:
                encoded = self._tokenizer(
                    inputs, add_special_tokens=True, truncation=False, verbose=False
                )
            ids: list[list[int]] = encoded["input_ids"]
        else:
            ids = inputs  # type: ignore[assignment]  # token arrays
            self._check_vocabulary(ids)
        for index, tokens in enumerate(ids):
            self._check_length(index, len(tokens))
        return ids

    async def vectors(self, ids: list[list[int]]) -> AsyncIterator[tuple[list[int], Vectors]]:
        """The normalised vectors of the inputs ``ids``, some at a time: each piece is
        the indices of its inputs and their vectors (rows). Leaving early drops the
        inputs not yet embedded."""
        loop = asyncio.get_running_loop()
        order = sorted(range(len(ids)), key=lambda index: len(ids[index]))
        queued = [_Input(ids[index], loop.create_future()) for index in order]
        job = next(self._jobs)
        self._waiting[job] = deque(queued)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="embedder")
        try:
            for start in range(0, len(queued), self._max_batch_size):
                group = queued[start : start + self._max_batch_size]
                rows = [await item.vector for item in group]
                yield order[start : start + len(group)], np.stack(rows)
        finally:
            self._waiting.pop(job, None)
            for item in queued:
                if not item.vector.cancel():
                    with contextlib.suppress(asyncio.CancelledError):
                        item.vector.exception()  # seen: a failed batch fails each input

    async def close(self) -> None:
        """Stop embedding; inputs still waiting fail with :class:`BackendError`."""
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        for waiting in self._waiting.values():
            _fail(waiting, "The embedding model was unloaded.")
        self._waiting.clear()

    async def _run(self) -> None:
        while batch := self._take():
            try:
                vectors = await asyncio.to_thread(self._forward, [item.ids for item in batch])
            except asyncio.CancelledError:
                _fail(batch, "The embedding model was unloaded.")
                raise
            except Exception as exc:
                self.passes += 1
                logger.error("an embedding pass failed: %s", type(exc).__name__)
                message = exc.message if isinstance(exc, BackendError) else "The model failed."
                _fail(batch, message)
                continue
            self.passes += 1
            for item, vector in zip(batch, vectors, strict=True):
                if not item.vector.done():
                    item.vector.set_result(vector)

    def _take(self) -> list[_Input]:
        """The next batch: one input from each job waiting in turn, while there is room."""
        batch: list[_Input] = []
        width = 0
        while self._waiting and len(batch) < self._max_batch_size:
            for job in list(self._waiting):
                waiting = self._waiting[job]
                while waiting and waiting[0].vector.done():  # its job has left
                    waiting.popleft()
                if not waiting:
                    del self._waiting[job]
                    continue
                wider = max(width, len(waiting[0].ids))
                if batch and wider * (len(batch) + 1) > self._max_batch_tokens:
                    return batch
                batch.append(waiting.popleft())
                width = wider
                if len(batch) == self._max_batch_size:
                    break
        return batch

    def _forward(self, batch: list[list[int]]) -> Vectors:
        """The pooled vectors of ``batch`` (runs on a thread)."""
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        device = self._model.device
        with torch.inference_mode():
            output = self._model(input_ids=input_ids.to(device), attention_mask=mask.to(device))
            vectors = _pooled(output[0].float(), mask.to(device), self.pooling)
            if not bool(torch.isfinite(vectors).all()):
                raise BackendError("The embedding model produced values that are not finite.")
        result: Vectors = vectors.cpu().numpy()
        return result

    def _check_length(self, index: int, tokens: int) -> None:
        if tokens == 0:
            raise InvalidRequest(f"input[{index}] is empty.", param="input")
        if tokens > self.context_length:
            raise InvalidRequest(
                f"This model's maximum context length is {self.context_length} tokens; "
                f"input[{index}] has {tokens} tokens.",
                param="input",
                code="context_length_exceeded",
            )

    def _check_vocabulary(self, ids: list[list[int]]) -> None:
        for index, tokens in enumerate(ids):
            if max(tokens, default=0) >= self._vocabulary:
                raise InvalidRequest(
                    f"input[{index}] holds a token beyond this model's vocabulary "
                    f"({self._vocabulary} tokens).",
                    param="input",
                )


def _pooled(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """One vector per row of ``hidden`` (batch, tokens, values), pooled over the tokens
    that ``mask`` marks real, padded on either side."""
    real = mask.unsqueeze(-1).bool()
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if pooling.mode == "cls":
        vectors = hidden[rows, mask.argmax(dim=1)]  # the first real token
    elif pooling.mode == "last":
        positions = torch.arange(mask.shape[1], device=mask.device) * mask
        vectors = hidden[rows, positions.argmax(dim=1)]  # the last real token
    elif pooling.mode == "max":
        vectors = hidden.masked_fill(~real, float("-inf")).max(dim=1).values
    else:
        weights = real.float()
        vectors = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
    return torch.nn.functional.normalize(vectors, dim=-1) if pooling.normalize else vectors


def _fail(inputs: Iterable[_Input], message: str) -> None:
    for item in inputs:
        if not item.vector.done():
            item.vector.set_exception(BackendError(message))


def _hidden_size(model: Any) -> int:
    """The length of the model's last hidden states (its vectors)."""
    size = getattr(model.config.get_text_config(), "hidden_size", None)
    if isinstance(size, int) and size > 0:
        return size
    return int(model.get_input_embeddings().embedding_dim)
