"""Choosing the next token from a row of logits, as one request asked for it."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

_SEED_MASK = 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one request samples: OpenAI's knobs with their defaults filled in.

    ``temperature == 0`` means greedy decoding; ``seed`` makes sampling repeatable.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        """Whether the most likely token is always taken."""
        return self.temperature == 0.0

    @property
    def penalised(self) -> bool:
        """Whether frequency or presence penalties change the logits."""
        return self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A random generator of one's own: seeded as asked, or from the system's entropy."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed if seed is not None else secrets.randbits(63)) & _SEED_MASK)
    return generator


def apply_penalties(
    logits: torch.Tensor, counts: torch.Tensor, params: SamplingParams
) -> torch.Tensor:
    """OpenAI's formula: ``logit - count * frequency_penalty - (count > 0) * presence_penalty``."""
    return (
        logits
        - counts * params.frequency_penalty
        - (counts > 0).to(logits.dtype) * params.presence_penalty
    )


def nucleus_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``top_p``."""
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative - sorted_logits.softmax(dim=-1) >= top_p
    remove_sorted[0] = False
    remove = torch.zeros_like(remove_sorted).scatter(0, sorted_indices, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def choose_token(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator,
    counts: torch.Tensor | None = None,
) -> int:
    """The next token for one sequence from its logits row (shape ``[vocab]``)."""
    scores = logits.float()
    if counts is not None and params.penalised:
        scores = apply_penalties(scores, counts, params)
    if params.greedy:
        return int(torch.argmax(scores).item())
    scores = scores / params.temperature
    if params.top_p < 1.0:
        scores = nucleus_filter(scores, params.top_p)
    probabilities = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probabilities, 1, generator=generator).item())
