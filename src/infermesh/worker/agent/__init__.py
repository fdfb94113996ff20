"""The worker agent: connects out to a gateway and serves the jobs it is sent."""

from __future__ import annotations

from infermesh.worker.agent.agent import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, WorkerAgent
from infermesh.worker.agent.config import AgentConfig, connect_url, serve_spec
from infermesh.worker.agent.observer import AgentObserver, JobCounts, LoggingObserver

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "AgentConfig",
    "AgentObserver",
    "JobCounts",
    "LoggingObserver",
    "WorkerAgent",
    "connect_url",
    "serve_spec",
]
