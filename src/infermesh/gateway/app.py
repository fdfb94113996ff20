"""The gateway's app factory. Building the app has no side effects; its lifespan
opens the database, loads the catalog and starts the in-process worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI

from infermesh import __version__
from infermesh.accounts.sessions import DashboardSessions
from infermesh.accounts.setup import build_accounts, build_wallets
from infermesh.accounts.workers import WorkerTokenService
from infermesh.billing.admin import CreditAdmin
from infermesh.billing.ledger import CreditLedger
from infermesh.billing.money import CreditUnit, parse_usd
from infermesh.billing.service import BillingService
from infermesh.billing.tiers import TierPolicy
from infermesh.billing.usage import UsageLog
from infermesh.catalog.catalog import Catalog
from infermesh.catalog.spec import ModelSpec
from infermesh.catalog.store import CatalogFile
from infermesh.channels.setup import build_channels
from infermesh.chat.counting import TokenCounters
from infermesh.chat.generation import Deadlines
from infermesh.chat.service import ChatService
from infermesh.config import Settings
from infermesh.errors import ConfigError
from infermesh.gateway.admin_lockout import AdminAttempts
from infermesh.gateway.dashboard import install_dashboard
from infermesh.gateway.errors import install_error_handlers
from infermesh.gateway.middleware import RequestContextMiddleware
from infermesh.gateway.routes import (
    admin,
    chat,
    credits,
    embeddings,
    health,
    limits,
    messages,
    models,
    payments,
    peers,
    responses,
    results,
    wallet,
    webhooks,
    workers,
)
from infermesh.gateway.routes import channels as channels_routes
from infermesh.gateway.shortcuts import bare_endpoint
from infermesh.gateway.state import Services
from infermesh.gateway.worker_session import REVOCATION_CHECK_EVERY
from infermesh.jobs.setup import build_jobs
from infermesh.limits.setup import build_limiter
from infermesh.mesh.local import InProcessWorker
from infermesh.mesh.registry import WorkerRegistry
from infermesh.mesh.setup import build_presence
from infermesh.payments.setup import build_payments
from infermesh.store.database import Database
from infermesh.telemetry import Metrics
from infermesh.worker.host import HostOptions, ModelHost

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    *,
    specs: list[ModelSpec] | None = None,
    secrets: Mapping[str, str] | None = None,
) -> FastAPI:
    """The gateway app. ``specs`` overrides the catalog file; ``secrets`` holds the
    environment variables that upstream keys are read from."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        catalog_specs = (
            specs if specs is not None else CatalogFile(settings.catalog_path).load_or_default()
        )
        database = Database.from_settings(settings)
        await database.migrate()
        registry = WorkerRegistry(queue_timeout=settings.queue_timeout)
        catalog = Catalog(catalog_specs)
        accounts = build_accounts(settings, database, cache_keys=True)
        billing = build_billing(settings, database)
        limiter = await build_limiter(settings, database, list(billing.tiers.tiers()))
        chat_service = ChatService(
            catalog,
            registry,
            billing,
            max_image_bytes=settings.max_image_bytes,
            max_attempts=settings.max_attempts,
            limits=limiter,
            counters=TokenCounters(models_dir=settings.models_dir),
            deadlines=Deadlines(
                first_token=settings.first_token_timeout,
                between_chunks=settings.chunk_timeout,
                total=settings.request_timeout,
            ),
        )
        jobs = build_jobs(settings, database, chat_service)
        topups = build_payments(settings, database, billing.ledger)
        channels = build_channels(settings, database, limiter.store)
        app.state.services = Services(
            settings=settings,
            database=database,
            accounts=accounts,
            catalog=catalog,
            registry=registry,
            chat=chat_service,
            metrics=metrics,
            workers=WorkerTokenService(database),
            billing=billing,
            credits=CreditAdmin(accounts, billing.ledger, balance=billing.balance),
            limits=limiter,
            admin_attempts=AdminAttempts(
                limit=settings.admin_lockout_failures, window=settings.admin_lockout_window
            ),
            jobs=jobs.service,
            job_runner=jobs.runner,
            webhook_secrets=jobs.secrets,
            wallets=build_wallets(settings, database, accounts),
            payments=topups,
            channels=channels,
            sessions=DashboardSessions(
                database, ttl=timedelta(seconds=settings.dashboard_session_ttl)
            ),
        )
        # Heard from every REVOCATION_CHECK_EVERY heartbeats while connected anywhere.
        silent = settings.heartbeat_interval * REVOCATION_CHECK_EVERY * 4
        await app.state.services.workers.mark_stale_offline(silent_for=timedelta(seconds=silent))
        presence = build_presence(settings, registry)
        sharing = asyncio.create_task(presence.run()) if presence is not None else None
        expiring = asyncio.create_task(_expire_holds(billing, settings.hold_ttl))
        purging = asyncio.create_task(_purge_sessions(app.state.services.sessions))
        renewing = asyncio.create_task(limiter.keep_slots_alive())
        settling = asyncio.create_task(billing.run())
        keeping_keys = asyncio.create_task(accounts.keep_keys_fresh())
        running_jobs = asyncio.create_task(jobs.runner.run())
        if topups is not None:
            topups.start()
        sending_webhooks = asyncio.create_task(jobs.sender.run())
        hearing_channels = asyncio.create_task(channels.notifier.run())
        host = _embedded_host(settings, catalog_specs, secrets or {})
        starting = asyncio.create_task(_start_worker(host, registry)) if host else None
        try:
            yield
        finally:
            if sharing is not None and presence is not None:
                sharing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sharing
                await presence.close()
            for task in (running_jobs, sending_webhooks, hearing_channels):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await jobs.runner.close()
            await channels.notifier.close()
            if topups is not None:
                await topups.stop()
            for task in (expiring, purging, renewing, settling, keeping_keys):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if starting is not None:
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
            if host is not None:
                await host.close()
            try:
                await billing.close()
            except Exception:
                logger.exception("writing the last credit settlements failed")
            await limiter.store.close()
            await database.dispose()

    app = FastAPI(
        title="infermesh",
        version=__version__,
        summary="OpenAI-compatible gateway of a decentralized inference network",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(chat.router)
    app.include_router(responses.router)
    app.include_router(messages.router)
    app.include_router(embeddings.router)
    app.include_router(results.router)
    app.include_router(webhooks.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(workers.router)
    app.include_router(credits.router)
    app.include_router(wallet.router)
    app.include_router(payments.router)
    app.include_router(channels_routes.router)
    app.include_router(peers.router)
    app.include_router(admin.router)
    app.include_router(payments.admin_router)
    app.include_router(limits.router)
    app.include_router(limits.admin_router)
    install_dashboard(app)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        log_json=settings.log_json,
        shortcuts={
            ("POST", chat.CHAT_PATH): bare_endpoint(chat.create_chat_completion),
            ("POST", responses.RESPONSES_PATH): bare_endpoint(responses.create_response),
            ("POST", messages.MESSAGES_PATH): bare_endpoint(messages.create_message),
            ("POST", embeddings.EMBEDDINGS_PATH): bare_endpoint(embeddings.create_embeddings),
        },
        error_renderers={messages.MESSAGES_PATH: messages.anthropic_error},
    )
    return app


def build_billing(settings: Settings, database: Database) -> BillingService:
    """The billing service as ``settings`` configure it."""
    try:
        unit = CreditUnit(parse_usd(settings.credit_usd))
    except ValueError as exc:
        raise ConfigError(f"INFERMESH_CREDIT_USD: {exc}") from None
    return BillingService(
        CreditLedger(database),
        UsageLog(database),
        tiers=TierPolicy(settings.tier_access),
        operator_share=settings.operator_share,
        hold_ttl=timedelta(seconds=settings.hold_ttl),
        flush_interval=settings.settle_interval,
        slice_idle=settings.credit_slice_idle,
        unit=unit,
    )


async def _expire_holds(billing: BillingService, hold_ttl: float) -> None:
    """Release, now and then, the holds of requests whose gateway died mid-request."""
    interval = min(max(hold_ttl / 4, 0.5), 60.0)
    while True:
        try:
            await billing.expire_holds()
        except Exception:
            logger.exception("releasing expired credit holds failed; will try again")
        await asyncio.sleep(interval)


async def _purge_sessions(sessions: DashboardSessions, interval: float = 600.0) -> None:
    """Delete expired dashboard sessions now and then (they are refused anyway)."""
    while True:
        try:
            await sessions.purge_expired()
        except Exception:
            logger.exception("deleting expired dashboard sessions failed; will try again")
        await asyncio.sleep(interval)


def _embedded_host(
    settings: Settings, specs: list[ModelSpec], secrets: Mapping[str, str]
) -> ModelHost | None:
    served = [spec for spec in specs if spec.serve is not None]
    if not settings.embedded_worker or not served:
        return None
    options = HostOptions(
        models_dir=settings.models_dir,
        max_batch_size=settings.engine_max_batch,
        device=settings.device,
        secrets=secrets,
    )
    return ModelHost(served, options)


async def _start_worker(host: ModelHost, registry: WorkerRegistry) -> None:
    """Start the in-process worker in the background; its models become available after."""
    try:
        await host.start()
    except Exception:
        logger.exception("the in-process worker failed to start; its models stay unavailable")
        return
    registry.add(InProcessWorker(host))
