"""Rich progress bars for long steps, driven by a `(phase, done, total)` callback (one bar per phase)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

__all__ = ["Report", "progress_bars"]

Report = Callable[[str, int, int], None]  # (phase, done, total)


@contextmanager
def progress_bars(console=None) -> Iterator[Report]:
    """A context manager yielding a `(phase, done, total)` callback that draws one rich progress bar per phase (stderr by default)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console: Optional[Console] = console or Console(stderr=True)
    tasks: dict = {}
    with Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=not console.is_terminal) as progress:
        def report(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total)
            progress.update(tasks[phase], completed=done, total=total)

        yield report
