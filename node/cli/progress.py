"""A progress bar on standard error (bytes, rate, time left) for long attachment work at a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Below this, work is quick enough that a bar would only flicker.
PROGRESS_MIN_BYTES = 4 * 1024 * 1024


@contextmanager
def byte_progress(total: int, description: str) -> Iterator[Callable[[int], None] | None]:
    """Yield an ``advance(n_bytes)`` callback drawing a bar, or None when no bar is wanted
    (less than ``PROGRESS_MIN_BYTES``, or standard error is not a terminal)."""
    if total < PROGRESS_MIN_BYTES or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
