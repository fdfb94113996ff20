"""Building a gateway's place in the network (shared presence, forwarding) from its
settings."""

from __future__ import annotations

import logging
import secrets
import socket

from infermesh.config import Settings
from infermesh.mesh.peers import PeerClient
from infermesh.mesh.presence import Presence
from infermesh.mesh.registry import WorkerRegistry

logger = logging.getLogger(__name__)


def gateway_url(settings: Settings) -> str:
    """Where the other gateways reach this one."""
    if settings.peer_url:
        return settings.peer_url.rstrip("/")
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"http://{host}:{settings.port}"


def build_presence(settings: Settings, registry: WorkerRegistry) -> Presence | None:
    """Shared presence when Redis and the network's secret are configured; else None
    (the gateway serves the workers connected to it only)."""
    if not settings.redis_url or settings.peer_secret is None:
        if settings.redis_url or settings.peer_secret is not None:
            logger.warning(
                "workers are served by the gateway they connect to only: set both "
                "INFERMESH_REDIS_URL and INFERMESH_PEER_SECRET for one network of gateways"
            )
        return None
    return Presence(
        settings.redis_url,
        prefix=settings.redis_prefix,
        gateway_id=f"gw-{secrets.token_hex(6)}",
        gateway_url=gateway_url(settings),
        registry=registry,
        client=PeerClient(settings.peer_secret.get_secret_value()),
        interval=settings.presence_interval,
        ttl=settings.presence_ttl,
        timeout=settings.redis_timeout,
    )
