"""infermesh commands run as real processes, with their output read as it comes."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class RunningProcess:
    """A child process whose merged stdout/stderr lines are collected by a reader thread."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "COLUMNS": "200", **(env or {})},
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for_line(self, needle: str, *, timeout: float = 120) -> str:
        """The first line (from the start) containing ``needle``; waits with a deadline."""
        for line in self.lines:
            if needle in line:
                return line
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"process exited before printing {needle!r}:\n{self.output}")
            self.lines.append(line)
            if needle in line:
                return line
        raise TimeoutError(f"{needle!r} not printed within {timeout}s:\n{self.output}")

    @property
    def output(self) -> str:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return "".join(self.lines)

    def stop(self, *, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def infermesh_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "infermesh", *args]


def infermesh(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the real command line, ``python -m infermesh ARGS``, to its end."""
    return subprocess.run(
        infermesh_command(*args), capture_output=True, text=True, env=env, timeout=120, check=False
    )


@contextmanager
def run_infermesh(*args: str, cwd: Path | None = None) -> Iterator[RunningProcess]:
    process = RunningProcess(infermesh_command(*args))
    try:
        yield process
    finally:
        process.stop()
