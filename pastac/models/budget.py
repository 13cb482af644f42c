"""How many tokens a run may hold: the model's context length, and the memory its cache takes.

The runtime preallocates its cache at full capacity (the prompt, the answer's token budget and a template's
forced tokens), so a budget far beyond what the model or the machine can hold is refused before anything is
allocated (``check_budget``), with a ``BudgetError`` (a ``ValueError``) that says what the limit is, rather
than an allocation of gigabytes that fails or swaps.
"""

from __future__ import annotations

from typing import Any

import torch

from pastac.machine import available_memory

#: The config fields that give a model's context length, by the names architectures use for it.
_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


class BudgetError(ValueError):
    """A run's token budget is more than the model's context or the machine's memory can hold."""


class ContextError(BudgetError):
    """The prompt (with a template's text) alone fills the model's context."""


def context_length(config: Any) -> int | None:
    """The number of positions the model was made for (``max_position_embeddings`` or its equivalent); None
    when its config does not say."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in _CONTEXT_FIELDS:
        value = getattr(text, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def slot_bytes(model: torch.nn.Module) -> int:
    """Bytes one cache slot takes: a key and a value per layer and key/value head, the slot's token id, and its
    column of the visibility rows (eight threads to begin with)."""
    config = model.config.get_text_config()
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = next(model.parameters()).element_size()
    return config.num_hidden_layers * 2 * heads * head_dim * element + 8 + 8


def check_budget(model: torch.nn.Module, *, prompt: int, budget: int, forced: int, slots: int) -> None:
    """Refuse a run whose ``prompt`` tokens (and ``forced`` template tokens) fill the model's context, whose
    ``budget`` of new tokens is more than the whole context, or whose cache of ``slots`` slots would take more
    memory than the device has available. Raises ``BudgetError`` saying which limit and what would fit."""
    context = context_length(model.config)
    if context is not None:
        given = prompt + forced
        if given >= context:
            what = f"the prompt ({prompt:,} tokens)" + (f" and the template ({forced:,})" if forced else "")
            raise ContextError(
                f"{what} already {'fill' if forced else 'fills'} the model's context of {context:,} tokens"
            )
        if budget > context:
            raise BudgetError(
                f"max_new_tokens={budget:,} is more than the model's whole context of {context:,} tokens "
                f"(after this prompt, {context - given:,} are left for the answer)"
            )
    device = next(model.parameters()).device
    free = available_memory(device)
    need = slots * slot_bytes(model)
    if free is not None and need > free:
        raise BudgetError(
            f"a run of up to {slots:,} tokens needs {need / 2**30:,.1f} GiB for its cache, more than the "
            f"{free / 2**30:,.1f} GiB available on {device.type}; lower max_new_tokens"
        )
