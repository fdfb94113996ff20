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
    """Receives the agent's state changes (never any message content).

    ``gateway`` names one gateway: its URL, and the address dialed when the URL's name
    has several. ``disconnected`` says why the connection to ``gateway`` ended or failed;
    ``retry_in`` is the wait before the next round of gateways, or None when the next
    gateway is dialed at once.
    """

    def starting(self, models: list[str]) -> None: ...

    def connecting(self, gateway: str) -> None: ...

    def registered(self, welcome: Welcome, *, gateway: str) -> None: ...

    def refused(self, code: str, reason: str, *, fatal: bool) -> None: ...

    def disconnected(self, reason: str, *, gateway: str, retry_in: float | None) -> None: ...

    def jobs_changed(self, counts: JobCounts) -> None: ...

    def draining(self, in_flight: int) -> None: ...

    def stopped(self, reason: str) -> None: ...


class LoggingObserver:
    """An observer that writes each state change to the log."""

    def starting(self, models: list[str]) -> None:
        logger.info("starting models: %s", ", ".join(models))

    def connecting(self, gateway: str) -> None:
        logger.info("connecting to %s", gateway)

    def registered(self, welcome: Welcome, *, gateway: str) -> None:
        models = ", ".join(welcome.accepted)
        logger.info("registered as node %s on %s: %s", welcome.node_id, gateway, models)
        for model in welcome.refused:
            logger.warning("model %s refused: %s", model.id, model.reason)

    def refused(self, code: str, reason: str, *, fatal: bool) -> None:
        logger.error("refused by the gateway (%s): %s", code, reason)

    def disconnected(self, reason: str, *, gateway: str, retry_in: float | None) -> None:
        if retry_in is None:
            logger.warning("gateway %s: %s; dialing the next gateway", gateway, reason)
        else:
            logger.warning("gateway %s: %s; reconnecting in %.1f s", gateway, reason, retry_in)

    def jobs_changed(self, counts: JobCounts) -> None:
        logger.debug("jobs: %s", counts)

    def draining(self, in_flight: int) -> None:
        logger.info("draining: %d jobs in flight", in_flight)

    def stopped(self, reason: str) -> None:
        logger.info("stopped: %s", reason)
