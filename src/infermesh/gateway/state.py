"""The services a running gateway holds, built by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from infermesh.accounts.service import AccountService
from infermesh.accounts.sessions import DashboardSessions
from infermesh.accounts.wallets import WalletSignIn
from infermesh.accounts.workers import WorkerTokenService
from infermesh.billing.admin import CreditAdmin
from infermesh.billing.service import BillingService
from infermesh.catalog.catalog import Catalog
from infermesh.channels.service import ChannelService
from infermesh.chat.service import ChatService
from infermesh.config import Settings
from infermesh.gateway.admin_lockout import AdminAttempts
from infermesh.jobs.runner import QueueRunner
from infermesh.jobs.service import JobService
from infermesh.jobs.webhook_secrets import WebhookSecrets
from infermesh.limits.admin import LimitAdmin
from infermesh.limits.service import RateLimiter
from infermesh.mesh.registry import WorkerRegistry
from infermesh.payments.setup import PaymentParts
from infermesh.store.database import Database
from infermesh.telemetry import Metrics


@dataclass
class Services:
    """Everything a route needs, in one place on ``app.state.services``."""

    settings: Settings
    database: Database
    accounts: AccountService
    catalog: Catalog
    registry: WorkerRegistry
    chat: ChatService
    metrics: Metrics
    workers: WorkerTokenService
    billing: BillingService
    credits: CreditAdmin
    limits: RateLimiter
    admin_attempts: AdminAttempts
    jobs: JobService
    job_runner: QueueRunner
    webhook_secrets: WebhookSecrets
    wallets: WalletSignIn
    channels: ChannelService
    sessions: DashboardSessions
    payments: PaymentParts | None = None
    """USDC top-ups and payouts; None when payments are not configured."""

    def limit_admin(self) -> LimitAdmin:
        """The rate-limit settings, as the admin API, the CLI and the dashboard change them."""
        return LimitAdmin(self.limits.book, self.accounts, known_tiers=self.billing.tiers.tiers())
