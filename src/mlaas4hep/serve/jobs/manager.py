"""The jobs' queue: admission with quotas, starting and watching jobs, installing what they trained.

:class:`JobManager` is what the routes (:mod:`.routes`) call. It knows nothing
of HTTP: a caller is a :class:`~mlaas4hep.serve.identity.User`, and what goes
wrong is a domain error of :mod:`mlaas4hep.serve.errors`.

* :meth:`JobManager.submit` checks the request (resources within the server's
  limits, the user's queue not full) and writes the job, ``queued``, at once;
* a loop (:meth:`JobManager.run`, started with the app) ticks four times a
  second in the process holding the jobs directory's scheduler lock: it ends
  queued jobs whose cancellation was asked for, starts queued jobs, oldest
  first, while fewer than ``--jobs-running`` run and their user has fewer than
  ``--jobs-per-user`` running, and finishes the jobs whose process ended;
* a finished job's bundle is installed in the repository under the job's name
  (a new version), with ``trained_by`` (user and job) in its ``bundle.json``:
  every server process and replica on the repository serves it at once;
* a server started again finds the jobs that were running when it stopped:
  their process is ended (if it survived) and they are queued again, to
  continue from their last checkpoint (the epoch they reached), at most
  :data:`MAX_STARTS` starts in all; then, or with a Dask scheduler (whose task
  may still run elsewhere), they are reported ``failed`` with that reason.
  Queued jobs stay queued. A server that stops cleanly (a rolling restart)
  ends its running jobs the same way and queues them again.

Users see and cancel their own jobs; the operator (the server's token) all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...bundle_archive import pack_directory
from ...errors import Mlaas4hepError
from ..config import ServeConfig
from ..errors import Forbidden, InvalidRequest, Overloaded
from ..identity import User
from ..inventory import check_name
from ..repository import Repository
from .runner import Handle, Runner, runner_for
from .store import FINAL, JobStore, age_s, now

log = logging.getLogger("mlaas4hep.serve")
TICK_S = 0.25
DEVICES = ("cpu", "cuda", "auto")
#: How many times a job is started before a server stopping under it fails it.
MAX_STARTS = 3
#: The memory of a job that asks for none, GB (at most --jobs-max-memory-gb).
DEFAULT_MEMORY_GB = 4.0


@dataclass
class Submission:
    """A job as submitted: ``kind`` ``"config"`` (``files``: config.yaml, model.py) or ``"folder"``."""

    kind: str
    files: dict[str, bytes]
    name: str | None = None
    cpus: int = 1
    memory_gb: float | None = None
    device: str = "cpu"
    time_limit: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class JobManager:
    """The jobs of one server (see the module docstring)."""

    def __init__(self, config: ServeConfig, repo: Repository):
        self.config, self.repo = config, repo
        self.store = JobStore(config.jobs_path)
        self._runner: Runner | None = None
        self._running: dict[str, tuple[Handle, str]] = {}  # job id -> (handle, user), in this process
        self._recovered = False
        self._ticker = ThreadPoolExecutor(1, thread_name_prefix="mlaas4hep-jobs")
        self._task: asyncio.Task[None] | None = None

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            self._runner = runner_for(self.config.jobs_scheduler, self.config.jobs_running)
        return self._runner

    # ------------------------------------------------------------ what the routes call
    def submit(self, user: User, sub: Submission) -> dict[str, Any]:
        """Check and queue a job; its record (state ``queued``)."""
        c = self.config
        if not 1 <= sub.cpus <= c.jobs_max_cpus:
            raise InvalidRequest(f"cpus must be from 1 to {c.jobs_max_cpus} on this server, not {sub.cpus}")
        memory = sub.memory_gb if sub.memory_gb is not None else min(DEFAULT_MEMORY_GB, c.jobs_max_memory_gb)
        if not 0 < memory <= c.jobs_max_memory_gb:
            raise InvalidRequest(
                f"memory must be at most {c.jobs_max_memory_gb:g} GB on this server, not {memory:g}"
            )
        limit = sub.time_limit if sub.time_limit is not None else c.jobs_time_limit
        if not 0 < limit <= c.jobs_time_limit:
            raise InvalidRequest(
                f"time_limit must be at most {c.jobs_time_limit:g} s on this server, not {limit:g}"
            )
        device = sub.device or "cpu"
        if device not in DEVICES and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise InvalidRequest(f"device must be cpu, cuda, cuda:N or auto, not {device[:40]!r}")
        name = check_name(sub.name or _default_name(sub))
        self._check_owner(user, name)
        waiting = sum(1 for r in self.store.all() if r["user"] == user.name and r["state"] == "queued")
        if waiting >= c.jobs_queued_per_user:
            raise Overloaded(
                f"{user.name} already has {waiting} jobs waiting (the most this server queues per user): "
                "wait for them or cancel some",
                retry_after=60,
            )
        job_id = self.store.new_id()
        record = {
            "id": job_id,
            "name": name,
            "user": user.name,
            "operator": user.operator,
            "kind": sub.kind,
            "state": "queued",
            "created": now(),
            "started": None,
            "finished": None,
            "resources": {"cpus": sub.cpus, "memory_gb": memory, "device": device, "time_limit_s": limit},
            "error": None,
            "model": None,
        }
        spec = {
            "id": job_id,
            "kind": sub.kind,
            "device": device,
            "cpus": sub.cpus,
            "memory_gb": memory,
            "data_dirs": [str(Path(d).resolve()) for d in c.data_dir],
            "allow_remote": [h.lower() for h in c.allow_remote],
            "no_remote": c.no_remote,
            # the user's own file names, for the messages
            "names": {
                "config.yaml": Path(str(sub.extra.get("config_filename") or "config.yaml")).name,
                "model.py": Path(str(sub.extra.get("model_filename") or "model.py")).name,
            },
        }
        self.store.create(record, spec, sub.files)
        log.info("job %s (%s) queued by %s", job_id, name, user.name)
        return self.view(record)

    def list(self, user: User) -> list[dict[str, Any]]:
        """The user's jobs (every job for the operator), newest first."""
        return [self.view(r) for r in reversed(self.store.all()) if user.operator or r["user"] == user.name]

    def get(self, user: User, job_id: str) -> dict[str, Any]:
        return self.view(self._own(user, job_id))

    def cancel(self, user: User, job_id: str) -> dict[str, Any]:
        """Ask for the job's end (its processes are ended by the scheduler within a second)."""
        record = self._own(user, job_id)
        if record["state"] not in FINAL:
            self.store.ask_cancel(job_id)
        return self.view(record)

    def log_path(self, user: User, job_id: str) -> Path:
        self._own(user, job_id)
        return self.store.log_path(job_id)

    def bundle(self, user: User, job_id: str) -> tuple[str, bytes]:
        """The trained bundle as a ``.tar.gz``, and its file name."""
        record = self._own(user, job_id)
        path = self.store.bundle_dir(job_id)
        if record["state"] != "succeeded" or not path.is_dir():
            raise InvalidRequest(f"job {job_id} has no bundle: it is {record['state']}")
        return f"{record['name']}-{job_id}.tar.gz", pack_directory(path)

    def view(self, record: dict[str, Any]) -> dict[str, Any]:
        """A record as users see it: with the last epoch's progress and the queue position."""
        out = dict(record)
        out["progress"] = self.store.progress(record["id"])
        return out

    def _own(self, user: User, job_id: str) -> dict[str, Any]:
        record = self.store.get(job_id)
        if not user.operator and record["user"] != user.name:
            raise Forbidden(f"job {job_id} belongs to another user")
        return record

    # ------------------------------------------------------------ the scheduler
    async def run(self) -> None:
        """Tick until cancelled (the app's lifespan starts and stops it)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(self._ticker, self.tick)
            except Exception:  # a bug must not stop the queue
                log.exception("jobs: tick failed")
            await asyncio.sleep(TICK_S)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        """End this process's running jobs (reported failed: the server stopped) and the loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.get_running_loop().run_in_executor(self._ticker, self._shutdown)
        self._ticker.shutdown(wait=False)

    def _shutdown(self) -> None:
        cancelled = {job_id for job_id in self._running if self.store.cancel_asked(job_id)}
        for job_id in list(self._running):
            self.store.ask_cancel(job_id)
        deadline = time.monotonic() + 8
        while self._running and time.monotonic() < deadline:
            for job_id, (handle, _) in list(self._running.items()):
                if handle.done():
                    del self._running[job_id]
                    if job_id in cancelled:  # by its user, just before
                        self._finish(job_id, handle)
                    else:
                        self._interrupted(
                            self.store.get(job_id), "the server stopped while the job was running"
                        )
            time.sleep(0.05)
        if self._runner is not None:
            self._runner.close()
        self.store.unlock()

    def tick(self) -> None:
        """One round of the scheduler (blocking; in the process holding the lock only)."""
        if not self.store.try_lock():
            return
        if not self._recovered:
            self._recover()
            self._recovered = True
        for job_id, (handle, _) in list(self._running.items()):
            if handle.done():
                del self._running[job_id]
                self._finish(job_id, handle)
        users = Counter(user for _, user in self._running.values())
        keep_s = self.config.jobs_keep_days * 86400
        for r in self.store.all():
            if keep_s and r["state"] in FINAL and age_s(r.get("finished") or r["created"]) > keep_s:
                self.store.remove(r["id"])
                log.info(
                    "job %s removed: finished more than %g days ago", r["id"], self.config.jobs_keep_days
                )
                continue
            if r["state"] != "queued":
                continue
            if self.store.cancel_asked(r["id"]):
                self.store.update(
                    r["id"], state="cancelled", finished=now(), error="cancelled before it started"
                )
                continue
            if (
                len(self._running) >= self.config.jobs_running
                or users[r["user"]] >= self.config.jobs_per_user
            ):
                continue
            self._start(r)
            users[r["user"]] += 1

    def _start(self, r: dict[str, Any]) -> None:
        res = r["resources"]
        try:
            handle = self.runner.start(self.store.dir(r["id"]), res["time_limit_s"], res["cpus"])
        except Exception as err:  # the engine is unreachable (a Dask scheduler down)
            self._fail(r["id"], f"cannot start the job on {self.config.jobs_scheduler}: {err}")
            return
        self._running[r["id"]] = (handle, r["user"])
        starts = int(r.get("starts", 0)) + 1
        self.store.update(r["id"], state="running", started=now(), engine=self.runner.name, starts=starts)
        log.info("job %s started on %s", r["id"], self.runner.name)

    def _fail(self, job_id: str, error: str, **more: Any) -> None:
        self.store.update(job_id, state="failed", finished=now(), error=error, **more)
        self.store.remove_work(job_id)

    def _finish(self, job_id: str, handle: Handle) -> None:
        record = self.store.get(job_id)
        try:
            outcome = handle.result()
        except Exception as err:
            self._fail(job_id, f"the job's engine failed: {type(err).__name__}: {err}")
            return
        if outcome["stopped"] == "cancelled":
            self.store.update(job_id, state="cancelled", finished=now(), error="cancelled while running")
            self.store.remove_work(job_id)
            return
        if outcome["stopped"] == "time limit":
            limit = record["resources"]["time_limit_s"]
            self._fail(job_id, f"stopped after its time limit of {limit:g} s")
            return
        result = self.store.result(job_id)
        if result is None:
            last = self.store.last_log_line(job_id)
            self._fail(
                job_id,
                f"the job's process ended with status {outcome['exit']} and no result"
                + (f"; its log ends with: {last}" if last else " (killed, or out of its memory?)"),
            )
            return
        if result.get("state") != "succeeded":
            self._fail(job_id, str(result.get("error") or "failed"), exit_status=result.get("exit_status"))
            return
        try:
            name, version = self._install(record)
        except Mlaas4hepError as err:
            self._fail(job_id, f"the trained bundle was not installed: {err}")
            return
        self.store.update(
            job_id,
            state="succeeded",
            finished=now(),
            metrics=result.get("metrics"),
            model={"name": name, "version": version},
        )
        self.store.remove_work(job_id)
        log.info("job %s succeeded: model %s version %d", job_id, name, version)

    def _check_owner(self, user: User, name: str) -> None:
        """A user's job may add versions only to a new model or to one the same user trained."""
        if user.operator or name not in self.repo.names():
            return
        newest = self.repo.versions(name)[-1]
        owner = self.repo.meta(name, newest).get("trained_by", {}).get("user")
        if owner != user.name:
            whose = f"user {owner}" if owner else "the operator"
            raise Forbidden(f"model {name!r} belongs to {whose}: give the job another name")

    def _install(self, record: dict[str, Any]) -> tuple[str, int]:
        self._check_owner(User(record["user"], bool(record.get("operator"))), record["name"])
        path = self.store.bundle_dir(record["id"])
        files = {f.name: f.read_bytes() for f in path.iterdir() if f.is_file()}
        meta = json.loads(files["bundle.json"])
        meta["trained_by"] = {"user": record["user"], "job": record["id"]}
        files["bundle.json"] = json.dumps(meta, indent=1).encode()
        (path / "bundle.json").write_bytes(files["bundle.json"])  # what GET /jobs/{id}/bundle gives
        return self.repo.install(files, record["name"])

    def _recover(self) -> None:
        """Jobs left running by a server that stopped: end what survived, queue them again."""
        for r in self.store.all():
            if r["state"] != "running" or r["id"] in self._running:
                continue
            if self.store.cancel_asked(r["id"]):  # by its user: it was ending anyway
                _end_leftover(self.store.dir(r["id"]))
                self.store.update(r["id"], state="cancelled", finished=now(), error="cancelled while running")
                self.store.remove_work(r["id"])
                continue
            self.store.ask_cancel(r["id"])  # a Dask task still running ends its process on seeing it
            _end_leftover(self.store.dir(r["id"]))
            self._interrupted(r, f"the server stopped while the job was running (started {r['started']})")

    def _interrupted(self, r: dict[str, Any], why: str) -> None:
        """Queue a job its server interrupted again (it resumes from its checkpoint), or fail it."""
        starts = int(r.get("starts", 1))
        if self.config.jobs_scheduler or starts >= MAX_STARTS:
            reason = "" if self.config.jobs_scheduler else f", {starts} times"
            self._fail(r["id"], f"{why}{reason}: submit it again")
            log.warning("job %s was running when the server stopped: reported failed", r["id"])
            return
        self.store.requeue(r["id"])
        self.store.update(r["id"], state="queued", started=None, interrupted=why)
        log.warning("job %s was running when the server stopped: queued again", r["id"])


def _default_name(sub: Submission) -> str:
    models = sorted(n for n in sub.files if n.endswith(".py"))
    stem = sub.extra.get("model_filename") or (models[0] if models else "model")
    return Path(str(stem)).stem or "model"


def _end_leftover(job_dir: Path) -> None:
    """Kill the process group of a job process that outlived its server (found by its ``pid`` file)."""
    try:
        pid = int((job_dir / "pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if str(job_dir).encode() not in cmdline:  # the pid was reused by another process
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
