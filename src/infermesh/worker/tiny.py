"""A tiny, randomly initialised chat model that is built offline in a second.

Tests and demos need a real causal LM with a real tokenizer and a chat template, but no
model hub. :func:`ensure_tiny_model` trains a small byte-level BPE tokenizer on text kept
in this module, wraps it with ChatML special tokens and a Qwen2.5/Hermes-style chat
template that supports tools, and saves a two-layer Qwen2 model with seeded random
weights next to it. What it writes loads with ``AutoTokenizer``/``AutoModelForCausalLM``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TINY_MODEL_NAME = "infermesh-tiny"
TINY_VOCAB_SIZE = 1024
TINY_CONTEXT_LENGTH = 1024
_SEED = 20240601

_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_TOOL_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")

_CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content }}"
    "{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}"
    "{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query."
    "\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and"
    " arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\\n'
    "</tool_call><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first)"
    " or (message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + (message.content or '') + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant' }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' + tool_call.name + \'", "arguments": \' }}'
    "{%- if tool_call.arguments is string %}{{- tool_call.arguments }}"
    "{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}"
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + (message.content or '') + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_TRAINING_TEXT = """
The quick brown fox jumps over the lazy dog. A gateway receives requests from clients
and forwards them to workers that run models. Each worker streams tokens back as soon as
they are generated, so the client sees the answer appear word by word.
Hello! How are you today? I am fine, thank you. What is the weather like in Paris?
It is sunny and warm in Paris, with a light breeze from the west. In London it rains.
Tell me a story about a dragon who learned to bake bread in a small mountain village.
Once upon a time there was a dragon named Ember. Every morning she lit the oven with a
gentle breath, and the whole village woke up to the smell of fresh bread and honey.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 3.14 2.71 -1 +1 = < > % $ # @ & * ^
def add(a, b):
    return a + b

for i in range(10):
    print(i, add(i, i))

{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
{"name": "search", "arguments": {"query": "bread recipe", "limit": 5}}
{"type": "function", "function": {"name": "lookup", "description": "Find a word.",
"parameters": {"type": "object", "properties": {"word": {"type": "string"}},
"required": ["word"]}}}
You are a helpful assistant. You may call one or more functions to assist with the user
query. The system prompt lists the tools; the assistant answers or calls a tool.
Das ist ein kleiner Test. C'est un petit essai. Esto es una prueba. Questo è un test.
café naïve résumé façade über straße 東京 日本語 中文 한국어 русский ελληνικά 🙂 🚀
Streaming, batching, caching, sampling, temperature, nucleus, penalty, sequence, token.
The scheduler keeps a batch of running sequences and advances all of them together.
When a new request arrives it is prefilled and joins the batch at the next step.
Tokens are decoded incrementally so that characters made of several bytes stay whole.
A stop string ends the answer before it is shown; the maximum number of tokens ends it too.
Seeds make sampling repeatable: the same seed and the same request give the same words.
Frequency and presence penalties lower the chance of repeating what was already said.
The library opens at nine in the morning and closes at six in the evening on weekdays.
Please summarise this article in three sentences and list the main points as bullets.
- first point: models are loaded once at start-up
- second point: requests share the forward pass
- third point: cancelled requests leave the batch at once
SELECT id, name FROM users WHERE active = 1 ORDER BY created_at DESC LIMIT 10;
<html><body><p>Hello, world!</p></body></html>
"""


def ensure_tiny_model(models_dir: Path) -> Path:
    """Return the path of the tiny model under ``models_dir``, building it on first use."""
    return build_once(models_dir, TINY_MODEL_NAME, _build)


def build_once(models_dir: Path, name: str, build: Callable[[Path], None]) -> Path:
    """Return ``models_dir / name``, written by ``build`` into a directory first if it
    holds no model yet.

    The model is built in a temporary directory next to its final place and renamed
    into place, so an interrupted build never leaves a half-written model behind.
    """
    target = models_dir / name
    if (target / "config.json").is_file():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=models_dir))
    try:
        build(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _build(directory: Path) -> None:
    """Write the tokenizer, the model and its generation config to ``directory``."""
    tokenizer = build_tiny_tokenizer()
    model = _build_model(tokenizer)
    tokenizer.save_pretrained(directory)
    model.save_pretrained(directory)


def build_tiny_tokenizer() -> Any:
    """Train the byte-level BPE tokenizer and wrap it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_TRAINING_TEXT.splitlines(keepends=True), trainer=trainer)
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in _TOOL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=TINY_CONTEXT_LENGTH,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def _build_model(tokenizer: Any) -> Any:
    """A two-layer Qwen2 model with seeded random weights and ChatML end-of-turn as EOS."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_CONTEXT_LENGTH,
        initializer_range=0.2,
        tie_word_embeddings=True,
        bos_token_id=end_of_text,
        eos_token_id=im_end,
        pad_token_id=end_of_text,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        eos_token_id=im_end, pad_token_id=end_of_text, bos_token_id=end_of_text
    )
    return model
