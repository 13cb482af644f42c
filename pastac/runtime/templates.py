"""Templates: Pasta-Lang whose main-thread text is given and whose promises the model fulfils.

What a template may hold is the grammar's template mode (``check(..., mode="template")``, spec §7.4), the
check ``pastac check --template`` makes: a template is used only when that check finds no error.
"""

from __future__ import annotations

from typing import Any, assert_never

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
    writes them.  An error of template mode (a block included) is an ``InputError``
    with the diagnostics.  Without ``tags`` the tags are scanned (so threads fork
    and join) but put no tokens in the context; a chunk left without tokens joins
    the one before."""
    result = check(source, mode="template", filename=filename)
    if result.errors:
        raise InputError("the template has errors:\n" + format_text(result.errors, source, filename))
    chunks: list[tuple[list[int], str]] = []
    tokens: list[int] = []
    text: list[str] = []
    for node in result.document.body:
        match node:
            case Async():  # E307, or E303 without a promise: errors of template mode
                raise AssertionError("template mode let an <async> block through")
            case Text(value=value):
                piece = value
            case Promise() | Sync():
                piece = to_source(Document((node,)))
            case _:
                assert_never(node)
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
