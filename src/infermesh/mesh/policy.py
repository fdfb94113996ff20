"""The routing policy: which of the workers with a free slot gets a job.

One small, replaceable function. The default is power-of-two-choices: sample two
candidates at random and keep the one with less expected outstanding work, where the
work is weighed by the worker's measured speed and recent error rate.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from infermesh.mesh.stats import WorkerStats

ERROR_PENALTY = 4.0


@dataclass(frozen=True)
class Candidate:
    """A worker with a free slot for the model, as the policy sees it."""

    node_id: str
    outstanding: int
    stats: WorkerStats
    remote: bool = False
    """Held by another gateway (a job there takes one more hop)."""


class RoutingPolicy(Protocol):
    def choose(self, candidates: Sequence[Candidate]) -> Candidate: ...


def expected_work(candidate: Candidate) -> float:
    """Jobs ahead of this one (plus it), per unit of speed, inflated by recent errors."""
    stats = candidate.stats
    return (candidate.outstanding + 1) / stats.speed() * (1 + ERROR_PENALTY * stats.error_rate)


class PowerOfTwoChoices:
    """Sample two candidates, keep the one with less expected work."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[Candidate]) -> Candidate:
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._rng.sample(list(candidates), 2)
        return min((first, second), key=_preference)


def _preference(candidate: Candidate) -> tuple[float, bool]:
    """Less expected work first; between equals, a worker connected to this gateway."""
    return expected_work(candidate), candidate.remote
