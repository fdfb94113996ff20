"""Async job API objects: a job as ``POST /v1/chat/completions`` (with ``Prefer:
respond-async``) and ``GET /v1/results/{id}`` show it, and the list of jobs."""

from __future__ import annotations

from typing import Any, Literal

from infermesh.protocol.base import WireModel

JobStatus = Literal["queued", "processing", "complete", "failed", "dead", "cancelled", "expired"]
FINAL_STATUSES: frozenset[str] = frozenset({"complete", "failed", "dead", "cancelled", "expired"})


class JobError(WireModel):
    """Why a job failed (or why its last try did, for a job that will retry)."""

    code: str | None = None
    message: str


class ChatCompletionJob(WireModel):
    """One async chat completion. ``result`` is the whole ``chat.completion`` (usage,
    cost and ``metadata.node_id`` included) once the job is ``complete``; it is kept
    for the retention period, then the job is gone."""

    id: str
    object: Literal["chat.completion.job"] = "chat.completion.job"
    status: JobStatus
    model: str
    poll: str
    retries: int
    created: int
    updated: int
    started: int | None = None
    completed: int | None = None
    deadline: int | None = None
    webhook_url: str | None = None
    error: JobError | None = None
    result: dict[str, Any] | None = None


class JobList(WireModel):
    """``GET /v1/results``: the caller's jobs, newest first, without their results."""

    object: Literal["list"] = "list"
    data: list[ChatCompletionJob]
    has_more: bool
    last_id: str | None = None


class WebhookSecretObject(WireModel):
    """The account's webhook signing secret: ``secret`` (``whsec_…``) only in the answer
    that made it."""

    object: Literal["webhook_secret"] = "webhook_secret"
    exists: bool
    created: int | None = None
    secret: str | None = None
