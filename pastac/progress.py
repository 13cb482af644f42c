"""Progress bars on standard error (rich), for the long-running commands."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def progress_bar(
    description: str,
    total: int,
    *,
    enabled: bool = True,
    done: int = 0,
    fields: tuple[str, ...] = (),
    transient: bool = False,
) -> Iterator[Any]:
    """A bar of ``total`` units, ``done`` already; yields ``update(advance=0, completed=None, **fields)``.
    ``fields`` are shown after the count (``"loss"`` shows ``loss {value}``). Disabled, it yields a no-op."""
    if not enabled or total <= 0:
        yield lambda *args, **kwargs: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    shown = [TextColumn(f"{name} {{task.fields[{name}]}}") for name in fields]
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *shown,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(file=sys.stderr), transient=transient) as bar:
        task = bar.add_task(description, total=total, completed=done, **dict.fromkeys(fields, "-"))

        def update(advance: int = 0, completed: int | None = None, **values: str) -> None:
            bar.update(task, advance=advance or None, completed=completed, **values)

        yield update
