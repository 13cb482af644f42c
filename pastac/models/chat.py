"""Prompts as the model reads them: the token ids a user prompt, or a conversation, is prefilled with.

The same functions lay out the prompts of training (``pastac.train.data``) and of decoding (the runtime,
``pastac data responses``), so that a model trained on a layout is prompted with that layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")


class PromptError(ValueError):
    """A conversation that cannot be laid out (the message says which message and why)."""


def checked_messages(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """``messages`` as plain dicts, each checked to be ``{"role": "system"|"user"|"assistant", "content": str}``;
    anything else raises ``PromptError`` naming the message."""
    if isinstance(messages, str) or not messages:
        raise PromptError("a conversation is a non-empty list of chat messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise PromptError(f"message {i} is not a mapping: {message!r}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES or not isinstance(content, str) or set(message) - {"role", "content"}:
            raise PromptError(
                f"message {i}: a chat message is {{'role': 'system'|'user'|'assistant', 'content': str}}, "
                f"not {dict(message)!r}"
            )
        out.append({"role": role, "content": content})
    return out


def messages_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """The token ids of a conversation laid out by the tokenizer's chat template, ending with the assistant's
    generation prompt.  ``PromptError`` for a bad message or a tokenizer without a chat template."""
    checked = checked_messages(messages)
    if not getattr(tokenizer, "chat_template", None):
        raise PromptError("the tokenizer has no chat template: pass the prompt as text")
    text = tokenizer.apply_chat_template(checked, tokenize=False, add_generation_prompt=True)
    return [int(token) for token in tokenizer(text, add_special_tokens=False)["input_ids"]]


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: str, *, chat: bool = True, system: str | None = None
) -> list[int]:
    """The token ids of a user prompt, as the model is prefilled with them.

    With ``chat`` and a tokenizer that has a chat template, the prompt is one user message (after a system
    message when ``system`` is given) laid out by the template, ending with the assistant's generation
    prompt. Otherwise the prompt (after ``system`` and a blank line, when given) is encoded as plain text.
    Either way no special tokens are added beyond what the template writes.
    """
    if chat and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages.append({"role": "user", "content": prompt})
        # Rendered to text, then encoded: the same ids as tokenize=True, which in transformers 5 returns a
        # BatchEncoding rather than a list.
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = prompt if system is None else f"{system}\n\n{prompt}"
    encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [int(token) for token in encoded]
