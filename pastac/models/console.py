"""What loading a model shows on the terminal: progress on standard error, transformers' own output kept quiet.

Standard output is never written to: it belongs to the commands' results. A disabled reporter shows nothing.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from transformers.utils import logging as hf_logging

#: What tqdm progress bars look like: ``45%|████  | 9/20 [...]``, ``0it [00:00, ?it/s]``.
_PROGRESS_BAR = re.compile(r"\d+%\||\d+it \[|\d+/\d+ \[|it/s\]|s/it\]")
#: The count of a tqdm bar: ``| 120/272 [``.
_BAR_COUNT = re.compile(r"(\d+)/(\d+) \[")


class Reporter:
    """Progress on stderr with rich: while a step runs, a spinner, its message, what it last reported and the
    time so far; then one line with its duration.

    Disabled, it shows nothing. Standard output is never written to.
    """

    def __init__(self, enabled: bool) -> None:
        # Bound to the stderr of this moment, so that output redirected while a step runs does not capture
        # the spinner's own frames.
        self.console = Console(file=sys.stderr, highlight=False) if enabled else None

    @contextlib.contextmanager
    def step(self, message: str) -> Iterator[Callable[[str], None]]:
        """Show ``message`` while the block runs, then the time it took; the block is given a function that
        shows how far the step is (``update("120/272 tensors")``)."""
        if self.console is None:
            yield lambda detail: None
            return
        start = time.perf_counter()
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as shown:
            task = shown.add_task(f"{message}…")
            yield lambda detail: shown.update(task, description=f"{message}… {detail}")
        self.console.print(f"{message}: done in {time.perf_counter() - start:.1f} s", soft_wrap=True)

    def note(self, message: str) -> None:
        """Print one line."""
        if self.console is not None:
            self.console.print(message, soft_wrap=True)


class _Captured(io.StringIO):
    """What a library writes while it loads, kept; the counts of its progress bars passed to ``progress``."""

    def __init__(self, progress: Callable[[str], None] | None) -> None:
        super().__init__()
        self.progress = progress

    def write(self, text: str) -> int:
        if self.progress is not None and (counts := _BAR_COUNT.findall(text)):
            self.progress("/".join(counts[-1]))
        return super().write(text)


@contextlib.contextmanager
def quiet_transformers(progress: Callable[[str], None] | None = None) -> Iterator[None]:
    """Keep transformers' progress bars (and anything else it prints) off the terminal while it loads.

    transformers' own bars are switched off; the GGUF reader draws one with tqdm directly, so standard
    output and error are also captured, and what they received apart from progress bars (warnings) is
    passed on to standard error afterwards. ``progress`` is given the count of such a bar as it moves
    (``"120/272"``), for a ``Reporter`` step to show.
    """
    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    captured = _Captured(progress)
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            yield
    finally:
        if bars_were_enabled:
            hf_logging.enable_progress_bar()
        kept = [line for line in re.split(r"[\r\n]+", captured.getvalue()) if line.strip()]
        kept = [line for line in kept if not _PROGRESS_BAR.search(line)]
        if kept:
            print("\n".join(kept), file=sys.stderr)
