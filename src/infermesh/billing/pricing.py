"""What a request costs: a model's prices and the arithmetic on them.

A model is priced flat per request (one step of an agent loop that returns a tool call
is one request), per token with separate input and output prices per million tokens,
or both, with an optional minimum per request. Costs are whole micro-USD, rounded up.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from infermesh.billing.money import USD
from infermesh.protocol.chat import ChatCompletionRequest, ContentPart, ImagePart

TOKENS_PER_PRICE_UNIT = 1_000_000
MESSAGE_OVERHEAD_TOKENS = 16
"""Tokens a chat template may add around each message (role markers, separators)."""
PROMPT_OVERHEAD_TOKENS = 64
TOOLS_OVERHEAD_TOKENS = 512
"""Tokens a chat template may add to explain tools, beyond the tool schemas themselves."""


class Pricing(BaseModel):
    """A model's prices, written in USD and held as integer micro-USD."""

    model_config = ConfigDict(extra="forbid")

    per_request: USD = 0
    input_per_million: USD = 0
    output_per_million: USD = 0
    minimum: USD = 0

    @property
    def free(self) -> bool:
        return not (self.per_request or self.input_per_million or self.output_per_million) and (
            not self.minimum
        )

    @property
    def flat(self) -> bool:
        """True when the cost does not depend on tokens: known before the request is sent."""
        return not (self.input_per_million or self.output_per_million)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> int:
        """The exact cost in micro-USD of a request that used these tokens."""
        token_cost = prompt_tokens * self.input_per_million
        token_cost += completion_tokens * self.output_per_million
        rounded_up = -(-token_cost // TOKENS_PER_PRICE_UNIT)
        return max(self.per_request + rounded_up, self.minimum)


@dataclass(frozen=True, slots=True)
class TokenBound:
    """The most tokens a request can use, before it runs."""

    prompt_tokens: int
    completion_tokens: int


def token_bound(request: ChatCompletionRequest, *, context_length: int) -> TokenBound:
    """An upper bound on the tokens ``request`` can use on a model with this context.

    A token of a byte-level or byte-fallback tokenizer covers at least one byte, so the
    UTF-8 size of the text (plus template overhead) bounds the prompt; nothing exceeds
    the context length. The completion is bounded by ``max_tokens`` if given.
    """
    size = PROMPT_OVERHEAD_TOKENS
    for message in request.messages:
        size += MESSAGE_OVERHEAD_TOKENS + len(message.model_dump_json().encode())
        if _has_image(getattr(message, "content", None)):
            size += context_length
    if request.tools:
        size += TOOLS_OVERHEAD_TOKENS
        size += sum(len(tool.model_dump_json().encode()) for tool in request.tools)
    requested = request.requested_max_tokens()
    completion = context_length if requested is None else min(requested, context_length)
    return TokenBound(prompt_tokens=min(size, context_length), completion_tokens=completion)


def _has_image(content: str | list[ContentPart] | None) -> bool:
    return isinstance(content, list) and any(isinstance(part, ImagePart) for part in content)
