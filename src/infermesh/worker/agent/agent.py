"""The worker agent: serve models to the network's gateways, reconnecting until told to stop.

The agent starts its model host, dials a gateway (out, so it works behind NAT), and
serves one :class:`~infermesh.worker.agent.session.GatewaySession` after another. It is
connected to one gateway at a time; when that connection drops, or a gateway cannot be
reached, it dials the next gateway of its list at once (see
:class:`~infermesh.worker.agent.gateways.GatewayRotation`), and only when every gateway
of the list has failed in a row does it wait (exponential backoff with jitter) before
the next round. A refusal that another attempt would get again (bad token, unsupported
protocol, no known model) stops it with :data:`EXIT_REFUSED`, except that a gateway that
refuses the protocol version is dialed again at once with the oldest one (it predates
the newer ones). SIGTERM or SIGINT drains: no new jobs, the ones in flight finish, then
the agent exits 0; a second signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, InvalidURI, WebSocketException

from infermesh import __version__
from infermesh.protocol.wire import MAX_FRAME_BYTES, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION
from infermesh.worker.agent.backoff import Backoff
from infermesh.worker.agent.config import AgentConfig
from infermesh.worker.agent.gateways import GatewayEndpoint, GatewayRotation
from infermesh.worker.agent.observer import AgentObserver, JobCounts
from infermesh.worker.agent.session import GatewaySession, Refusal
from infermesh.worker.host import ModelHost

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2
_CLOSE_TIMEOUT = 2.0
_RETRYABLE_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class _Attempt:
    """How one connection attempt ended: a reason to retry, or an exit code."""

    reason: str = ""
    registered: bool = False
    exit_code: int | None = None
    retry_now: bool = False


class WorkerAgent:
    """Connects a model host to one of its gateways and keeps it connected; see the
    module doc."""

    def __init__(self, config: AgentConfig, host: ModelHost, observer: AgentObserver) -> None:
        self._config = config
        self._host = host
        self._observer = observer
        self._draining = asyncio.Event()
        self._force = asyncio.Event()
        self._protocol_version = PROTOCOL_VERSION
        self.counts = JobCounts()

    def drain(self) -> None:
        """Take no new jobs, finish those in flight, then stop (a second call: stop now)."""
        if self._draining.is_set():
            self._force.set()
        self._draining.set()

    async def run(self) -> int:
        """Serve until drained (0), refused for good (:data:`EXIT_REFUSED`), or until the
        models fail to start (:data:`EXIT_FAILED`)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.drain)
        try:
            self._observer.starting(list(self._config.models))
            try:
                await self._host.start()
            except Exception as exc:
                self._observer.stopped(f"the models could not start: {type(exc).__name__}: {exc}")
                return EXIT_FAILED
            return await self._serve_forever()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            await self._host.close()

    async def _serve_forever(self) -> int:
        rotation = GatewayRotation(self._config.urls, timeout=self._config.connect_timeout)
        backoff = Backoff(initial=self._config.backoff_initial, maximum=self._config.backoff_max)
        failed = 0  # gateways lost or failed in a row
        reason = "stopped before connecting"
        while not self._draining.is_set():
            gateway = await rotation.next()
            attempt = await self._attempt(gateway)
            if attempt.exit_code is not None:
                return attempt.exit_code
            reason = attempt.reason
            if self._draining.is_set():
                break
            if attempt.retry_now:
                rotation.again(gateway)
                continue
            if attempt.registered:
                backoff.reset()
                failed = 0
            failed += 1
            if failed < rotation.size:
                self._observer.disconnected(reason, gateway=str(gateway), retry_in=None)
                continue
            failed = 0
            delay = backoff.next()
            self._observer.disconnected(reason, gateway=str(gateway), retry_in=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._draining.wait(), delay)
        self._observer.stopped(reason)
        return EXIT_OK

    async def _attempt(self, gateway: GatewayEndpoint) -> _Attempt:
        """Connect once and serve until the connection ends."""
        self._observer.connecting(str(gateway))
        try:
            async with self._dial(gateway) as websocket:
                session = GatewaySession(
                    websocket,
                    self._host,
                    self._config,
                    self._observer,
                    self.counts,
                    protocol_version=self._protocol_version,
                )
                welcome = await session.handshake()
                self._observer.registered(welcome, gateway=str(gateway))
                reason = await session.serve(welcome, draining=self._draining, force=self._force)
                return _Attempt(reason=reason, registered=True)
        except Refusal as refusal:
            if self._older_protocol(refusal):
                return _Attempt(reason="the gateway speaks an older protocol", retry_now=True)
            self._observer.refused(refusal.code, refusal.reason, fatal=refusal.fatal)
            if refusal.fatal:
                return _Attempt(exit_code=EXIT_REFUSED)
            return _Attempt(reason=f"refused ({refusal.code}): {refusal.reason}")
        except InvalidStatus as exc:
            return self._http_refusal(exc.response.status_code)
        except InvalidURI as exc:
            self._observer.refused("invalid_url", str(exc), fatal=True)
            return _Attempt(exit_code=EXIT_REFUSED)
        except (OSError, TimeoutError, WebSocketException) as exc:
            return _Attempt(reason=_describe_failure(exc))

    def _dial(self, gateway: GatewayEndpoint) -> connect:
        # One address of a name is dialed directly; the name stays in Host and in TLS.
        direct: dict[str, Any] = {}
        if gateway.address is not None:
            direct = {"host": gateway.address, "proxy": None}
        return connect(
            gateway.url,
            additional_headers={"Authorization": f"Bearer {self._config.token}"},
            user_agent_header=f"infermesh-worker/{__version__}",
            max_size=MAX_FRAME_BYTES,
            compression=None,
            open_timeout=self._config.connect_timeout,
            close_timeout=_CLOSE_TIMEOUT,
            **direct,
        )

    def _older_protocol(self, refusal: Refusal) -> bool:
        """Whether to dial again with the oldest protocol version, after ``refusal``."""
        if refusal.code != "unsupported_protocol":
            return False
        if self._protocol_version == MIN_PROTOCOL_VERSION:
            return False
        logger.info(
            "the gateway refused protocol version %d; dialing again with version %d",
            self._protocol_version,
            MIN_PROTOCOL_VERSION,
        )
        self._protocol_version = MIN_PROTOCOL_VERSION
        return True

    def _http_refusal(self, status: int) -> _Attempt:
        reason = f"the gateway answered the connection with HTTP {status}"
        if 400 <= status < 500 and status not in _RETRYABLE_STATUSES:
            self._observer.refused(f"http_{status}", reason, fatal=True)
            return _Attempt(exit_code=EXIT_REFUSED)
        return _Attempt(reason=reason)


def _describe_failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "the gateway did not answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return "the gateway refused the connection (is it running?)"
    return f"could not reach the gateway ({type(exc).__name__}: {exc})"
