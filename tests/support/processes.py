"""infermesh commands run as real processes, with their output read as it comes."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
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
    """Run the real command line, ``infermesh ARGS``, to its end, in a process of its own.

    The process is forked from a warm one that has imported the command line already
    (:class:`_Zygote`): each command still runs ``main()`` in a fresh process with its own
    arguments, environment, working directory, output and exit status, without paying
    the ~0.7 s of imports again. ``INFERMESH_TEST_SPAWN_CLI=1`` (or a system without
    ``fork``) runs ``python -m infermesh`` instead."""
    if os.environ.get("INFERMESH_TEST_SPAWN_CLI") == "1" or not hasattr(os, "fork"):
        return subprocess.run(
            infermesh_command(*args),
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
    return _Zygote.shared().run(list(args), env)


_ZYGOTE = r"""
import json, os, sys, time, traceback

import infermesh.cli  # what every command imports, imported once

for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            for fd, path, flags in (
                (0, os.devnull, os.O_RDONLY),
                (1, request["stdout"], os.O_WRONLY | os.O_TRUNC),
                (2, request["stderr"], os.O_WRONLY | os.O_TRUNC),
            ):
                os.dup2(os.open(path, flags), fd)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            sys.argv = ["infermesh", *request["args"]]
            code = 0
            try:
                infermesh.cli.main()
            except SystemExit as exit:
                if isinstance(exit.code, int) or exit.code is None:
                    code = exit.code or 0
                else:
                    print(exit.code, file=sys.stderr)
                    code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    deadline = time.monotonic() + request["timeout"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            result = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            result = None
            break
        time.sleep(0.002)
    print(json.dumps({"returncode": result}), flush=True)
"""


class _Zygote:
    """A warm ``python`` that forks one process per command (see :func:`infermesh`)."""

    _shared: _Zygote | None = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._lock = threading.Lock()

    @classmethod
    def shared(cls) -> _Zygote:
        with cls._shared_lock:
            if cls._shared is None or cls._shared._process.poll() is not None:
                cls._shared = cls()
            return cls._shared

    def run(self, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        with tempfile.TemporaryDirectory() as scratch:
            out, err = Path(scratch, "stdout"), Path(scratch, "stderr")
            out.touch()
            err.touch()
            request = {
                "args": args,
                "env": env,
                "cwd": os.getcwd(),
                "stdout": str(out),
                "stderr": str(err),
                "timeout": 120,
            }
            with self._lock:
                assert self._process.stdin is not None and self._process.stdout is not None
                self._process.stdin.write(json.dumps(request) + "\n")
                self._process.stdin.flush()
                answer = self._process.stdout.readline()
            if not answer:
                raise RuntimeError("the command-line zygote exited")
            returncode = json.loads(answer)["returncode"]
            if returncode is None:
                raise subprocess.TimeoutExpired(["infermesh", *args], 120)
            return subprocess.CompletedProcess(
                ["infermesh", *args], returncode, out.read_text(), err.read_text()
            )


@contextmanager
def run_infermesh(*args: str, cwd: Path | None = None) -> Iterator[RunningProcess]:
    process = RunningProcess(infermesh_command(*args))
    try:
        yield process
    finally:
        process.stop()
