"""Redis for tests: the server of this machine (or CI), and private ones to kill.

The shared server is ``redis://127.0.0.1:6379/0`` unless ``INFERMESH_TEST_REDIS_URL``
names another. Tests that need it call :func:`require_redis`: an unreachable server
FAILS the test (a skip would hide a gap), unless ``INFERMESH_SKIP_REDIS=1`` is set.
Each test uses its own key prefix (:func:`unique_prefix`), so tests never share state.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import redis

from tests.support.servers import free_port

DEFAULT_URL = "redis://127.0.0.1:6379/0"
URL_ENV = "INFERMESH_TEST_REDIS_URL"
SKIP_ENV = "INFERMESH_SKIP_REDIS"


def redis_url() -> str:
    return os.environ.get(URL_ENV, DEFAULT_URL)


def redis_available(url: str | None = None) -> bool:
    client = redis.Redis.from_url(url or redis_url(), socket_connect_timeout=2, socket_timeout=2)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def require_redis() -> None:
    """Skip if ``INFERMESH_SKIP_REDIS=1``; else fail unless Redis is reachable."""
    if os.environ.get(SKIP_ENV, "") == "1":
        pytest.skip(f"Redis tests skipped: {SKIP_ENV}=1")
    if not redis_available():
        pytest.fail(
            f"Redis is not reachable at {redis_url()}; start it, or set {SKIP_ENV}=1 "
            "to skip these tests explicitly"
        )


def unique_prefix() -> str:
    """A key prefix of one's own (for ``INFERMESH_REDIS_PREFIX``)."""
    return f"imtest-{secrets.token_hex(6)}"


def keys_with_prefix(prefix: str, url: str | None = None) -> dict[str, str]:
    """Every key under ``prefix`` on the Redis at ``url``, with its type."""
    client = redis.Redis.from_url(url or redis_url(), decode_responses=True)
    try:
        return {key: client.type(key) for key in client.scan_iter(match=f"{prefix}:*")}
    finally:
        client.close()


@dataclass
class PrivateRedis:
    """A redis-server process of the test's own, which the test may stop and restart."""

    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, timeout: float = 10) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; the Redis fault tests need it")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not redis_available(self.url):
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    """A redis-server on a free port for the ``with`` block (killed at the end); skipped
    like the other Redis tests with ``INFERMESH_SKIP_REDIS=1``."""
    if os.environ.get(SKIP_ENV, "") == "1":
        pytest.skip(f"Redis tests skipped: {SKIP_ENV}=1")
    server = PrivateRedis(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
