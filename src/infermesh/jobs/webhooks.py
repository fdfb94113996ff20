"""Webhooks for async jobs: signed events (the Standard Webhooks format), a guard that
keeps deliveries off internal addresses, one delivery attempt, and retry backoff.

A delivery connects to the very address that the guard checked (the request goes to the
IP, with the original ``Host`` header and TLS server name), so a DNS answer that changes
between the check and the connection cannot point it somewhere else.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import random
import secrets
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NoReturn

import httpx

from infermesh.backoff import equal_jitter
from infermesh.errors import InvalidRequest

__all__ = [
    "MAX_DELIVERY_ATTEMPTS",
    "MAX_URL_LENGTH",
    "USER_AGENT",
    "DeliveryResult",
    "ResolvedTarget",
    "check_target",
    "deliver",
    "is_public_address",
    "new_webhook_client",
    "new_webhook_secret",
    "next_attempt_delay",
    "sign",
    "signed_headers",
    "validate_webhook_url",
    "verify",
]

MAX_DELIVERY_ATTEMPTS = 12
MAX_URL_LENGTH = 2000
USER_AGENT = "infermesh-webhooks"

_SECRET_PREFIX = "whsec_"
_SECRET_BYTES = 32
_SIGNATURE_VERSION = "v1"
_URL_PARAM = "webhook_url"
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address is embedded
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: local use only

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# Signing ------------------------------------------------------------------------------


def new_webhook_secret() -> str:
    """A new signing secret as users see it: ``whsec_`` + base64 of 32 random bytes."""
    return _SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode()


def sign(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64(HMAC-SHA256(key, id.timestamp.body))."""
    signed = f"{event_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return f"{_SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signed_headers(secret: str, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one event."""
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, event_id, timestamp, body),
    }


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: int, tolerance: int = 300
) -> bool:
    """Check an event as a receiver does: the headers are present, the timestamp is within
    ``tolerance`` seconds of ``now``, and one of the space-separated ``v1`` signatures
    matches (compared in constant time)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    event_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp", "")
    offered = lowered.get("webhook-signature")
    if not event_id or offered is None or not (stamp.isascii() and stamp.isdigit()):
        return False
    timestamp = int(stamp)
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, event_id, timestamp, body).encode()
    # Check every candidate, so the time taken does not tell which one matched.
    matches = [hmac.compare_digest(expected, candidate.encode()) for candidate in offered.split()]
    return any(matches)


def _secret_key(secret: str) -> bytes:
    encoded = secret.removeprefix(_SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError:
        raise ValueError("not a webhook secret (expected whsec_ + base64)") from None


# The target guard ---------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedTarget:
    """A webhook URL that passed the guard, with every address its host resolved to
    (in the resolver's order; all of them were checked)."""

    url: httpx.URL
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        return self.url.netloc.decode("ascii")

    @property
    def server_name(self) -> str | None:
        """The TLS server name to send, or None for plain HTTP or an IP literal."""
        host = self.url.raw_host.decode("ascii")
        return None if self.url.scheme != "https" or _parse_ip(host) else host

    def pinned_url(self, address: str) -> httpx.URL:
        """The URL with its host replaced by one of the checked ``addresses``."""
        return self.url.copy_with(host=address)


def validate_webhook_url(url: str) -> str:
    """The cheap syntactic checks (done when a job is enqueued); returns ``url``.

    Raises InvalidRequest (code ``invalid_webhook_url``) for a URL that is too long, not
    http/https, without a host, or with a user name or password in it.
    """
    _parse_url(url)
    return url


async def check_target(url: str, *, allow_private: bool) -> ResolvedTarget:
    """Resolve ``url``'s host and refuse it unless every address is public.

    Raises InvalidRequest: ``invalid_webhook_url`` (syntax), ``webhook_host_unresolvable``
    (no address), ``webhook_target_forbidden`` (an address that is loopback, private,
    link-local, multicast, reserved, unspecified or not globally routable, also when
    embedded in an IPv4-mapped, 6to4 or NAT64 address). ``allow_private`` (an operator
    setting) skips the address check but still resolves.
    """
    parsed = _parse_url(url)
    addresses = await _resolve(parsed)
    if not allow_private and not all(is_public_address(_ip(a)) for a in addresses):
        raise InvalidRequest(
            "The webhook URL points to an address that is not public.",
            param=_URL_PARAM,
            code="webhook_target_forbidden",
        )
    return ResolvedTarget(url=parsed, addresses=addresses)


def is_public_address(address: IPAddress) -> bool:
    """Whether a delivery may connect to ``address`` (see ``check_target``)."""
    if isinstance(address, ipaddress.IPv6Address):
        translated = address.ipv4_mapped or _nat64_ipv4(address)
        if translated is not None:  # judged by the IPv4 address it stands for
            return _is_public(translated)
        if address in _NAT64_LOCAL:
            return False
        if address.sixtofour is not None and not _is_public(address.sixtofour):
            return False
    return _is_public(address)


def _is_public(address: IPAddress) -> bool:
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _nat64_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address not in _NAT64:
        return None
    return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)


def _parse_url(url: str) -> httpx.URL:
    if len(url) > MAX_URL_LENGTH:
        _invalid_url(f"The webhook URL is longer than {MAX_URL_LENGTH} characters.")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        _invalid_url("The webhook URL is not a valid URL.")
    if parsed.scheme not in ("http", "https"):
        _invalid_url("The webhook URL must use http or https.")
    if not parsed.raw_host:
        _invalid_url("The webhook URL has no host.")
    if parsed.userinfo:
        _invalid_url("The webhook URL must not contain a user name or password.")
    return parsed


def _invalid_url(message: str) -> NoReturn:
    raise InvalidRequest(message, param=_URL_PARAM, code="invalid_webhook_url")


async def _resolve(url: httpx.URL) -> tuple[str, ...]:
    port = url.port or (443 if url.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(url.raw_host.decode("ascii"), port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        infos = []
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise InvalidRequest(
            "The webhook URL's host does not resolve.",
            param=_URL_PARAM,
            code="webhook_host_unresolvable",
        )
    return addresses


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


# Delivery -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one delivery attempt.

    ``reason`` is short and safe to store or show: ``"ok"``, ``"http 500"``,
    ``"redirect 302 not followed"``, ``"timeout"``, ``"connection refused"``,
    ``"connection failed"``, ``"request failed"``, ``"host unresolvable"`` or
    ``"target refused"``. It never holds the URL, the secret or the payload.
    ``retryable`` is False only when the target itself was refused.
    """

    ok: bool
    reason: str
    status_code: int | None = None
    retryable: bool = True


def new_webhook_client() -> httpx.AsyncClient:
    """A client fit for ``deliver``: no redirects, no proxies or netrc from the environment."""
    return httpx.AsyncClient(follow_redirects=False, trust_env=False)


async def deliver(
    client: httpx.AsyncClient,
    target: str,
    *,
    secret: str,
    event_id: str,
    body: bytes,
    timestamp: int,
    allow_private: bool,
    time_limit: float = 10.0,
) -> DeliveryResult:
    """POST one signed event to ``target``: a single attempt, bounded by ``time_limit``
    seconds in all (resolving included). Never raises for network errors."""
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "connection": "close",  # a connection is never reused for another host's request
        **signed_headers(secret, event_id, timestamp, body),
    }
    try:
        async with asyncio.timeout(time_limit):
            resolved = await check_target(target, allow_private=allow_private)
            return await _post(client, resolved, headers, body, time_limit)
    except TimeoutError:
        return DeliveryResult(ok=False, reason="timeout")
    except InvalidRequest as error:
        if error.code == "webhook_host_unresolvable":
            return DeliveryResult(ok=False, reason="host unresolvable")
        return DeliveryResult(ok=False, reason="target refused", retryable=False)


async def _post(
    client: httpx.AsyncClient,
    target: ResolvedTarget,
    headers: dict[str, str],
    body: bytes,
    time_limit: float,
) -> DeliveryResult:
    """Try the checked addresses in order until one accepts the connection."""
    extensions = {"sni_hostname": target.server_name} if target.server_name else {}
    failure = DeliveryResult(ok=False, reason="connection failed")
    for address in target.addresses:
        request = client.build_request(
            "POST",
            target.pinned_url(address),
            content=body,
            headers={**headers, "host": target.host_header},
            timeout=time_limit,
            extensions=extensions,
        )
        try:
            response = await client.send(request, stream=True, follow_redirects=False)
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            failure = _connect_failure(error)
            continue
        except httpx.TimeoutException:
            return DeliveryResult(ok=False, reason="timeout")
        except (httpx.HTTPError, OSError):
            return DeliveryResult(ok=False, reason="request failed")
        await response.aclose()  # the answer's body is never read
        return _answered(response.status_code)
    return failure


def _answered(status: int) -> DeliveryResult:
    if 200 <= status < 300:
        return DeliveryResult(ok=True, reason="ok", status_code=status)
    if 300 <= status < 400:
        return DeliveryResult(
            ok=False, reason=f"redirect {status} not followed", status_code=status
        )
    return DeliveryResult(ok=False, reason=f"http {status}", status_code=status)


def _connect_failure(error: httpx.TransportError) -> DeliveryResult:
    if isinstance(error, httpx.ConnectTimeout):
        return DeliveryResult(ok=False, reason="timeout")
    if any(isinstance(cause, ConnectionRefusedError) for cause in _causes(error)):
        return DeliveryResult(ok=False, reason="connection refused")
    return DeliveryResult(ok=False, reason="connection failed")


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error``, its causes and contexts, and the members of any exception group."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def next_attempt_delay(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first).

    Exponential backoff ``min(cap, base * 2 ** (attempt - 1))`` with equal jitter: half of
    it fixed, half random, so the wait grows with every attempt and never exceeds ``cap``.
    """
    if attempt < 1 or base <= 0 or cap < base:
        raise ValueError("need attempt >= 1 and 0 < base <= cap")
    return equal_jitter(attempt, base=base, cap=cap, rng=rng or random.Random())
