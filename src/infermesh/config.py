"""Settings: the only place that reads the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration of a gateway (and its in-process worker).

    Every field can be set as ``INFERMESH_<NAME>`` in the environment; CLI options
    override the environment.
    """

    model_config = SettingsConfigDict(env_prefix="INFERMESH_", extra="ignore")

    data_dir: Path = Path(".infermesh")
    database_url: str | None = None
    config: Path | None = Field(
        default=None, description="TOML model catalog; defaults to <data_dir>/models.toml"
    )
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 8 * 1024 * 1024
    max_image_bytes: int = 5 * 1024 * 1024
    log_json: bool = False
    log_level: str = "info"
    embedded_worker: bool = True
    engine_max_batch: int = 8
    device: str | None = None
    heartbeat_interval: float = Field(default=5.0, gt=0)
    heartbeat_misses: int = Field(default=3, ge=1)
    queue_timeout: float = Field(default=5.0, ge=0, description="wait for a free worker slot")
    max_attempts: int = Field(default=3, ge=1, description="workers tried per request")
    first_token_timeout: float = Field(
        default=120.0, gt=0, description="seconds a worker has to send a job's first token"
    )
    chunk_timeout: float = Field(
        default=60.0, gt=0, description="seconds a worker may go silent in the middle of a job"
    )
    request_timeout: float = Field(
        default=900.0, gt=0, description="seconds one job may run on a worker in all"
    )
    credit_usd: str = Field(default="0.01", description="what one display credit is worth")
    operator_share: float = Field(
        default=0.8, ge=0, le=1, description="share of each charge credited to the operator"
    )
    hold_ttl: float = Field(
        default=120.0,
        gt=0,
        description="seconds before the credit a dead gateway held (its slices) is released",
    )
    settle_interval: float = Field(
        default=0.05,
        gt=0,
        le=10,
        description="seconds between the batches in which settlements are written",
    )
    credit_slice_idle: float = Field(
        default=5.0,
        gt=0,
        description="seconds an unused credit slice is kept before it is given back",
    )
    bootstrap_grant: str = Field(
        default="1", description="USD granted to the first account that `serve` creates"
    )
    admin_key: str | None = Field(default=None, description="key for the /admin API")
    admin_lockout_failures: int = Field(
        default=10, ge=1, description="wrong admin keys from one address that lock it out"
    )
    admin_lockout_window: float = Field(
        default=60.0, gt=0, description="seconds over which wrong admin keys are counted"
    )
    dashboard_session_ttl: float = Field(
        default=12 * 3600.0,
        ge=60,
        le=30 * 24 * 3600.0,
        description="seconds a dashboard sign-in lasts",
    )
    tier_access: dict[str, list[str]] | None = Field(
        default=None, description='account tier → model tiers, e.g. {"free": ["fast"]}'
    )
    tier_limits: dict[str, dict[str, Any]] | None = Field(
        default=None,
        description='rate limits per tier over the defaults, e.g. {"free": '
        '{"requests_per_minute": 10, "tokens_per_day": "unlimited"}}',
    )
    redis_url: str | None = Field(
        default=None, description="Redis for rate limits shared by several gateways"
    )
    redis_prefix: str = Field(default="infermesh", min_length=1, description="Redis key prefix")
    redis_timeout: float = Field(default=2.0, gt=0, description="seconds for one Redis call")
    rate_limit_fail_open: bool = Field(
        default=False,
        description="when Redis is unreachable, let requests through unlimited (else 503)",
    )
    limit_slot_ttl: float = Field(
        default=30.0, gt=0, description="seconds a dead gateway's concurrency slot lives"
    )
    limits_cache_ttl: float = Field(
        default=5.0, ge=0, description="seconds a gateway caches the limits set by admins"
    )
    key_cache_ttl: float = Field(
        default=5.0,
        ge=0,
        description="seconds a gateway trusts what it cached of an API key: a key revoked "
        "elsewhere stops working here within this time (within milliseconds when the "
        "change is announced on Redis); 0 turns the key cache off",
    )
    key_cache_size: int = Field(
        default=10_000, ge=1, description="API keys a gateway caches at most (unknown keys too)"
    )

    job_runners: int = Field(
        default=16, ge=1, le=1024, description="async jobs one gateway runs at once"
    )
    job_poll_interval: float = Field(
        default=0.5, gt=0, le=60, description="seconds between a gateway's looks at the queue"
    )
    job_lease: float = Field(
        default=30.0,
        gt=0,
        description="seconds a gateway holds a job it runs without renewing the lease; a "
        "job whose gateway died runs again after it",
    )
    job_retry_base: float = Field(
        default=10.0, gt=0, description="seconds before a failed job's first retry"
    )
    job_retry_cap: float = Field(
        default=300.0, gt=0, description="the longest wait between retries (base x 2^n)"
    )
    job_max_retries: int = Field(
        default=50, ge=0, description="retries before a job goes to the dead letter"
    )
    job_concurrent: int = Field(
        default=2, ge=1, description="jobs of one account processed at once"
    )
    job_concurrent_tiers: dict[str, int] | None = Field(
        default=None,
        description='jobs processing at once per account, by tier (JSON, e.g. {"pro": 8}); '
        "tiers not named get job_concurrent",
    )
    job_max_queued: int = Field(
        default=1000, ge=1, description="jobs one account may have waiting in the queue"
    )
    job_max_age: float = Field(
        default=86_400.0,
        gt=0,
        description="seconds a job may wait and retry in all; it then ends as expired "
        "(its credits are held that long)",
    )
    job_retention: float = Field(
        default=86_400.0,
        gt=0,
        description="seconds a finished job's result is kept (its request is dropped when it ends)",
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="let webhooks reach loopback, private and link-local addresses "
        "(off: a job's webhook URL cannot probe the gateway's own network)",
    )
    webhook_retry_base: float = Field(default=5.0, gt=0, description="first webhook retry (s)")
    webhook_retry_cap: float = Field(
        default=3600.0, gt=0, description="the longest wait between webhook retries (s)"
    )
    wallet_domain: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="the domain a wallet sign-in message (EIP-4361) must name; default "
        "'<host>:<port>' of this gateway: behind a proxy set it to the public host",
    )
    wallet_chain_ids: list[int] = Field(
        default=[8453, 84532],
        min_length=1,
        description="chain ids a wallet sign-in message may name (Base, Base Sepolia)",
    )
    wallet_nonce_ttl: float = Field(
        default=300.0, gt=0, description="seconds a wallet sign-in nonce can be used"
    )
    wallet_tier: str = Field(
        default="free",
        min_length=1,
        max_length=32,
        description="tier of the accounts that a first wallet sign-in creates",
    )
    wallet_max_nonces: int = Field(
        default=10_000,
        ge=1,
        description="unused, unexpired wallet sign-in nonces at most (more is a 429)",
    )

    payments_rpc_url: str | None = Field(
        default=None,
        description="JSON-RPC URL of a Base node; USDC top-ups are off unless it, "
        "payments_usdc_address and payments_treasury are set",
    )
    payments_network: Literal["base", "base-sepolia", "custom"] = Field(
        default="custom",
        description="a preset (payments/networks.py) that fills the chain id, USDC address "
        "and EIP-712 name and version not set explicitly",
    )
    payments_chain_id: int | None = Field(
        default=None, ge=1, description="chain of the deposits (the preset's; custom: 8453)"
    )
    payments_usdc_address: str | None = Field(
        default=None, description="the USDC token contract deposits are made in"
    )
    payments_usdc_name: str | None = Field(
        default=None, description="the token's EIP-712 name (the preset's; custom: USD Coin)"
    )
    payments_usdc_version: str | None = Field(
        default=None, description="the token's EIP-712 version (the preset's; custom: 2)"
    )
    payments_treasury: str | None = Field(
        default=None, description="the address deposits must be sent to"
    )
    payments_confirmations: int = Field(
        default=5, ge=1, description="blocks (the deposit's own included) before it is credited"
    )
    payments_min_deposit: int = Field(
        default=1_000_000, ge=1, description="the smallest deposit credited, in micro-USD"
    )
    payments_poll_interval: float = Field(
        default=2.0, gt=0, le=300, description="seconds between the watcher's looks at the chain"
    )
    payments_claim_ttl: float = Field(
        default=3600.0,
        gt=0,
        description="seconds a posted transaction hash may stay unseen on chain before "
        "its top-up fails as not found",
    )

    payments_relayer_key: SecretStr | None = Field(
        default=None,
        description="private key of the relayer that sends permit top-ups (it pays their "
        "gas in ETH); permit top-ups are off without it",
    )
    payments_x402: bool = Field(
        default=False,
        description="answer POST /v1/credits/topup without a payment with x402's 402 and "
        "settle X-PAYMENT retries (EIP-3009 authorizations) through the relayer, which "
        "payments_relayer_key must name",
    )
    payments_treasury_key: SecretStr | None = Field(
        default=None,
        description="private key of the treasury, which signs operator payouts; payouts "
        "are off without it",
    )
    payments_payout_minimum: int = Field(
        default=10_000_000,
        ge=1,
        description="the smallest payout sent to an operator, in micro-USD",
    )

    peer_secret: SecretStr | None = Field(
        default=None,
        description="the secret the gateways of one network share; with Redis, each serves "
        "the workers connected to any of them (forwarding jobs to their gateway)",
    )
    peer_url: str | None = Field(
        default=None,
        description="the URL the other gateways reach this one at (default: "
        "http://<host>:<port>, or this machine's name when listening on every address)",
    )
    presence_interval: float = Field(
        default=1.0, gt=0, le=60, description="seconds between presence updates in Redis"
    )
    presence_ttl: float = Field(
        default=5.0, gt=0, le=600, description="seconds a gateway's presence outlives its updates"
    )

    channel_max_content: int = Field(
        default=16_384, ge=1, le=1_000_000, description="characters in one channel message"
    )
    channel_max_metadata: int = Field(
        default=4096, ge=2, le=65_536, description="bytes of a message's metadata, as JSON"
    )
    channel_posts_per_minute: int = Field(
        default=120, ge=1, description="messages one account may post per minute"
    )
    channel_retention: int = Field(
        default=1000, ge=1, le=1_000_000, description="newest messages kept per channel"
    )
    channel_max_age: float = Field(
        default=30 * 86400.0, gt=0, description="seconds a channel message is kept at most"
    )
    channel_max_owned: int = Field(default=100, ge=1, description="channels one account may create")
    channel_max_wait: float = Field(
        default=30.0, gt=0, le=300, description="longest long-poll of GET /v1/channel (seconds)"
    )
    channel_max_followers: int = Field(
        default=16,
        ge=1,
        description="long-polls and live streams one account may hold open on one gateway",
    )

    @property
    def payments_enabled(self) -> bool:
        """Whether USDC top-ups are configured (node, token or a preset, and treasury)."""
        token = self.payments_usdc_address or self.payments_network != "custom"
        return bool(self.payments_rpc_url and token and self.payments_treasury)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'infermesh.db').resolve()}"

    @property
    def resolved_wallet_domain(self) -> str:
        """The domain wallet sign-in messages must name."""
        return self.wallet_domain or f"{self.host}:{self.port}"

    @property
    def catalog_path(self) -> Path:
        return self.config if self.config is not None else self.data_dir / "models.toml"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"
