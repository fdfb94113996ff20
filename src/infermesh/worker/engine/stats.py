"""What the engine did: how many sequences shared each decode step, and totals."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

BATCH_SIZE_HISTORY = 4096


@dataclass(frozen=True, slots=True)
class EngineStatsSnapshot:
    """A consistent copy of the engine's counters at one moment."""

    batch_sizes: tuple[int, ...]
    decode_steps: int
    prefills: int
    generated_tokens: int
    completed: int
    cancelled: int
    failed: int
    running: int
    waiting: int

    @property
    def max_batch_size(self) -> int:
        """The most sequences one recorded decode step ran together."""
        return max(self.batch_sizes, default=0)


@dataclass
class EngineStats:
    """Counters the scheduler thread updates and anyone may read via :meth:`snapshot`."""

    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=BATCH_SIZE_HISTORY))
    decode_steps: int = 0
    prefills: int = 0
    generated_tokens: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_step(self, batch_size: int) -> None:
        """One decode step over ``batch_size`` sequences, each producing a token."""
        with self.lock:
            self.batch_sizes.append(batch_size)
            self.decode_steps += 1
            self.generated_tokens += batch_size

    def record_prefill(self) -> None:
        """One prompt prefilled (it also produces the sequence's first token)."""
        with self.lock:
            self.prefills += 1
            self.generated_tokens += 1

    def record_load(self, *, running: int, waiting: int) -> None:
        """How many sequences run and wait now."""
        with self.lock:
            self.running, self.waiting = running, waiting

    def record_end(self, *, completed: int = 0, cancelled: int = 0, failed: int = 0) -> None:
        """Sequences that left the engine, by how they left."""
        with self.lock:
            self.completed += completed
            self.cancelled += cancelled
            self.failed += failed

    def snapshot(self) -> EngineStatsSnapshot:
        """A copy of every counter, taken together."""
        with self.lock:
            return EngineStatsSnapshot(
                batch_sizes=tuple(self.batch_sizes),
                decode_steps=self.decode_steps,
                prefills=self.prefills,
                generated_tokens=self.generated_tokens,
                completed=self.completed,
                cancelled=self.cancelled,
                failed=self.failed,
                running=self.running,
                waiting=self.waiting,
            )
