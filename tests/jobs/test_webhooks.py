"""Webhooks: signatures checked as a receiver checks them, the guard against internal
addresses, and single deliveries to a real HTTP receiver (and a real TLS one)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import ipaddress
import json
import random
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio.to_thread
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from infermesh.errors import InvalidRequest
from infermesh.jobs.webhooks import (
    MAX_URL_LENGTH,
    USER_AGENT,
    DeliveryResult,
    check_target,
    deliver,
    is_public_address,
    new_webhook_client,
    new_webhook_secret,
    next_attempt_delay,
    sign,
    validate_webhook_url,
    verify,
)
from tests.support.servers import free_port, serve_app

EVENT_ID = "evt_2f1c9b"
BODY = json.dumps({"type": "job.completed", "data": {"id": "job_1"}}).encode()


def _independent_signature(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """What a receiver following the Standard Webhooks spec computes, written out again."""
    key = base64.b64decode(secret.split("_", 1)[1])
    content = event_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


# Signing ------------------------------------------------------------------------------


def test_a_new_secret_is_whsec_and_32_random_bytes() -> None:
    first, second = new_webhook_secret(), new_webhook_secret()
    assert first.startswith("whsec_")
    assert len(base64.b64decode(first.removeprefix("whsec_"), validate=True)) == 32
    assert first != second


def test_the_signature_is_the_standard_webhooks_hmac() -> None:
    secret = new_webhook_secret()
    assert sign(secret, EVENT_ID, 1_700_000_000, BODY) == _independent_signature(
        secret, EVENT_ID, 1_700_000_000, BODY
    )


def test_the_spec_example_signature() -> None:
    # The worked example of the Standard Webhooks reference libraries.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def _headers(secret: str, timestamp: int, body: bytes = BODY) -> dict[str, str]:
    return {
        "webhook-id": EVENT_ID,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, EVENT_ID, timestamp, body),
    }


def test_verify_accepts_a_genuine_event_and_rejects_tampering() -> None:
    secret, now = new_webhook_secret(), 1_700_000_000
    headers = _headers(secret, now)
    assert verify(secret, headers, BODY, now=now)
    assert verify(secret, {k.upper(): v for k, v in headers.items()}, BODY, now=now + 299)
    assert not verify(secret, headers, BODY + b" ", now=now)
    assert not verify(new_webhook_secret(), headers, BODY, now=now)
    assert not verify(secret, {**headers, "webhook-id": "evt_other"}, BODY, now=now)
    assert not verify(secret, {**headers, "webhook-timestamp": str(now + 1)}, BODY, now=now)


def test_verify_rejects_stale_future_and_malformed_timestamps() -> None:
    secret, now = new_webhook_secret(), 1_700_000_000
    assert not verify(secret, _headers(secret, now - 301), BODY, now=now)
    assert not verify(secret, _headers(secret, now + 301), BODY, now=now)
    assert verify(secret, _headers(secret, now - 50), BODY, now=now, tolerance=60)
    assert not verify(secret, _headers(secret, now - 61), BODY, now=now, tolerance=60)
    for stamp in ("", "abc", "-5", "1e9", "\uff11\uff12"):
        assert not verify(
            secret, {**_headers(secret, now), "webhook-timestamp": stamp}, BODY, now=now
        )


def test_verify_needs_all_three_headers() -> None:
    secret, now = new_webhook_secret(), 1_700_000_000
    for missing in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        headers = _headers(secret, now)
        del headers[missing]
        assert not verify(secret, headers, BODY, now=now)


def test_verify_accepts_any_of_several_signatures() -> None:
    old, new, now = new_webhook_secret(), new_webhook_secret(), 1_700_000_000
    headers = _headers(new, now)
    # As during a secret rotation: one signature per secret, plus unknown versions.
    headers["webhook-signature"] = " ".join(
        ["v1a,c29tZXRoaW5nIGVsc2U=", sign(old, EVENT_ID, now, BODY), headers["webhook-signature"]]
    )
    assert verify(new, headers, BODY, now=now)
    assert verify(old, headers, BODY, now=now)
    assert not verify(new_webhook_secret(), headers, BODY, now=now)


def test_a_malformed_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="not a webhook secret"):
        sign("whsec_not base64!", EVENT_ID, 1, BODY)


# The target guard ---------------------------------------------------------------------

INTERNAL_URLS = [
    "http://127.0.0.1/hook",
    "http://127.1.2.3:8080/hook",
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata, link-local
    "http://100.64.0.1/",  # shared address space (carrier NAT)
    "http://0.0.0.0:8000/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://[::1]/",
    "http://[::]/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[ff02::1]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped loopback
    "http://[::ffff:a9fe:a9fe]/",  # IPv4-mapped 169.254.169.254
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
    "http://[64:ff9b:1::1]/",  # local-use NAT64
    "http://localhost:9/",
    "http://2130706433/",  # 127.0.0.1 as one decimal number
    "http://0x7f.1/",  # 127.0.0.1 in the short hexadecimal form
]


@pytest.mark.parametrize("url", INTERNAL_URLS)
async def test_internal_targets_are_refused_by_default(url: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await check_target(url, allow_private=False)
    assert refused.value.code == "webhook_target_forbidden"
    assert refused.value.status_code == 400


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/", "http://localhost:9/", "http://[::1]/", "http://10.1.2.3/"]
)
async def test_allow_private_lets_internal_targets_through(url: str) -> None:
    target = await check_target(url, allow_private=True)
    assert target.addresses
    assert all(not is_public_address(ipaddress.ip_address(a)) for a in target.addresses)


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("https://1.1.1.1/hook", "1.1.1.1"),
        ("http://[2606:4700:4700::1111]:8080/", "2606:4700:4700::1111"),
        ("http://[64:ff9b::101:101]/", "64:ff9b::101:101"),  # NAT64 of 1.1.1.1
    ],
)
async def test_public_addresses_pass_and_are_pinned(url: str, address: str) -> None:
    target = await check_target(url, allow_private=False)
    assert target.addresses == (address,)
    assert target.pinned_url(address).host == address
    assert target.server_name is None  # no server name for an IP literal


BAD_URLS = [
    "ftp://example.com/hook",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "gopher://example.com/",
    "http:///no-host",
    "https://user:secret@example.com/hook",
    "https://token@example.com/hook",
    "https://example.com/" + "a" * (MAX_URL_LENGTH - 19),
    "no scheme at all",
    "",
]


@pytest.mark.parametrize("url", BAD_URLS)
async def test_malformed_urls_are_refused_without_resolving(url: str) -> None:
    with pytest.raises(InvalidRequest) as syntax:
        validate_webhook_url(url)
    assert syntax.value.code == "invalid_webhook_url"
    assert syntax.value.param == "webhook_url"
    with pytest.raises(InvalidRequest) as guarded:
        await check_target(url, allow_private=True)
    assert guarded.value.code == "invalid_webhook_url"


def test_a_well_formed_url_is_returned_as_given() -> None:
    longest = "https://example.com/" + "a" * (MAX_URL_LENGTH - 20)
    assert len(longest) == MAX_URL_LENGTH
    for url in ("https://hooks.example.com/a?b=1", "http://127.0.0.1:8000/x", longest):
        assert validate_webhook_url(url) == url


async def test_an_unresolvable_host_is_refused() -> None:
    with pytest.raises(InvalidRequest) as unresolved:
        await check_target("https://no-such-host.invalid/hook", allow_private=True)
    assert unresolved.value.code == "webhook_host_unresolvable"


# A real receiver ----------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    peer: str


@dataclass
class Receiver:
    """A webhook receiver that records what arrives and answers as each path says."""

    base_url: str = ""
    requests: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(f"/{name}", getattr(self, name), methods=["POST"])
                for name in ("ok", "fail", "moved", "stall", "endless")
            ]
        )

    async def _record(self, request: Request) -> None:
        peer = request.client.host if request.client else ""
        received = Received(request.url.path, dict(request.headers), await request.body(), peer)
        self.requests.append(received)

    async def ok(self, request: Request) -> Response:
        await self._record(request)
        return Response(status_code=204)

    async def fail(self, request: Request) -> Response:
        await self._record(request)
        return Response(f"boom: {request.headers['webhook-id']}", status_code=500)

    async def moved(self, request: Request) -> Response:
        await self._record(request)
        return RedirectResponse("/ok", status_code=307)

    async def stall(self, request: Request) -> Response:
        await self._record(request)
        await anyio.to_thread.run_sync(self.release.wait, 60)
        return Response(status_code=204)

    async def endless(self, request: Request) -> Response:
        await self._record(request)

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(100_000):  # far beyond 64 KiB; backpressure stalls it
                yield b"x" * 65536

        return StreamingResponse(chunks(), status_code=200)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    with serve_app(receiver.app()) as base_url:
        receiver.base_url = base_url
        yield receiver
        receiver.release.set()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with new_webhook_client() as client:
        yield client


async def _deliver(
    client: httpx.AsyncClient, url: str, *, secret: str, time_limit: float = 10.0
) -> DeliveryResult:
    return await deliver(
        client,
        url,
        secret=secret,
        event_id=EVENT_ID,
        body=BODY,
        timestamp=int(time.time()),
        allow_private=True,
        time_limit=time_limit,
    )


async def test_a_delivery_arrives_signed(receiver: Receiver, client: httpx.AsyncClient) -> None:
    receiver.requests.clear()
    secret = new_webhook_secret()
    result = await _deliver(client, receiver.base_url + "/ok", secret=secret)
    assert result == DeliveryResult(ok=True, reason="ok", status_code=204)
    [arrived] = receiver.requests
    assert arrived.body == BODY
    assert arrived.headers["content-type"] == "application/json"
    assert arrived.headers["user-agent"] == USER_AGENT
    assert arrived.headers["webhook-id"] == EVENT_ID
    timestamp = int(arrived.headers["webhook-timestamp"])
    assert abs(time.time() - timestamp) < 60
    assert verify(secret, arrived.headers, arrived.body, now=int(time.time()))
    assert arrived.headers["webhook-signature"] == _independent_signature(
        secret, EVENT_ID, timestamp, BODY
    )


async def test_a_hostname_is_pinned_to_its_checked_address(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    receiver.requests.clear()
    port = httpx.URL(receiver.base_url).port
    result = await _deliver(client, f"http://localhost:{port}/ok", secret=new_webhook_secret())
    assert result.ok
    [arrived] = receiver.requests
    assert arrived.headers["host"] == f"localhost:{port}"  # the original Host header
    assert arrived.peer == "127.0.0.1"


async def test_internal_receivers_are_refused_by_default(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    receiver.requests.clear()
    result = await deliver(
        client,
        receiver.base_url + "/ok",
        secret=new_webhook_secret(),
        event_id=EVENT_ID,
        body=BODY,
        timestamp=int(time.time()),
        allow_private=False,
    )
    assert result == DeliveryResult(ok=False, reason="target refused", retryable=False)
    assert receiver.requests == []


async def test_a_server_error_is_a_failure_that_tells_nothing_secret(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    secret = new_webhook_secret()
    result = await _deliver(client, receiver.base_url + "/fail?token=abc", secret=secret)
    assert result == DeliveryResult(ok=False, reason="http 500", status_code=500)
    for private in (secret, EVENT_ID, "token", "boom", BODY.decode()):
        assert private not in result.reason


async def test_a_redirect_is_not_followed(receiver: Receiver, client: httpx.AsyncClient) -> None:
    receiver.requests.clear()
    result = await _deliver(client, receiver.base_url + "/moved", secret=new_webhook_secret())
    assert not result.ok
    assert result.status_code == 307
    assert result.reason == "redirect 307 not followed"
    assert [r.path for r in receiver.requests] == ["/moved"]


async def test_a_stalled_receiver_times_out_within_the_bound(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    started = time.monotonic()
    result = await _deliver(
        client, receiver.base_url + "/stall", secret=new_webhook_secret(), time_limit=0.5
    )
    elapsed = time.monotonic() - started
    assert result == DeliveryResult(ok=False, reason="timeout")
    assert 0.5 <= elapsed < 2.0


async def test_an_endless_answer_body_is_not_read(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    started = time.monotonic()
    result = await _deliver(
        client, receiver.base_url + "/endless", secret=new_webhook_secret(), time_limit=5
    )
    assert result == DeliveryResult(ok=True, reason="ok", status_code=200)
    assert time.monotonic() - started < 5


async def test_a_refused_connection_is_a_failure(client: httpx.AsyncClient) -> None:
    url = f"http://127.0.0.1:{free_port()}/ok"
    result = await _deliver(client, url, secret=new_webhook_secret())
    assert result == DeliveryResult(ok=False, reason="connection refused")


async def test_a_bad_url_is_a_failure_not_an_exception(client: httpx.AsyncClient) -> None:
    result = await _deliver(client, "ftp://example.com/", secret=new_webhook_secret())
    assert result == DeliveryResult(ok=False, reason="target refused", retryable=False)


# A real TLS receiver: the connection goes to the checked IP, TLS speaks the host name --


@dataclass
class TlsReceiver:
    server_names: list[str | None] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
        await reader.readexactly(int(headers["content-length"]))
        self.hosts.append(headers["host"])
        writer.write(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


def _self_signed_localhost(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509  # a dev dependency: never skipped
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_is_pinned_with_the_original_server_name(tmp_path: Path) -> None:
    cert, key = _self_signed_localhost(tmp_path)
    tls = TlsReceiver()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server_context.sni_callback = lambda _sock, name, _ctx: tls.server_names.append(name)
    server = await asyncio.start_server(tls.handle, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    trusting = ssl.create_default_context(cafile=str(cert))
    async with server, httpx.AsyncClient(verify=trusting, trust_env=False) as client:
        result = await _deliver(client, f"https://localhost:{port}/hook", secret="whsec_AAAA")
        assert result == DeliveryResult(ok=True, reason="ok", status_code=204)
        assert tls.server_names == ["localhost"]
        assert tls.hosts == [f"localhost:{port}"]
        # Without the name the certificate does not match: verification is still on.
        by_ip = await _deliver(client, f"https://127.0.0.1:{port}/hook", secret="whsec_AAAA")
        assert by_ip == DeliveryResult(ok=False, reason="connection failed")


# Backoff ------------------------------------------------------------------------------


def test_backoff_grows_and_is_capped() -> None:
    rng = random.Random(7)
    delays = [next_attempt_delay(n, base=2.0, cap=600.0, rng=rng) for n in range(1, 13)]
    uncapped = delays[:9]  # 2 * 2**8 = 512 < 600: the ranges [c/2, c] do not overlap yet
    assert uncapped == sorted(uncapped)
    for attempt, delay in enumerate(delays, start=1):
        ceiling = min(600.0, 2.0 * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert delays[-1] >= 300.0
    assert next_attempt_delay(10_000, base=2.0, cap=600.0) <= 600.0


def test_backoff_is_jittered() -> None:
    rng = random.Random(11)
    assert len({next_attempt_delay(5, base=1.0, cap=60.0, rng=rng) for _ in range(20)}) > 1


@pytest.mark.parametrize(
    ("attempt", "base", "cap"), [(0, 1.0, 10.0), (1, 0.0, 10.0), (1, 5.0, 1.0)]
)
def test_backoff_refuses_nonsense(attempt: int, base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        next_attempt_delay(attempt, base=base, cap=cap)
