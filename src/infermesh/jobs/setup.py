"""The async job parts of a gateway, as its settings configure them."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from infermesh.chat.service import ChatService
from infermesh.config import Settings
from infermesh.jobs.deliveries import SenderOptions, WebhookSender
from infermesh.jobs.queue import JobQueue
from infermesh.jobs.runner import QueueRunner, RunnerOptions
from infermesh.jobs.service import JobOptions, JobService
from infermesh.jobs.webhook_secrets import WebhookSecrets
from infermesh.store.database import Database


@dataclass(frozen=True, slots=True)
class JobParts:
    """What a gateway runs async jobs with."""

    service: JobService
    runner: QueueRunner
    sender: WebhookSender
    secrets: WebhookSecrets


def build_jobs(settings: Settings, database: Database, chat: ChatService) -> JobParts:
    """The job service (enqueue, look up, cancel), this gateway's queue runner and its
    webhook sender."""
    owner = f"gw_{secrets.token_hex(8)}"
    lease = timedelta(seconds=settings.job_lease)
    retention = timedelta(seconds=settings.job_retention)
    queue = JobQueue(database, retention=retention)
    webhook_secrets = WebhookSecrets(database)
    service = JobService(
        queue,
        chat.context,
        JobOptions(
            max_age=timedelta(seconds=settings.job_max_age),
            lease=lease,
            max_queued=settings.job_max_queued,
            retention=retention,
            allow_private_webhooks=settings.webhook_allow_private,
            longest_run=timedelta(seconds=settings.request_timeout),
        ),
        webhook_secrets,
    )
    sender = WebhookSender(
        queue,
        webhook_secrets,
        SenderOptions(
            allow_private=settings.webhook_allow_private,
            retry_base=settings.webhook_retry_base,
            retry_cap=max(settings.webhook_retry_cap, settings.webhook_retry_base),
            poll_interval=max(settings.job_poll_interval, 0.05),
        ),
        owner=owner,
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
            concurrent_by_tier=settings.job_concurrent_tiers or {},
        ),
        owner=owner,
        on_end=sender.nudge,
    )
    return JobParts(service, runner, sender, webhook_secrets)
