"""Usage the gateway can stand behind: a worker's report, bounded by what the gateway saw.

A worker says how many tokens a job used; that is a claim. The gateway bounds it by
its own facts before it bills, limits or routes on it:

- **prompt**: at most the gateway's own count of the request (with the model's
  tokenizer where the catalog knows it, else a byte bound; see :mod:`.counting`);
- **completion**: at most what the request allows (``max_tokens``, else the context)
  and at most what was relayed: a token of a byte-level or byte-fallback tokenizer is
  at least one byte of text, so the UTF-8 size of the text relayed (plus a little for
  end-of-text tokens, stop sequences the engine swallowed and tool-call markup) bounds
  any honest count.

A report above a bound is a violation: the field is replaced by the gateway's own
count (never more than was claimed), and the caller penalises the worker.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from infermesh.protocol.chat import Usage

COMPLETION_SLACK_TOKENS = 16
"""Tokens an honest engine may count without relaying a byte: end-of-text, special
tokens, a partial UTF-8 character held back at the end."""
TOOL_CALL_MARKUP_TOKENS = 32
"""Tokens of markup around each tool call that the worker parses away."""
CHARS_PER_TOKEN = 4
"""The estimate used when no tokenizer is known and a report had to be replaced."""


@dataclass(frozen=True, slots=True)
class UsageBounds:
    """What the gateway knows before the job runs."""

    prompt_tokens: int
    max_output_tokens: int
    stop_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Relayed:
    """What the gateway relayed of one answer."""

    text_bytes: int
    tool_calls: int
    count_text: Callable[[], int | None]
    """The gateway's own count of the relayed text, None without a tokenizer."""


@dataclass(frozen=True, slots=True)
class Audit:
    """The usage to bill and count, and what was wrong with the claim (None: nothing)."""

    usage: Usage
    violation: str | None = None


def completion_bound(bounds: UsageBounds, relayed: Relayed) -> int:
    """The most completion tokens an honest engine can report for what was relayed."""
    seen = (
        relayed.text_bytes
        + relayed.tool_calls * TOOL_CALL_MARKUP_TOKENS
        + bounds.stop_bytes
        + COMPLETION_SLACK_TOKENS
    )
    return min(bounds.max_output_tokens, seen)


def audit_usage(claim: Usage, bounds: UsageBounds, relayed: Relayed) -> Audit:
    """``claim`` as the gateway can stand behind it."""
    problems: list[str] = []
    prompt = claim.prompt_tokens
    if prompt > bounds.prompt_tokens:
        problems.append(f"{prompt} prompt tokens claimed, at most {bounds.prompt_tokens} sent")
        prompt = bounds.prompt_tokens
    completion = claim.completion_tokens
    most = completion_bound(bounds, relayed)
    if completion > most:
        problems.append(f"{completion} completion tokens claimed, at most {most} relayed")
        completion = min(completion, _own_count(relayed, most))
    if not problems:
        return Audit(claim)
    usage = Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )
    return Audit(usage, "; ".join(problems))


def clamp_usage(claim: Usage, bounds: UsageBounds, relayed: Relayed) -> Usage:
    """A progress report of a job cut short, within the bounds (not a violation: an
    engine may count tokens it has not sent yet, such as a tool call held back)."""
    prompt = min(claim.prompt_tokens, bounds.prompt_tokens)
    completion = min(claim.completion_tokens, completion_bound(bounds, relayed))
    if (prompt, completion) == (claim.prompt_tokens, claim.completion_tokens):
        return claim
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def _own_count(relayed: Relayed, most: int) -> int:
    counted = relayed.count_text()
    if counted is None:
        counted = math.ceil(relayed.text_bytes / CHARS_PER_TOKEN)
    return min(counted + relayed.tool_calls * TOOL_CALL_MARKUP_TOKENS, most)
