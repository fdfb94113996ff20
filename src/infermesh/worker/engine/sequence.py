"""One request inside the engine: what was asked, what was generated, what is sent back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from infermesh.errors import BackendError
from infermesh.worker.engine.sampling import SamplingParams, choose_token, make_generator
from infermesh.worker.engine.text import IncrementalDecoder, StopStringGuard


@dataclass(frozen=True, slots=True)
class TextDelta:
    """New text of the answer, and how many tokens the answer has so far."""

    text: str
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Finished:
    """The answer is complete."""

    reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Failed:
    """The engine could not finish the request."""

    error: BackendError


EngineEvent = TextDelta | Finished | Failed
EventSink = Callable[[EngineEvent], None]


@dataclass(frozen=True, slots=True)
class EngineRequest:
    """A request as the engine takes it: prompt tokens, limits and where events go.

    ``emit`` is called from the engine's thread; it must not block.
    """

    request_id: str
    prompt_ids: list[int]
    max_new_tokens: int
    emit: EventSink
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()


class Sequence:
    """A request while it runs: its tokens, its sampler state and its text output.

    Events wait in ``outbox`` until the engine, its bookkeeping done, calls :meth:`deliver`.
    """

    def __init__(
        self, request: EngineRequest, *, tokenizer: Any, eos_ids: frozenset[int], device: Any
    ) -> None:
        self.request = request
        self.generator = make_generator(request.sampling.seed, torch.device(device))
        self.generated = 0
        self.last_token = -1
        self.cache_length = 0
        self.finished = False
        self._eos_ids = eos_ids
        self._decoder = IncrementalDecoder(tokenizer)
        self._guard = StopStringGuard(request.stop)
        self._counts: torch.Tensor | None = None
        self.outbox: list[EngineEvent] = []

    @property
    def request_id(self) -> str:
        """The id the request was submitted with."""
        return self.request.request_id

    def choose(self, logits: torch.Tensor) -> int:
        """Sample this sequence's next token from its row of logits."""
        params = self.request.sampling
        if params.penalised and self._counts is None:
            self._counts = torch.zeros(logits.shape[-1], device=logits.device)
        return choose_token(logits, params, self.generator, self._counts)

    def accept(self, token_id: int) -> None:
        """Record a generated token, send the text it completes, finish if it ends the answer."""
        self.generated += 1
        self.last_token = token_id
        if self._counts is not None:
            self._counts[token_id] += 1
        if token_id in self._eos_ids:
            self._finish("stop")
            return
        text, stopped = self._guard.push(self._decoder.push(token_id))
        self._send_text(text)
        if stopped:
            self._finish("stop", flush=False)
        elif self.generated >= self.request.max_new_tokens:
            self._finish("length")

    def fail(self, error: BackendError) -> None:
        """End the sequence with an error for its consumer."""
        if not self.finished:
            self.finished = True
            self._send(Failed(error))

    def _finish(self, reason: Literal["stop", "length"], *, flush: bool = True) -> None:
        if flush:
            text, stopped = self._guard.push(self._decoder.flush())
            self._send_text(text if stopped else text + self._guard.flush())
        self._send(Finished(reason, len(self.request.prompt_ids), self.generated))
        self.finished = True

    def _send_text(self, text: str) -> None:
        if text:
            self._send(TextDelta(text, self.generated))

    def _send(self, event: EngineEvent) -> None:
        self.outbox.append(event)

    def deliver(self) -> None:
        """Hand the events produced since the last delivery to the consumer."""
        events, self.outbox = self.outbox, []
        for event in events:
            try:
                self.request.emit(event)
            except Exception:
                # The consumer is gone (its event loop closed): nobody waits for this answer.
                self.finished = True
                return
