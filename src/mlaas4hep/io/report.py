"""The :class:`Report` of a dataset: what its reads skipped, and how often they retried.

A read that fails for a transient reason (a storage restart, a timeout) is
retried, in every pass and every worker; a file or entry range that fails for
good is skipped when the configuration says ``on_error: skip``. The dataset
writes both here, and :attr:`mlaas4hep.io.Dataset.report` shows them::

    >>> not ds.report                      # nothing skipped
    True
    >>> ds.report.summary()
    {'skipped': 0, 'retries': 7, 'retry_wait_s': 6.1, 'files_retried': ['root://...']}
"""

from __future__ import annotations

from typing import Any


class Report(list[dict[str, Any]]):
    """What the reads of a dataset met: the items skipped (the list itself) and the retries.

    Iterating gives one dict per file or entry range that ``on_error: skip``
    left out (``file``, ``error``, ``type``, and ``entries`` for a range), so
    ``not ds.report`` means nothing was skipped. ``retries`` counts the retries
    of transient errors in every pass and every worker, ``retry_wait`` the
    seconds they waited, and ``retried`` holds the last of them (file, what,
    attempt, error, wait)::

        >>> ds.report.retries, len(ds.report)
        (7, 0)
        >>> ds.report.summary()
        {'skipped': 0, 'retries': 7, 'retry_wait_s': 6.1, 'files_retried': ['root://...']}
    """

    MAX_RETRIED = 1000

    def __init__(self) -> None:
        super().__init__()
        self.retries = 0
        #: Seconds spent waiting between attempts (summed over workers: they wait in parallel).
        self.retry_wait = 0.0
        self.retried: list[dict[str, Any]] = []
        self._seen: set[tuple[str, tuple[int, ...]]] = set()
        #: ``branches_policy: common``: each selected branch left out, with the files that lack it.
        self.dropped_branches: dict[str, list[str]] = {}

    def add_skip(self, entry: dict[str, Any]) -> bool:
        """List a skipped file or range, once however many passes and epochs meet it; True if new."""
        key = (str(entry.get("file")), tuple(entry.get("entries") or ()))
        if key in self._seen:
            return False
        self._seen.add(key)
        self.append(entry)
        return True

    @property
    def skipped(self) -> list[dict[str, Any]]:
        return list(self)

    def add_retries(self, events: list[dict[str, Any]]) -> None:
        self.retries += len(events)
        self.retry_wait += sum(e.get("wait", 0.0) for e in events)
        self.retried = (self.retried + list(events))[-self.MAX_RETRIED :]

    def summary(self) -> dict[str, Any]:
        out = {
            "skipped": len(self),
            "retries": self.retries,
            "retry_wait_s": round(self.retry_wait, 3),
            "files_retried": sorted({e["file"] for e in self.retried}),
        }
        if self.dropped_branches:
            out["dropped_branches"] = list(self.dropped_branches)
        return out
