"""What a run gives back: the answer (``Generation``), its threads, its figures, and the stream's events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pastac.ir.graph import ThreadGraph
from pastac.runtime.threads import FinishReason


@dataclass(frozen=True)
class Stats:
    """The figures of one run."""

    threads: int  # threads that decoded, the main one included
    steps: int  # forward passes after the prompt's
    tokens: int  # tokens the threads put in the cache (forced text and tags included)
    generated: int  # tokens the model chose
    jumped: int  # tokens fed without a step of their own: the text a tag forced (jump-forward)
    prompt_tokens: int
    max_width: int  # most threads in one step
    wall_s: float
    prefill_s: float
    decode_s: float
    tokens_per_s: float  # tokens / decode_s
    parallelism: float  # tokens / steps: the speedup over one token per step that the run achieved
    theoretical_speedup: float  # the annotated answer's tokens / its critical path
    kv_bytes: int  # keys and values of the slots used
    kv_peak_bytes: int  # the most keys and values held at once
    kv_capacity_bytes: int  # the preallocated cache
    cache_growths: int
    warnings: int

    def to_json(self) -> dict[str, Any]:
        """The figures under their names."""
        return dict(self.__dict__)

    def line(self) -> str:
        """One line for a person: tokens, steps, threads, speed and speedups."""
        return (
            f"{self.tokens} tokens in {self.steps} steps by {self.threads} thread"
            f"{'s' if self.threads != 1 else ''} (max {self.max_width} at once); {self.tokens_per_s:.1f} tokens/s, "
            f"{self.wall_s:.2f} s wall; parallelism {self.parallelism:.2f}, theoretical speedup "
            f"{self.theoretical_speedup:.2f}"
        )


@dataclass(frozen=True)
class ThreadResult:
    """One thread of an answer: what it wrote and why it ended."""

    id: int
    parent: int | None  # None for the main thread
    topic: str | None  # its promise's topic (None for the main thread)
    text: str  # its own text, without its tags and its children's text
    token_ids: tuple[int, ...]  # the tokens it placed in the cache, tags included, in order
    finish_reason: FinishReason | None  # None only for a thread forked but never started
    steps: tuple[int, int]  # its first and last step (0 is the prompt's)


@dataclass(frozen=True)
class Generation:
    """An answer: the stitched text, the annotated text, its token ids, why it ended, its threads and figures."""

    text: str  # the stitched answer: each promise replaced by its thread's text, tags removed
    annotated: str  # the answer with its Pasta-Lang tags, each async block after its promise
    token_ids: tuple[int, ...]  # the answer's tokens in the annotated text's order, tags included
    finish_reason: FinishReason  # length when a budget cut any thread, interrupted when stopped early, else stop
    threads: dict[int, ThreadResult]  # by thread id, the main one (0) first
    graph: ThreadGraph
    stats: Stats
    warnings: tuple[str, ...] = ()
    activity: tuple[tuple[int, int, int], ...] = ()  # (step, thread, tokens placed); step 0 is the prompt's
    step_times: tuple[tuple[float, float], ...] = ()  # per step: start and end, seconds from the run's start

    def to_json(self) -> dict[str, Any]:
        """The answer as JSON: text, annotated text, token ids, finish reason, threads, stats and warnings."""
        return {
            "text": self.text,
            "annotated": self.annotated,
            "token_ids": list(self.token_ids),
            "finish_reason": str(self.finish_reason),
            "threads": [
                {
                    "id": t.id,
                    "parent": t.parent,
                    "topic": t.topic,
                    "text": t.text,
                    "finish_reason": None if t.finish_reason is None else str(t.finish_reason),
                    "tokens": len(t.token_ids),
                }
                for t in self.threads.values()
            ],
            "stats": self.stats.to_json(),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class StepEvent:
    """What one decode step added: each thread's new text, and the stitched answer so far."""

    step: int
    text: str  # the stitched answer so far, in reading order (children's text where their promises stand)
    deltas: dict[int, str]  # per thread, the text it wrote in this step
    status: dict[int, str]  # per thread
    parents: dict[int, int | None]
    topics: dict[int, str | None]


@dataclass(frozen=True)
class DoneEvent:
    """The last event of a stream: the whole answer."""

    result: Generation
