"""Progress bars on a terminal, silence elsewhere (logs, CI, notebooks' pipes)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class _Bar:
    def __init__(self, progress, task):
        self._p, self._t = progress, task

    def advance(self, n: float = 1, **fields) -> None:
        if self._p is not None:
            self._p.update(self._t, advance=n, **fields)

    def update(self, **fields) -> None:
        if self._p is not None:
            self._p.update(self._t, **fields)


def enabled(flag: bool | None = None) -> bool:
    return sys.stderr.isatty() if flag is None else bool(flag)


@contextmanager
def bar(
    description: str, total: float | None, unit: str = "events", show: bool | None = None
) -> Iterator[_Bar]:
    """A rich progress bar with a rate column, or a no-op when not on a terminal."""
    if not enabled(show):
        yield _Bar(None, None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(f"{unit} · {{task.speed:,.0f}}/s" if unit else ""),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, transient=False) as p:
        task = p.add_task(description, total=total, info="")
        yield _Bar(p, task)
