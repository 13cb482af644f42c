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

# Imported on first use (as ``pastac``'s own names that need torch are): ``pastac data``'s argument parser is
# built with every command line, and the language commands should not pay for the annotators' imports.
_LAZY = {
    **dict.fromkeys(
        (
            "DEFAULT_FEW_SHOT",
            "Annotation",
            "Annotator",
            "LLMAnnotator",
            "StructuralAnnotator",
            "count_promises",
            "openai_generate",
            "validate",
        ),
        "pastac.data.annotate",
    ),
    **dict.fromkeys(
        (
            "CATEGORIES",
            "FORKABLE",
            "SPLITS",
            "PromptRecord",
            "assign_split",
            "build_prompts",
            "normalise",
            "read_jsonl",
            "write_jsonl",
        ),
        "pastac.data.prompts",
    ),
}

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


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pastac.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
