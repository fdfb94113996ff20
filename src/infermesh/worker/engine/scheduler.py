"""The engine: a background thread that steps every running request of one model together.

Requests wait in a queue; before each decode step the scheduler prefills as many
newcomers as the batch has room for and merges them into the running batch (continuous
batching), drops cancelled and finished sequences, then runs one forward pass for all
of them. Events go back through each request's ``emit`` callback.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

import torch
from transformers import DynamicCache

from infermesh.errors import BackendError
from infermesh.worker.engine.batch import RunningBatch
from infermesh.worker.engine.sequence import EngineRequest, Failed, Sequence
from infermesh.worker.engine.stats import EngineStats

logger = logging.getLogger(__name__)


class Engine:
    """Continuous-batching generation for one causal LM, on a thread of its own.

    ``submit`` and ``cancel`` may be called from any thread. The tokenizer is used only
    by the engine's thread once the engine has started.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        eos_token_ids: Iterable[int],
        max_batch_size: int = 8,
        name: str = "engine",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.stats = EngineStats()
        self._model = model
        self._tokenizer = tokenizer
        self._eos_ids = frozenset(eos_token_ids)
        self._max_batch_size = max_batch_size
        self._name = name
        self._device = model.device
        self._condition = threading.Condition()
        self._waiting: deque[EngineRequest] = deque()
        self._cancelled: set[str] = set()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._batch = RunningBatch()
        self._running_ids: frozenset[str] = frozenset()
        accepts_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._prefill_options = {"logits_to_keep": 1} if accepts_logits_to_keep else {}

    def start(self) -> None:
        """Start the scheduler thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread; requests still waiting or running fail with :class:`BackendError`."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, request: EngineRequest) -> None:
        """Queue a request; it joins the running batch at the next step with room for it."""
        with self._condition:
            if self._stopping or self._thread is None:
                raise BackendError("The engine is not running.")
            self._waiting.append(request)
            self.stats.record_load(running=len(self._running_ids), waiting=len(self._waiting))
            self._condition.notify_all()

    def cancel(self, request_id: str) -> None:
        """Stop working on a request (waiting or running); unknown ids are ignored."""
        with self._condition:
            for request in self._waiting:
                if request.request_id == request_id:
                    self._waiting.remove(request)
                    self.stats.record_end(cancelled=1)
                    return
            # It may be running, or being prefilled right now: the next step drops it.
            self._cancelled.add(request_id)
            self._condition.notify_all()

    def running_ids(self) -> frozenset[str]:
        """Ids of the requests in the running batch."""
        return self._running_ids

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while (work := self._next_work()) is not None:
                    self._step(*work)
        except Exception:  # pragma: no cover - a bug in the loop itself
            logger.exception("engine %s stopped on an unexpected error", self._name)
        finally:
            self._shutdown()

    def _next_work(self) -> tuple[list[EngineRequest], set[str]] | None:
        """Wait for something to do; take the newcomers that fit and the cancelled ids."""
        with self._condition:
            while not (self._stopping or self._waiting or len(self._batch)):
                self._condition.wait()
            if self._stopping:
                return None
            room = self._max_batch_size - len(self._batch)
            newcomers = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
            cancelled, self._cancelled = self._cancelled, set()
            return newcomers, cancelled

    def _step(self, newcomers: list[EngineRequest], cancelled: set[str]) -> None:
        """Drop cancelled sequences, admit newcomers, decode once; then deliver the events."""
        if cancelled:
            self._drop_cancelled(cancelled)
        admitted = [self._admit(request) for request in newcomers]
        self._publish_load()
        _deliver(admitted)
        if len(self._batch):
            stepped = list(self._batch.sequences)
            self._decode()
            self._publish_load()
            _deliver(stepped)

    def _drop_cancelled(self, cancelled: set[str]) -> None:
        for sequence in self._batch.sequences:
            if sequence.request_id in cancelled:
                sequence.finished = True
        self.stats.record_end(cancelled=len(self._batch.drop_finished()))

    def _admit(self, request: EngineRequest) -> Sequence:
        """Prefill a newcomer, take its first token, and merge it into the running batch."""
        sequence = Sequence(
            request, tokenizer=self._tokenizer, eos_ids=self._eos_ids, device=self._device
        )
        try:
            cache = self._prefill(sequence)
            if not sequence.finished:
                self._batch.add(sequence, cache)
        except Exception as exc:
            logger.exception("engine %s: prefill of %s failed", self._name, request.request_id)
            sequence.fail(BackendError(f"The engine failed to start the generation: {exc}"))
            self.stats.record_end(failed=1)
            return sequence
        if sequence.finished:
            self.stats.record_end(completed=1)
        return sequence

    def _prefill(self, sequence: Sequence) -> DynamicCache:
        """Run the prompt alone (no padding) and sample the first token; return its cache."""
        prompt_ids = sequence.request.prompt_ids
        cache = DynamicCache()
        output = self._model(
            input_ids=torch.tensor([prompt_ids], device=self._device),
            past_key_values=cache,
            use_cache=True,
            **self._prefill_options,
        )
        sequence.cache_length = len(prompt_ids)
        self.stats.record_prefill()
        sequence.accept(sequence.choose(output.logits[0, -1]))
        return cache

    def _decode(self) -> None:
        """One forward pass for every running sequence, then one token for each.

        A failed forward pass fails the whole batch; a sequence whose own step (sampling,
        detokenizing, stop strings) raises fails alone and the others go on.
        """
        batch = self._batch
        try:
            logits = self._forward(batch)
        except Exception as exc:
            logger.exception("engine %s: decode step failed", self._name)
            error = BackendError(f"The engine failed while generating: {exc}")
            lost = batch.clear()
            for sequence in lost:
                sequence.fail(error)
            self.stats.record_end(failed=len(lost))
            return
        failed = sum(
            not self._take_token(sequence, logits[row])
            for row, sequence in enumerate(batch.sequences)
        )
        self.stats.record_end(completed=len(batch.drop_finished()) - failed, failed=failed)

    def _forward(self, batch: RunningBatch) -> torch.Tensor:
        """Run the batch's decode step; return each row's logits for its next token."""
        input_ids, attention_mask, position_ids = batch.step_inputs()
        output = self._model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=batch.cache,
            use_cache=True,
        )
        batch.advance(attention_mask)
        self.stats.record_step(len(batch))
        logits: torch.Tensor = output.logits[:, -1, :]
        return logits

    def _take_token(self, sequence: Sequence, logits: torch.Tensor) -> bool:
        """Choose and accept ``sequence``'s next token; on error fail it alone, return False."""
        try:
            sequence.accept(sequence.choose(logits))
        except Exception as exc:
            logger.exception("engine %s: step of %s failed", self._name, sequence.request_id)
            sequence.fail(BackendError(f"The engine failed while generating: {exc}"))
            return False
        return True

    def _publish_load(self) -> None:
        with self._condition:
            self._running_ids = frozenset(s.request_id for s in self._batch.sequences)
            self.stats.record_load(running=len(self._batch), waiting=len(self._waiting))

    def _shutdown(self) -> None:
        """Fail everything still waiting or running: the engine is gone."""
        with self._condition:
            self._stopping = True
            waiting = list(self._waiting)
            self._waiting.clear()
            self._running_ids = frozenset()
        error = BackendError("The engine was shut down.")
        sequences = self._batch.clear()
        for sequence in sequences:
            sequence.fail(error)
        _deliver(sequences)
        for request in waiting:
            _emit_quietly(request, Failed(error))
        self.stats.record_end(failed=len(sequences) + len(waiting))
        self.stats.record_load(running=0, waiting=0)


def _emit_quietly(request: EngineRequest, event: Failed) -> None:
    """Tell a request's consumer it failed; a consumer that is gone is ignored."""
    try:
        request.emit(event)
    except Exception:
        logger.debug("consumer of %s is gone", request.request_id)


def _deliver(sequences: list[Sequence]) -> None:
    for sequence in sequences:
        sequence.deliver()
