"""Templates: Pasta-Lang whose main-thread text is given and whose promises the model fulfils."""

from __future__ import annotations

from typing import Any

from pastac.grammar import check
from pastac.grammar.ast import Async, Document, Promise, Sync, Text
from pastac.grammar.diagnostics import format_text
from pastac.grammar.printer import to_source


class InputError(ValueError):
    """A prompt, template or replayed document that cannot be used (the message says where and why)."""


def template_chunks(
    source: str, tokenizer: Any, *, tags: bool = True, filename: str = "<template>"
) -> list[tuple[list[int], str]]:
    """A template's main-thread text as (tokens, text) chunks, each ending at a promise or a sync.

    A template is Pasta-Lang whose promises have no ``<async>`` block: the model
    writes them.  Any other error is an ``InputError`` with the diagnostics.
    Without ``tags`` the tags are scanned (so threads fork and join) but put no
    tokens in the context; a chunk left without tokens joins the one before."""
    result = check(source, mode="strict", filename=filename)
    errors = [d for d in result.errors if d.code != "E304"]
    if errors or result.document is None:
        raise InputError("the template has errors:\n" + format_text(errors, source, filename))
    chunks: list[tuple[list[int], str]] = []
    tokens: list[int] = []
    text: list[str] = []
    for node in result.document.body:
        match node:
            case Async():
                raise InputError(
                    f"{filename}:{node.span.start}: a template's promises are fulfilled by the model; "
                    "remove the <async> block"
                )
            case Text(value=value):
                piece = value
            case Promise() | Sync():
                piece = to_source(Document((node,)))
        if tags or isinstance(node, Text):
            tokens.extend(tokenizer.encode(piece, add_special_tokens=False))
        text.append(piece)
        if isinstance(node, Promise | Sync):
            if tokens or not chunks:
                chunks.append((tokens, "".join(text)))
            else:
                chunks[-1] = (chunks[-1][0], chunks[-1][1] + "".join(text))
            tokens, text = [], []
    if tokens or text:
        chunks.append((tokens, "".join(text)))
    return chunks
