"""The request fields beyond those infermesh declares that may reach an inference engine.

A chat request keeps the fields a client sends that :class:`ChatCompletionRequest` does
not declare (clients send vendor options; refusing them would break drop-in use). They
are not all harmless: vLLM and SGLang read ``chat_template`` and ``chat_template_kwargs``
(a client-written Jinja template, or template switches the operator did not choose),
``priority`` (jump the engine's queue), ``kv_transfer_params`` (point the engine at
another host's KV cache), ``request_id`` and ``return_tokens_as_token_ids``; hosted
providers read ``store``, ``metadata`` and ``service_tier`` (retention, logging and price
on the operator's account); ``functions`` would slip tools past the model's capability
check. So only the fields named here go to an engine, besides the declared ones; the
gateway drops the rest when it builds a job and the worker drops them again before it
calls an engine.

Each field below only reshapes the sampling of the next token or reports on it, is
understood the same way by the common engines (vLLM, SGLang, llama.cpp; an engine that
does not know one ignores it or refuses the request, which the client then sees as a
400), and cannot make a request cost more than its ``max_tokens`` allows:

- ``top_k``: sample from the k most likely tokens only;
- ``min_p``: drop tokens less likely than this share of the most likely one;
- ``repetition_penalty``: the multiplicative penalty on tokens already seen;
- ``logit_bias``: OpenAI's own field, a bias per token id (bounded by the engine);
- ``logprobs`` and ``top_logprobs``: OpenAI's own fields, ask for the log-probabilities of
  the tokens chosen (a few per token, bounded by the engine); infermesh does not return
  them yet, so they only cost the engine a little work.

A field is added here only with its reason.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

ENGINE_EXTRA_FIELDS: frozenset[str] = frozenset(
    {
        "top_k",
        "min_p",
        "repetition_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
    }
)
"""Undeclared request fields forwarded to engines (see the module's documentation)."""


def declared_fields(
    model: BaseModel, dumped: dict[str, Any], *, keep: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """``dumped`` (a dump of ``model``) without the undeclared fields not in ``keep``;
    nested models keep only their declared fields."""
    fields = type(model).model_fields
    return {
        name: _declared_value(getattr(model, name), value)
        for name, value in dumped.items()
        if name in fields or name in keep
    }


def _declared_value(value: Any, dumped: Any) -> Any:
    if isinstance(value, BaseModel):
        return declared_fields(value, dumped)
    if isinstance(value, list):
        return [_declared_value(item, part) for item, part in zip(value, dumped, strict=True)]
    return dumped
