"""Progress bars on a terminal, silence elsewhere (logs, CI, notebooks' pipes).

::

    from mlaas4hep import progress

    with progress.bar("specs", total=n_events) as bar:
        for chunk in chunks:
            ...
            bar.advance(len(chunk))

A bar that ends without an error ends complete: its total, when it was an
estimate, becomes the count reached.

A bar draws on standard error, and only when standard error is a terminal:
piped or redirected output, log files and CI jobs (``$CI`` set, or
``TERM=dumb``) get no control characters at all. ``$MLAAS4HEP_PROGRESS=1``
(or ``0``) forces bars on (or off); a caller's ``show=True/False`` wins over both.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class _Bar:
    def __init__(self, progress, task):
        self._p, self._t = progress, task

    def advance(self, n: float = 1, **fields) -> None:
        if self._p is not None:
            task = next((t for t in self._p.tasks if t.id == self._t), None)
            if task is not None and task.total is not None and task.completed + n > task.total:
                fields.setdefault("total", task.completed + n)  # the total was an estimate
            self._p.update(self._t, advance=n, **fields)

    def update(self, **fields) -> None:
        if self._p is not None:
            self._p.update(self._t, **fields)


def enabled(flag: bool | None = None) -> bool:
    """Whether bars are drawn: ``flag`` if given, else the environment and the terminal decide."""
    if flag is not None:
        return bool(flag)
    forced = os.environ.get("MLAAS4HEP_PROGRESS", "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    if os.environ.get("CI") or os.environ.get("TERM") == "dumb":
        return False
    return sys.stderr.isatty()


def format_rate(per_second: float | None, unit: str = "events") -> str:
    """``12,345 events/s``; ``- events/s`` before anything is measured."""
    number = "-" if per_second is None else f"{per_second:,.0f}"
    return f"{number} {unit}/s" if unit else f"{number}/s"


def _rate_column(unit: str):
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """The rate: rich's recent-window estimate, else completed / elapsed (never ``None``).

        In the first second the window may hold two updates microseconds apart (a
        cached unit arrives at once), which gave rates such as 189,128,872 events/s:
        the average since the start is shown until then.
        """

        def render(self, task) -> Text:
            settled = task.elapsed is not None and task.elapsed >= 1.0
            speed = task.finished_speed or (task.speed if settled else None)
            if speed is None and task.elapsed and task.completed:
                speed = task.completed / task.elapsed
            return Text(format_rate(speed, unit), style="progress.data.speed")

    return RateColumn()


@contextmanager
def bar(
    description: str, total: float | None, unit: str = "events", show: bool | None = None
) -> Iterator[_Bar]:
    """A rich progress bar with a rate column on standard error, or a no-op when not on a terminal."""
    if not enabled(show):
        yield _Bar(None, None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _rate_column(unit),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=False) as p:
        task = p.add_task(description, total=total, info="")
        try:
            yield _Bar(p, task)
        except BaseException:
            p.remove_task(task)  # an error message follows: no half-drawn bar above it
            raise
        done = next(t for t in p.tasks if t.id == task)
        if done.total is None or done.completed < done.total:
            # the total was an estimate (the events of an epoch less those held out for validation):
            # the work is done, so the bar ends complete (green, 303/303), not red at 303/310
            p.update(task, total=done.completed)
