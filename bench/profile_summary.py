"""Where a profiled process spent its time, from py-spy's collapsed stacks.

Run: python bench/profile_summary.py PROFILE.collapsed [--top 20]
(``py-spy record --format raw --function`` writes the collapsed stacks; bench/serving.py
writes them beside the flame graph when it profiles.) Prints the share of samples by
package (self time), the functions with the most self time, and the infermesh functions
with the most inclusive time (what runs under them, libraries included).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
_PACKAGES = (
    "infermesh",
    "starlette",
    "fastapi",
    "pydantic_core",
    "pydantic",
    "uvicorn",
    "httptools",
    "h11",
    "websockets",
    "sqlalchemy",
    "aiosqlite",
    "asyncpg",
    "redis",
    "prometheus_client",
    "anyio",
    "httpx",
    "httpcore",
    "json",
    "logging",
    "asyncio",
    "uvloop",
    "sqlite3",
    "typing",
)


_LINE_NUMBER = re.compile(r":\d+\)$")


def parse(text: str) -> list[tuple[list[str], int]]:
    """``[(frames from the outermost, samples), ...]`` (the thread frame dropped)."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [
            _LINE_NUMBER.sub(")", frame)  # py-spy writes "(file:line)" for some processes
            for frame in stack.split(";")
            if not frame.startswith("process ")
        ]
        if frames and frames[0].startswith("thread "):
            frames = frames[1:]
        stacks.append((frames, int(count)))
    return stacks


def package_of(frame: str) -> str:
    match = _FRAME.match(frame)
    path = match.group("file") if match else frame
    parts = re.split(r"[/\\]", path)
    for part in parts:
        name = part.removesuffix(".py")
        if name in _PACKAGES:
            if name == "infermesh":
                return "infermesh/" + _after(parts, "infermesh")
            return name
    return parts[-1] if parts else path


def _after(parts: list[str], name: str) -> str:
    index = parts.index(name)
    return parts[index + 1].removesuffix(".py") if index + 1 < len(parts) else ""


def function_of(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = re.sub(r"^.*?(site-packages|src)/", "", match.group("file"))
    return f"{match.group('function')} ({file})"


def _is_request_code(frame: str) -> bool:
    """A frame of infermesh other than the command line that started the server."""
    package = package_of(frame)
    return package.startswith("infermesh/") and package not in (
        "infermesh/cli",
        "infermesh/__main__",
        "infermesh/",
    )


def summarize(stacks: list[tuple[list[str], int]], top: int) -> str:
    total = sum(count for _, count in stacks) or 1
    by_package: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        if not frames:
            continue
        by_package[package_of(frames[-1])] += count
        self_time[function_of(frames[-1])] += count
        for name in {function_of(frame) for frame in frames if _is_request_code(frame)}:
            inclusive[name] += count
    lines = [f"{total} samples (busy only)", "", "self time by package:"]
    lines += _share_lines(by_package, total, top)
    lines += ["", "self time by function:", *_share_lines(self_time, total, top)]
    lines += ["", "inclusive time by infermesh function:", *_share_lines(inclusive, total, top)]
    return "\n".join(lines)


def _share_lines(counter: Counter[str], total: int, top: int) -> list[str]:
    return [f"  {100 * count / total:5.1f}%  {name}" for name, count in counter.most_common(top)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("collapsed", type=Path)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    print(summarize(parse(args.collapsed.read_text()), args.top))


if __name__ == "__main__":
    main()
