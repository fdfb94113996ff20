"""The queue runner of one gateway: takes due jobs from the shared queue and runs them.

Every gateway runs one. Each pass it ends the queued jobs whose deadline passed, takes
as many due jobs as it has room for (at most ``job_concurrent`` of one account at once,
over all gateways) under a lease, and runs each as a prepaid :class:`ChatRun` (the same
object as a synchronous request: failover, deadlines, usage audit). It renews its
leases while the jobs run; a job whose lease it lost (its gateway was too slow, or
died) or whose client cancelled it is stopped here.

A job ends once: ``complete`` (charged, exactly once: the charge is named by the job
and the ledger refuses a second one), ``failed`` for what would fail again (a bad
request, a model gone), ``dead`` after its retries, ``cancelled`` or ``expired``; each
but ``complete`` gives its hold back (a cancelled one pays for the tokens it made).
A retryable failure (no worker, a worker lost or slow, an engine's 5xx) waits
``base x 2^n`` with jitter, capped, and runs again on the same hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from infermesh.accounts.records import Principal
from infermesh.backoff import equal_jitter
from infermesh.chat.run import ChatRun
from infermesh.chat.service import ChatService
from infermesh.errors import BackendError, InfermeshError, NoWorkerAvailable
from infermesh.jobs.queue import JobQueue
from infermesh.jobs.records import ClaimedJob
from infermesh.jobs.service import charge_of, release
from infermesh.protocol.chat import ChatCompletionRequest
from infermesh.store import utcnow
from infermesh.telemetry import RequestRecord

logger = logging.getLogger(__name__)

MAX_ERROR_MESSAGE = 500
PURGE_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class RunnerOptions:
    runners: int
    poll_interval: float
    lease: timedelta
    retry_base: float
    retry_cap: float
    max_retries: int
    concurrent: int
    retention: timedelta
    concurrent_by_tier: Mapping[str, int] = field(default_factory=dict)


class QueueRunner:
    """Runs the queue's due jobs on this gateway; see the module docstring."""

    def __init__(
        self,
        queue: JobQueue,
        chat: ChatService,
        options: RunnerOptions,
        *,
        owner: str,
        rng: random.Random | None = None,
        on_end: Callable[[], None] = lambda: None,
    ) -> None:
        self._queue = queue
        self._chat = chat
        self._options = options
        self.owner = owner
        self._rng = rng or random.Random()
        self._on_end = on_end
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._runs: dict[str, ChatRun] = {}
        self._why_stopped: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._renewed_at = 0.0
        self._purged_at = 0.0

    @property
    def running(self) -> int:
        return len(self._tasks)

    def nudge(self) -> None:
        """Look at the queue now (a job was just enqueued or has ended)."""
        self._wake.set()

    async def run(self) -> None:
        """Pass over the queue every poll interval (or when nudged), forever."""
        while True:
            try:
                await self.tick()
            except Exception:
                logger.exception("the job queue pass failed; trying again")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._options.poll_interval):
                    await self._wake.wait()

    async def tick(self) -> None:
        """One pass: expire, renew, take and start jobs, now and then purge."""
        loop = asyncio.get_running_loop()
        for job in await self._queue.expire_due():
            await release(self._chat.context, charge_of(job), "expired")
        if self._tasks and loop.time() - self._renewed_at >= self._renew_every():
            await self._renew()
        room = self._options.runners - len(self._tasks)
        if room > 0:
            claimed = await self._queue.claim(
                self.owner,
                limit=room,
                lease=self._options.lease,
                max_processing_per_account=await self._per_account_limit(),
            )
            for claimed_job in claimed:
                if claimed_job.id not in self._tasks:  # else: its lease had lapsed here
                    self._start(claimed_job)
        if loop.time() - self._purged_at >= self._purge_every():
            self._purged_at = loop.time()
            await self._queue.purge()

    def stop(self, job_id: str) -> None:
        """Stop ``job_id`` now if it runs here (its cancel was asked for on this gateway;
        other gateways learn of it when they renew their leases)."""
        self._cancel(job_id, "stopped")

    def _cancel(self, job_id: str, why: str) -> None:
        """Cancel the task running ``job_id`` here, saying why (``stopped``: its lease is
        gone, see :meth:`_stopped`; ``shutdown``: the gateway stops)."""
        task = self._tasks.get(job_id)
        if task is not None:
            self._why_stopped[job_id] = why
            task.cancel()

    async def _per_account_limit(self) -> int | Callable[[int], int]:
        """Jobs one account may have processing at once: by its tier where the settings
        name one, else the default."""
        by_tier, default = self._options.concurrent_by_tier, self._options.concurrent
        if not by_tier:
            return default
        tiers = await self._queue.waiting_tiers()
        return lambda account: by_tier.get(tiers.get(account, ""), default)

    async def close(self) -> None:
        """Stop the jobs running here; their leases lapse and another pass (here after
        a restart, or another gateway's) runs them again."""
        tasks = list(self._tasks.values())
        for job_id in list(self._tasks):
            self._cancel(job_id, "shutdown")
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- one job ------------------------------------------------------------------------

    def _start(self, job: ClaimedJob) -> None:
        task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(lambda _: self._ended(job.id))

    def _ended(self, job_id: str) -> None:
        self._tasks.pop(job_id, None)
        self._runs.pop(job_id, None)
        self._on_end()
        self._why_stopped.pop(job_id, None)
        self._wake.set()

    async def _renew(self) -> None:
        self._renewed_at = asyncio.get_running_loop().time()
        ids = list(self._tasks)
        kept = await self._queue.renew(self.owner, ids, lease=self._options.lease)
        for job_id in ids:
            if job_id not in kept:
                self._cancel(job_id, "stopped")

    def _purge_every(self) -> float:
        """Ended jobs are deleted within half their retention (at most a minute late)."""
        half = self._options.retention.total_seconds() / 2
        return min(PURGE_EVERY, max(half, self._options.poll_interval))

    def _renew_every(self) -> float:
        return max(self._options.lease.total_seconds() / 3, 0.05)

    async def _run(self, job: ClaimedJob) -> None:
        try:
            await self._attempt(job)
        except asyncio.CancelledError:
            why = self._why_stopped.get(job.id)
            if why == "stopped":
                await self._stopped(job)
            elif why is None:
                raise
        except Exception:
            logger.exception("job %s: the runner failed", job.id)

    async def _attempt(self, job: ClaimedJob) -> None:
        chat = self._chat
        record = RequestRecord(request_id=job.id, method="JOB", path="/v1/results")
        try:
            request = ChatCompletionRequest.model_validate_json(job.request_json or "{}")
            spec = chat.context.catalog.get(job.model)
        except (InfermeshError, ValueError) as exc:
            await release(self._chat.context, charge_of(job), "failed")
            await self._end(job, "failed", exc)
            return
        charge = charge_of(job, spec.pricing)
        principal = Principal(
            key_id=job.key_id or "", account_id=job.account_id, account_name="", tier=""
        )
        run = chat.run(request, record, principal, prepaid=charge)
        self._runs[job.id] = run
        try:
            async with run:
                await run.complete()
        except InfermeshError as exc:
            if _retryable(exc):
                await self._retry(job, exc)
            else:
                await self._settle(job, run)  # nothing served: its hold comes back
                await self._end(job, "failed", exc)
            return
        completion = chat.completed(run).completion
        await self._settle(job, run)
        completed = await self._queue.complete(
            self.owner,
            job.id,
            result_json=completion.model_dump_json(),
            retention=self._options.retention,
        )
        if not completed:
            logger.warning("job %s finished after its lease was lost; result dropped", job.id)

    async def _stopped(self, job: ClaimedJob) -> None:
        """The lease is gone: the job was cancelled (bill its tokens so far and end it)
        or taken by another gateway (leave it alone)."""
        current = await self._queue.get(job.account_id, job.id)
        if current is None or not current.cancel_requested:
            return
        run = self._runs.get(job.id)
        if run is not None and run.outcome is not None:
            await self._settle(job, run)
        else:
            await release(self._chat.context, charge_of(job), "cancelled")
        await self._queue.finish(
            None,
            job.id,
            status="cancelled",
            error_code="cancelled",
            error_message="The job was cancelled.",
            retention=self._options.retention,
        )

    async def _settle(self, job: ClaimedJob, run: ChatRun) -> None:
        """Charge what the run used (nothing, unless it was served) and give back the
        rest of the job's hold."""
        if run.outcome is None or run.charge is None:
            return
        try:
            await self._chat.context.billing.settle(run.charge, run.outcome)
        except Exception:
            logger.exception("settling job %s failed; its hold will expire", job.id)

    async def _retry(self, job: ClaimedJob, exc: InfermeshError) -> None:
        if job.retries >= self._options.max_retries:
            await release(self._chat.context, charge_of(job), "dead")
            await self._end(job, "dead", exc)
            return
        delay = equal_jitter(
            job.retries + 1,
            base=self._options.retry_base,
            cap=self._options.retry_cap,
            rng=self._rng,
        )
        logger.info(
            "job %s failed (%s); retry %d in %.1fs", job.id, exc.code, job.retries + 1, delay
        )
        await self._queue.retry(
            self.owner,
            job.id,
            error_code=exc.code,
            error_message=exc.message[:MAX_ERROR_MESSAGE],
            available_at=utcnow() + timedelta(seconds=delay),
        )

    async def _end(self, job: ClaimedJob, status: str, exc: Exception) -> None:
        """End the job for good (its hold was given back already)."""
        code = getattr(exc, "code", None) or type(exc).__name__
        message = getattr(exc, "message", None) or "The job's request could not be read."
        await self._queue.finish(
            self.owner,
            job.id,
            status=status,  # type: ignore[arg-type]
            error_code=code[:64],
            error_message=message[:MAX_ERROR_MESSAGE],
            retention=self._options.retention,
        )


def _retryable(exc: InfermeshError) -> bool:
    """Failures that another try may not meet: no worker, a worker or engine failing."""
    return isinstance(exc, NoWorkerAvailable | BackendError)
