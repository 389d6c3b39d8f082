"""A rich progress bar on stderr, shown only when stderr is a terminal (or when asked)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

Advance = Callable[[int], None]


@contextmanager
def progress_bar(total: int, description: str, enabled: bool | None = None) -> Iterator[Advance]:
    """Yield `advance(n)`; `enabled=None` means "only when stderr is a TTY"."""
    show = sys.stderr.isatty() if enabled is None else enabled
    if not show:
        yield lambda _n: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
