"""What an agent reports as it runs: the CLI shows it, tests and libraries may log it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from infermesh.protocol.wire import Welcome

logger = logging.getLogger("infermesh.worker")


@dataclass
class JobCounts:
    """The agent's jobs: running now, and finished since it started."""

    in_flight: int = 0
    served: int = 0
    failed: int = 0


class AgentObserver(Protocol):
    """Receives the agent's state changes (never any message content)."""

    def starting(self, models: list[str]) -> None: ...

    def connecting(self, url: str) -> None: ...

    def registered(self, welcome: Welcome) -> None: ...

    def refused(self, code: str, reason: str, *, fatal: bool) -> None: ...

    def disconnected(self, reason: str, *, retry_in: float | None) -> None: ...

    def jobs_changed(self, counts: JobCounts) -> None: ...

    def draining(self, in_flight: int) -> None: ...

    def stopped(self, reason: str) -> None: ...


class LoggingObserver:
    """An observer that writes each state change to the log."""

    def starting(self, models: list[str]) -> None:
        logger.info("starting models: %s", ", ".join(models))

    def connecting(self, url: str) -> None:
        logger.info("connecting to %s", url)

    def registered(self, welcome: Welcome) -> None:
        logger.info("registered as node %s: %s", welcome.node_id, ", ".join(welcome.accepted))
        for model in welcome.refused:
            logger.warning("model %s refused: %s", model.id, model.reason)

    def refused(self, code: str, reason: str, *, fatal: bool) -> None:
        logger.error("refused by the gateway (%s): %s", code, reason)

    def disconnected(self, reason: str, *, retry_in: float | None) -> None:
        logger.warning("disconnected: %s (retry in %s s)", reason, retry_in)

    def jobs_changed(self, counts: JobCounts) -> None:
        logger.debug("jobs: %s", counts)

    def draining(self, in_flight: int) -> None:
        logger.info("draining: %d jobs in flight", in_flight)

    def stopped(self, reason: str) -> None:
        logger.info("stopped: %s", reason)
