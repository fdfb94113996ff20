"""What the router knows of each worker's speed and health, measured from its jobs."""

from __future__ import annotations

from dataclasses import dataclass

EWMA_WEIGHT = 0.2
PRIOR_TOKENS_PER_SECOND = 50.0


@dataclass
class WorkerStats:
    """Exponentially weighted averages of one worker's recent jobs."""

    jobs: int = 0
    failures: int = 0
    time_to_first_token: float | None = None
    tokens_per_second: float | None = None
    error_rate: float = 0.0

    def record_success(
        self, *, time_to_first_token: float | None, tokens: int, seconds: float
    ) -> None:
        self.jobs += 1
        self.error_rate = _ewma(self.error_rate, 0.0)
        if time_to_first_token is not None:
            self.time_to_first_token = _ewma(self.time_to_first_token, time_to_first_token)
        if tokens > 0 and seconds > 0:
            self.tokens_per_second = _ewma(self.tokens_per_second, tokens / seconds)

    def record_failure(self) -> None:
        self.jobs += 1
        self.failures += 1
        self.error_rate = _ewma(self.error_rate, 1.0)

    def speed(self) -> float:
        """Tokens per second, with a prior until the worker has been measured."""
        return self.tokens_per_second or PRIOR_TOKENS_PER_SECOND


def _ewma(current: float | None, sample: float) -> float:
    return sample if current is None else (1 - EWMA_WEIGHT) * current + EWMA_WEIGHT * sample
