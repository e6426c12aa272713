"""The jobs' state on disk: one directory per job, so that jobs outlive the server.

Layout (``--jobs-dir``, by default ``REPO/.jobs``, which the repository does not list)::

    JOBS/
      .scheduler           flocked by the one process that starts and watches jobs
      {id}/
        job.json           the record: id, name, user, state, timestamps, resources, error,
                           the model and version installed (rewritten whole, by rename)
        spec.json          what the job's process runs (see mlaas4hep.train.job)
        input/             the upload
        log.txt            the job's standard output and error
        progress.json      written by the job after every epoch
        result.json        written by the job at its end
        cancel             present once a cancellation was asked for
        out/bundle/        the trained bundle

A job's ``state`` is ``queued``, ``running``, ``succeeded``, ``failed`` or
``cancelled``; the last three are final. Any server process (``--workers``,
replicas on one volume) may create a job and ask for a cancellation (the
``cancel`` file); only the process holding ``.scheduler`` moves jobs between
states (:mod:`.manager`).
"""

from __future__ import annotations

import calendar
import fcntl
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import JobNotFound

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = frozenset({"succeeded", "failed", "cancelled"})


def now() -> str:
    """An ISO 8601 UTC timestamp, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def age_s(timestamp: str) -> float:
    """Seconds since a timestamp written by :func:`now`."""
    return time.time() - calendar.timegm(time.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ"))


def _atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


class JobStore:
    """The jobs directory ``root``: create, read, update and list job records."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None

    # ------------------------------------------------------------ records
    def new_id(self) -> str:
        """A fresh job id: sortable by creation (a timestamp) and unguessable (random)."""
        return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)

    def dir(self, job_id: str) -> Path:
        if not job_id or not all(c.isalnum() or c == "-" for c in job_id) or len(job_id) > 64:
            raise JobNotFound(f"no job {job_id[:80]!r}")
        return self.root / job_id

    def create(self, record: dict[str, Any], spec: dict[str, Any], files: dict[str, bytes]) -> None:
        """Write a new job (its record last: a half-written job is never listed)."""
        d = self.dir(record["id"])
        (d / "input").mkdir(parents=True)
        for name, data in files.items():
            (d / "input" / name).write_bytes(data)
        _atomic(d / "spec.json", spec)
        _atomic(d / "job.json", record)

    def get(self, job_id: str) -> dict[str, Any]:
        try:
            record: dict[str, Any] = json.loads((self.dir(job_id) / "job.json").read_text())
        except (OSError, ValueError):
            raise JobNotFound(f"no job {job_id[:80]!r}") from None
        return record

    def update(self, job_id: str, **changes: Any) -> dict[str, Any]:
        record = self.get(job_id)
        record.update(changes)
        _atomic(self.dir(job_id) / "job.json", record)
        return record

    def all(self) -> list[dict[str, Any]]:
        """Every job, oldest first."""
        out = []
        for d in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if d.is_dir() and not d.name.startswith("."):
                try:
                    out.append(self.get(d.name))
                except JobNotFound:
                    continue
        return out

    def progress(self, job_id: str) -> dict[str, Any] | None:
        """The job's last epoch record (``progress.json``), if it has written one."""
        try:
            p: dict[str, Any] = json.loads((self.dir(job_id) / "progress.json").read_text())
            return p
        except (OSError, ValueError):
            return None

    def result(self, job_id: str) -> dict[str, Any] | None:
        try:
            r: dict[str, Any] = json.loads((self.dir(job_id) / "result.json").read_text())
            return r
        except (OSError, ValueError):
            return None

    def ask_cancel(self, job_id: str) -> None:
        (self.dir(job_id) / "cancel").touch()

    def requeue(self, job_id: str) -> None:
        """Clear what an interrupted run left (its cancel request, pid, result); keep its checkpoint."""
        for name in ("cancel", "pid", "result.json"):
            (self.dir(job_id) / name).unlink(missing_ok=True)

    def cancel_asked(self, job_id: str) -> bool:
        return (self.dir(job_id) / "cancel").exists()

    def log_path(self, job_id: str) -> Path:
        return self.dir(job_id) / "log.txt"

    def last_log_line(self, job_id: str) -> str:
        """The last line of the job's log (what a process that died without a result said last)."""
        try:
            with open(self.log_path(job_id), "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
                lines = f.read().decode(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1].strip()[:300] if lines else ""

    def bundle_dir(self, job_id: str) -> Path:
        return self.dir(job_id) / "out" / "bundle"

    def remove(self, job_id: str) -> None:
        """Remove a job whole: renamed out of the listing first, so no reader sees half of it."""
        trash = self.root / f".removed-{job_id}-{os.getpid()}"
        try:
            os.rename(self.dir(job_id), trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def remove_work(self, job_id: str) -> None:
        """Free what a finished job no longer needs (its decoded cache, checkpoint)."""
        for part in ("cache", "out/checkpoint"):
            shutil.rmtree(self.dir(job_id) / part, ignore_errors=True)

    # ------------------------------------------------------------ the scheduler's lock
    def try_lock(self) -> bool:
        """Whether this process holds (or now takes) the scheduler's lock; never blocks."""
        if self._lock_fd is not None:
            return True
        fd = os.open(self.root / ".scheduler", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def counts(self, records: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> dict[str, dict[str, int]]:
        """``{user: {state: number}}`` of ``records``."""
        out: dict[str, dict[str, int]] = {}
        for r in records:
            per = out.setdefault(r["user"], {})
            per[r["state"]] = per.get(r["state"], 0) + 1
        return out
