"""``pastac run --live``: the threads filling in side by side, in the terminal (rich)."""

from __future__ import annotations

from typing import TextIO

from rich.columns import Columns
from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from pastac.runtime.engine import StepEvent

_STYLE = {"running": "green", "queued": "yellow", "blocked": "magenta", "closing": "cyan", "done": "dim"}


class LiveView:
    """One panel per thread (its own text, the tail that fits), titled with its topic and state."""

    def __init__(self, stream: TextIO, *, width: int = 44, lines: int = 8) -> None:
        self.console = Console(file=stream)
        self.texts: dict[int, str] = {}
        self.width, self.lines = width, lines
        self.live = Live(console=self.console, refresh_per_second=8, transient=False)
        self.live.start()

    def update(self, event: StepEvent) -> None:
        """Add the step's new text to its threads and redraw a panel per live thread with its state."""
        for thread, text in event.deltas.items():
            self.texts[thread] = self.texts.get(thread, "") + text
        panels = []
        for thread, status in event.status.items():
            topic = event.topics.get(thread) or "main"
            tail = self.texts.get(thread, "")[-self.width * self.lines :]
            panels.append(
                Panel(
                    Text(tail),
                    title=f"t{thread} {topic}",
                    subtitle=status,
                    width=self.width,
                    border_style=_STYLE.get(status, "white"),
                )
            )
        self.live.update(Columns(panels), refresh=False)

    def stop(self) -> None:
        """Stop the display; the last frame stays on the terminal."""
        self.live.stop()
