"""The data steps on Ray workers (``pastac data responses|annotate --ray``): a responder and an annotator that
spread their work over the workers of a cluster (``pastac.scale``), each of which loads the model once.

They are drop-in parts of the one-process steps: ``RayResponder`` has the ``stream`` of a ``Responder``, so that
``write_responses`` appends each answer as it comes, in order; ``RayAnnotator`` has the ``stream`` that
``annotate_records`` uses in the same way.  Resuming, the records' fields and the checks of a step are the
step's own, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from pastac.data.annotate.annotation import Annotation, Annotator
from pastac.data.responses import Responder
from pastac.scale import RayOptions, ordered


def _respond(responder: Responder, prompts: Sequence[str]) -> list[tuple[str, bool]]:
    return responder(prompts)


class RayResponder:
    """Answers prompts on Ray workers, ``batch_size`` prompts per call, each worker's responder made once by
    ``make`` (a picklable function: it loads the model there)."""

    def __init__(self, make: Callable[[], Responder], options: RayOptions, *, batch_size: int = 16) -> None:
        self.make, self.options, self.batch_size = make, options, batch_size

    def stream(self, prompts: Sequence[str], keys: Sequence[str] | None = None) -> Iterator[tuple[str, bool]]:
        """The answers to ``prompts`` in their order, each batch's as soon as it and those before it are done."""
        batches = [list(prompts[i : i + self.batch_size]) for i in range(0, len(prompts), self.batch_size)]
        for _, answers in ordered(batches, self.make, _respond, self.options):
            yield from answers

    def __call__(self, prompts: Sequence[str]) -> list[tuple[str, bool]]:
        """The answers to ``prompts``, in their order (``stream``, all at once)."""
        return list(self.stream(prompts))


def _annotate(annotator: Annotator, pair: tuple[str, str]) -> Annotation:
    return annotator.annotate(*pair)


class RayAnnotator:
    """Annotates on Ray workers, each worker's annotator made once by ``make`` (a picklable function); its
    ``name`` is the annotator's, recorded with every annotation as the one-process step records it."""

    def __init__(self, make: Callable[[], Annotator], name: str, options: RayOptions) -> None:
        self.make, self.name, self.options = make, name, options

    def stream(self, pairs: Sequence[tuple[str, str]]) -> Iterator[Annotation]:
        """The annotations of the (prompt, response) pairs in their order, each as soon as it and those before
        it are done; an annotator's error is raised after the annotations before it."""
        for _, annotation in ordered(list(pairs), self.make, _annotate, self.options):
            yield annotation

    def annotate(self, prompt: str, response: str) -> Annotation:
        """One annotation (``stream`` of one pair)."""
        (annotation,) = self.stream([(prompt, response)])  # the stream run to its end: its workers stopped
        return annotation
