"""Prompts as the model reads them: the token ids a user prompt is prefilled with.

The same function lays out the prompts of training (``pastac.train.data``) and of decoding (the runtime,
``pastac data responses``), so that a model trained on a layout is prompted with that layout.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


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
