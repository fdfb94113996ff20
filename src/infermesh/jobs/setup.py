"""The async job parts of a gateway, as its settings configure them."""

from __future__ import annotations

import secrets
from datetime import timedelta

from infermesh.chat.service import ChatService
from infermesh.config import Settings
from infermesh.jobs.queue import JobQueue
from infermesh.jobs.runner import QueueRunner, RunnerOptions
from infermesh.jobs.service import JobOptions, JobService
from infermesh.store.database import Database


def build_jobs(
    settings: Settings, database: Database, chat: ChatService
) -> tuple[JobService, QueueRunner]:
    """The job service (enqueue, look up, cancel) and this gateway's queue runner."""
    queue = JobQueue(database)
    lease = timedelta(seconds=settings.job_lease)
    retention = timedelta(seconds=settings.job_retention)
    service = JobService(
        queue,
        chat.context,
        JobOptions(
            max_age=timedelta(seconds=settings.job_max_age),
            lease=lease,
            max_queued=settings.job_max_queued,
            retention=retention,
        ),
    )
    runner = QueueRunner(
        queue,
        chat,
        RunnerOptions(
            runners=settings.job_runners,
            poll_interval=settings.job_poll_interval,
            lease=lease,
            retry_base=settings.job_retry_base,
            retry_cap=settings.job_retry_cap,
            max_retries=settings.job_max_retries,
            concurrent=settings.job_concurrent,
            retention=retention,
        ),
        owner=f"gw_{secrets.token_hex(8)}",
    )
    return service, runner
