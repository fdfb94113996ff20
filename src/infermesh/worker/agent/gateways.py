"""The gateways a worker knows, and the order in which it dials them.

A worker is given one gateway URL or several, all of one network. A URL whose host name
resolves to several addresses counts as several gateways: the name is resolved afresh
each time the rotation comes to it, and its addresses are dialed one after another
(the name stays in the ``Host`` header and in TLS, for SNI and the certificate check).
The rotation goes round: after a gateway is lost or fails, the next one is dialed, so
that a gateway that has just died is not the first one tried again.

A URL that goes through a proxy, or whose host is an address already, is one gateway:
its connection resolves the name itself (a proxy resolves it on its side).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from websockets.proxy import get_proxy
from websockets.uri import parse_uri

logger = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""Resolves ``(host, port)`` to the addresses to dial, best first."""


@dataclass(frozen=True)
class GatewayEndpoint:
    """One gateway to dial: its URL and, for a name, the address to connect to."""

    url: str
    address: str | None = None

    def __str__(self) -> str:
        return self.url if self.address is None else f"{self.url} ({self.address})"


class GatewayRotation:
    """The worker's gateways, in turn (see the module doc).

    :meth:`next` gives the gateway to dial; :meth:`again` puts one back to be dialed
    once more before the others. :attr:`size` is how many gateways one round of the
    list dials, each name counted by its addresses when it was last resolved.
    """

    def __init__(
        self, urls: Sequence[str], *, resolve: Resolver | None = None, timeout: float = 10.0
    ) -> None:
        if not urls:
            raise ValueError("a worker needs at least one gateway")
        self._urls = list(urls)
        self._resolve = resolve or resolve_addresses
        self._timeout = timeout
        self._sizes = [1] * len(self._urls)
        self._next_url = 0
        self._pending: deque[GatewayEndpoint] = deque()

    @property
    def size(self) -> int:
        return sum(self._sizes)

    async def next(self) -> GatewayEndpoint:
        """The gateway to dial now: the next address of the current URL, else the first
        of the next URL (resolved now)."""
        if not self._pending:
            index = self._next_url
            self._next_url = (index + 1) % len(self._urls)
            endpoints = await self._endpoints(self._urls[index])
            self._sizes[index] = len(endpoints)
            self._pending.extend(endpoints)
        return self._pending.popleft()

    def again(self, endpoint: GatewayEndpoint) -> None:
        """Dial ``endpoint`` once more, before the others."""
        self._pending.appendleft(endpoint)

    async def _endpoints(self, url: str) -> list[GatewayEndpoint]:
        uri = parse_uri(url)
        if _is_address(uri.host) or get_proxy(uri) is not None:
            return [GatewayEndpoint(url)]
        try:
            async with asyncio.timeout(self._timeout):
                addresses = await self._resolve(uri.host, uri.port)
        except (OSError, TimeoutError) as exc:
            # The connection resolves the name again and reports the failure as any other.
            logger.debug("could not resolve %s: %s", uri.host, exc)
            return [GatewayEndpoint(url)]
        return [GatewayEndpoint(url, address) for address in addresses] or [GatewayEndpoint(url)]


async def resolve_addresses(host: str, port: int) -> list[str]:
    """The addresses of ``host`` for a TCP connection, in the resolver's order, once each."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
