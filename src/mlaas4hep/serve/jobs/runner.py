"""Where jobs run: worker processes on this machine, or a Dask cluster. Never in the server.

A job is one process, ``python -m mlaas4hep.train.job JOB_DIR`` (see
:mod:`mlaas4hep.train.job`), started in a session of its own by
:func:`supervise`, which waits for it, and ends the whole process group (the
job and anything it started) when a cancellation is asked for (the job's
``cancel`` file) or its time limit passes. The engines only differ in where
:func:`supervise` runs:

* :class:`LocalRunner`: in a thread of the server, the job's process on this machine;
* :class:`DaskRunner`: as a task of a Dask cluster (``--jobs-scheduler tcp://...``),
  the job's process on a worker; the jobs directory must be on a volume that the
  workers mount at the same path (a PVC, an NFS or EOS export), since the job
  reads its input and writes its outcome there.

(Kubernetes runs the same command in a ``Job``: ``deploy/k8s/job-template.yaml``.)

Both return :class:`concurrent.futures.Future`-like handles (``done()``,
``result()``) whose result is an :class:`Outcome` as a dict.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from ... import extras

#: Seconds between looks at the job's process, its cancel file and the clock.
POLL_S = 0.2
#: Seconds a job has to end after SIGTERM before it is killed.
GRACE_S = 3.0


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the job's process group, SIGKILL what is left after :data:`GRACE_S`."""
    for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    try:  # the leader is gone; what it started (decoding workers...) goes too
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def supervise(job_dir: str, time_limit: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the job of ``job_dir`` to its end; ``{"exit": status, "stopped": None | "cancelled" | "time limit"}``.

    Blocks: call it in a thread or as a Dask task. The job's standard output and
    error go to ``log.txt``; its process id to ``pid`` (so that a server started
    again can end a job left behind).
    """
    d = Path(job_dir).resolve()
    with open(d / "log.txt", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlaas4hep.train.job", str(d)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=d,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    (d / "pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + time_limit
    stopped = None
    while proc.poll() is None:
        if (d / "cancel").exists():
            stopped = "cancelled"
        elif time.monotonic() > deadline:
            stopped = "time limit"
        if stopped:
            break
        time.sleep(POLL_S)
    _end_group(proc)
    return {"exit": proc.returncode, "stopped": stopped}


def _job_env(cpus: int) -> dict[str, str]:
    """Thread counts of the numerical libraries: the cores the job asked for."""
    n = str(max(1, cpus))
    return {k: n for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


class Handle(Protocol):
    def done(self) -> bool: ...

    def result(self) -> Any: ...


class Runner(Protocol):
    """Starts jobs somewhere; ``name`` says where, in words."""

    name: str

    def start(self, job_dir: Path, time_limit: float, cpus: int) -> Handle: ...

    def close(self) -> None: ...


class LocalRunner:
    """Each job a process on this machine, watched by a thread of the server."""

    def __init__(self, max_running: int):
        self.name = "local processes"
        self._pool = ThreadPoolExecutor(max_running, thread_name_prefix="mlaas4hep-job")

    def start(self, job_dir: Path, time_limit: float, cpus: int) -> Future[dict[str, Any]]:
        return self._pool.submit(supervise, str(job_dir), time_limit, _job_env(cpus))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class DaskRunner:
    """Each job a task of the Dask cluster at ``address`` (its process on a worker)."""

    def __init__(self, address: str):
        Client = extras.require("distributed", "--jobs-scheduler").Client

        self.name = f"the Dask cluster at {address}"
        self.client = Client(address, timeout=10, set_as_default=False)

    def start(self, job_dir: Path, time_limit: float, cpus: int) -> Any:
        return self.client.submit(
            supervise,
            str(job_dir),
            time_limit,
            _job_env(cpus),
            pure=False,
            key=f"mlaas4hep-job-{job_dir.name}",
        )

    def close(self) -> None:
        self.client.close()


def runner_for(scheduler: str | None, max_running: int) -> Runner:
    """The engine of ``--jobs-scheduler``: none for local processes, a Dask address otherwise."""
    if not scheduler:
        return LocalRunner(max_running)
    return DaskRunner(scheduler)
