"""Dataset tools: a reproducible instruction set, annotators that turn plain responses into Pasta-Lang, and
the steps of ``pastac data`` that build training data from them.

``prompts`` builds the prompts (with a fixed train/validation/test split); ``annotate`` rewrites a response
with promise/async/sync tags, by structure (``StructuralAnnotator``) or with a language model
(``LLMAnnotator``), and ``validate`` checks that an annotation is strict Pasta-Lang that renders back to
the response.

The pipeline's steps, one module each, all reading and writing JSONL through ``pastac.jsonl``:
``prompts.write_prompts``, ``responses`` (the base model's answers), ``importing`` (pairs of one's own),
``annotate.records``, ``filtering``, ``card`` (the data card) and ``build`` (all of them into one folder);
``step`` holds what they share (``StepResult``, ``PipelineError``).
"""

from pastac.data.annotate import (
    DEFAULT_FEW_SHOT,
    Annotation,
    Annotator,
    LLMAnnotator,
    StructuralAnnotator,
    count_promises,
    openai_generate,
    validate,
)
from pastac.data.prompts import (
    CATEGORIES,
    FORKABLE,
    SPLITS,
    PromptRecord,
    assign_split,
    build_prompts,
    normalise,
    read_jsonl,
    write_jsonl,
)

__all__ = [
    "CATEGORIES",
    "DEFAULT_FEW_SHOT",
    "FORKABLE",
    "SPLITS",
    "Annotation",
    "Annotator",
    "LLMAnnotator",
    "PromptRecord",
    "StructuralAnnotator",
    "assign_split",
    "build_prompts",
    "count_promises",
    "normalise",
    "openai_generate",
    "read_jsonl",
    "validate",
    "write_jsonl",
]
