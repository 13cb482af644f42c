"""Annotators: rewrite a plain response as Pasta-Lang that renders back to it; the ``annotate`` step.

Every annotator answers ``annotate(prompt, response) -> Annotation`` (``annotation``). An annotation is only
useful as training data if it is strict Pasta-Lang and its rendering is the response (``validate``); every
annotator checks that before returning, and falls back to the unchanged response (no fork) or, when even that
is not valid Pasta-Lang (the response contains text that reads as a tag), to ``text=None``.

- ``structural``: ``StructuralAnnotator`` forks the parts that the response's own layout marks as
  independent: markdown sections, bold-titled blocks, numbered and bulleted lists, and (failing those) the
  middle paragraphs of a plain essay. Deterministic, no model.
- ``llm``: ``LLMAnnotator`` asks a language model (any ``str -> str`` callable; ``openai_generate`` makes one
  for an OpenAI-compatible server, through ``pastac.openai_client``), with a description of the language and a
  few examples, and keeps its answer only if it validates.
- ``records``: ``annotate_records`` and ``annotate_file``, the pipeline's step over a file of responses.
"""

from pastac.data.annotate.annotation import Annotation, Annotator, count_promises, validate
from pastac.data.annotate.layout import make_topic
from pastac.data.annotate.llm import DEFAULT_FEW_SHOT, LANGUAGE_DESCRIPTION, LLMAnnotator, openai_generate
from pastac.data.annotate.records import annotate_file, annotate_records
from pastac.data.annotate.structural import StructuralAnnotator

__all__ = [
    "DEFAULT_FEW_SHOT",
    "LANGUAGE_DESCRIPTION",
    "Annotation",
    "Annotator",
    "LLMAnnotator",
    "StructuralAnnotator",
    "annotate_file",
    "annotate_records",
    "count_promises",
    "make_topic",
    "openai_generate",
    "validate",
]
