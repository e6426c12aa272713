"""Dask distributed as an executor: the passes run on a cluster's workers.

:func:`dask_executor` connects to a scheduler and returns a :class:`DaskExecutor`,
which :func:`mlaas4hep.io.executor.ordered_map` drives like a process pool:

* every task is submitted with ``pure=False`` (a fresh key, so two identical
  submissions are never merged) and ``retries=`` (re-run when it raises);
  tasks lost with a worker that dies are re-run by the scheduler itself;
* a bounded number of futures is in flight and results are taken in order, so
  the client's memory stays bounded; dropping a future releases its result on
  the cluster, and dropping the iterator cancels what is still queued;
* workers may be on other machines, so ``shares_filesystem`` is False: the
  workers send decoded arrays back and the client writes its cache locally;
* the specs pass is a tree-reduce on the workers (:meth:`DaskExecutor.reduce_unit_stats`).

``scheduler`` may be

* an address: ``tcp://10.0.0.1:8786``, ``tls://host:8786`` (TLS settings come
  from the Dask configuration, as on coffea-casa), ``ws://`` ...;
* a scheduler file written by ``dask scheduler --scheduler-file FILE``
  (HPC batch systems, dask-jobqueue, dask-mpi);
* ``gateway:NAME`` (or ``gateway:`` for the only running cluster) for a Dask
  Gateway cluster, found with the site's gateway settings;
* nothing: a private ``LocalCluster`` of ``workers`` single-threaded processes.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from .. import extras
from ..errors import ConfigError, Mlaas4hepError
from ..io.executor import default_workers
from . import reduce as reduce_mod

log = logging.getLogger(__name__)

#: Re-runs of a task that raised (a transient read error that outlived the reader's own retries).
DEFAULT_RETRIES = 2

#: Settings for the workers of the clusters mlaas4hep starts (docs/scale.md gives
#: them as a YAML file for clusters started by hand):
#:
#: * Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` for its workers, which
#:   turns off glibc's dynamic mmap threshold: every array of a decoded chunk is
#:   then a fresh mmap and page faults, and decoding ran 30-40% slower;
#: * the statistical profiler samples the decoding thread every 10 ms.
#: Seconds that closing a client or a cluster we started may take at exit.
CLOSE_TIMEOUT_S = 10

WORKER_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
}

_EXECUTORS: dict[tuple, DaskExecutor] = {}
_LOCK = threading.Lock()


class DaskExecutor(Executor):
    """A ``distributed.Client`` behind the small executor interface of :mod:`mlaas4hep.io.executor`."""

    #: Workers may run on other machines: never hand them local paths to write to.
    shares_filesystem = False

    def __init__(self, client, cluster=None, workers: int | None = None, retries: int = DEFAULT_RETRIES):
        self.client = client
        self.cluster = cluster  # owned (closed with the executor), or None
        self.requested_workers = workers
        self.retries = int(retries)
        #: per worker: [tasks, events, busy seconds] of the tasks whose results were taken
        self.worker_totals: dict[str, list[float]] = {}
        self._stats_lock = threading.Lock()
        self._bound: tuple[Any, Any] | None = None  # (partial, the future holding it on the cluster)

    # ---------------------------------------------------------------- executor
    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> TimedFuture:  # type: ignore[override]  # a Future-like wrapper
        if isinstance(fn, functools.partial):
            # its bound arguments (a UnitReader lists every URL) go to the cluster once per pass
            if self._bound is None or self._bound[0] is not fn:
                self._bound = (fn, self.share(fn))
            fn = self._bound[1]
        fut = self.client.submit(_timed, fn, *args, pure=False, retries=self.retries, **kwargs)
        return TimedFuture(fut, self)

    def share(self, value: Any):
        """A future holding ``value`` on the cluster, for many tasks to use.

        Unlike ``scatter``, the value is the result of a task, so the scheduler
        recomputes it if the workers holding it die.
        """
        return self.client.submit(_identity, value, pure=False)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        # bounded: on a loaded machine LocalCluster.close() without a timeout was seen to wait
        # for ever at exit (after distributed's "_correct_state_internal ... TimeoutError")
        quiet = logging.getLogger("distributed")
        level = quiet.level
        if self.cluster is not None and not log.isEnabledFor(logging.DEBUG):
            # retiring our own workers is no news ("Removing worker ... lose computed tasks")
            quiet.setLevel(logging.ERROR)
        try:
            self.client.close(timeout=CLOSE_TIMEOUT_S)
        finally:
            try:
                if self.cluster is not None:
                    self.cluster.close(timeout=CLOSE_TIMEOUT_S)
            finally:
                quiet.setLevel(level)

    @property
    def nworkers(self) -> int:
        """Task slots on the cluster now (threads of all workers), or the number asked for when larger.

        Sets how many tasks are kept in flight; on an adaptive cluster that is
        still scaling up, ``workers:`` in the configuration gives the target.
        """
        try:
            slots = sum(self.client.nthreads().values())
        except Exception:  # the scheduler is unreachable: the next submit says why
            slots = 0
        return max(1, slots, int(self.requested_workers or 0))

    # ---------------------------------------------------------------- specs
    def reduce_unit_stats(
        self,
        reader,
        names: list[str],
        units: list,
        skip: bool,
        advance: Callable[[int], None] | None = None,
        split_every: int = 8,
    ):
        """The specs pass as a tree-reduce on the workers; returns a :class:`~mlaas4hep.scale.reduce.StatsPartial`.

        With ``skip`` False the first unit that fails raises its error here and
        the rest of the reduction is cancelled.
        """
        from distributed import as_completed

        client = self.client
        reader_f = self.share(reader)

        def submit(fn, *args):
            return client.submit(fn, *args, pure=False, retries=self.retries)

        leaves = [submit(reduce_mod.stats_leaf, reader_f, names, skip, u) for u in units]
        size = {f.key: u.stop - u.start for f, u in zip(leaves, units)}
        root = reduce_mod.tree_reduce(submit, leaves, split_every)
        try:
            for fut in as_completed(leaves, loop=client.loop):
                if fut.status == "error":
                    fut.result()  # raises the task's own exception
                if advance is not None:
                    advance(size[fut.key])
            out = root.result()
        except BaseException:
            client.cancel([root])
            raise
        self._add_worker_stats(out.workers)
        return out

    # ---------------------------------------------------------------- metrics
    def _add_worker_stats(self, per_worker: dict[str, list[float]]) -> None:
        with self._stats_lock:
            for w, v in per_worker.items():
                acc = self.worker_totals.setdefault(w, [0, 0, 0.0])
                for i in range(3):
                    acc[i] += v[i]

    def worker_stats(self, reset: bool = False) -> dict[str, dict[str, float]]:
        """Tasks, events, busy seconds and events/s (per busy second) of each worker so far."""
        with self._stats_lock:
            out = {
                w: {"tasks": int(t), "events": int(n), "busy_s": b, "events_per_s": n / b if b > 0 else 0.0}
                for w, (t, n, b) in sorted(self.worker_totals.items())
            }
            if reset:
                self.worker_totals.clear()
        return out


class TimedFuture:
    """A Dask future whose ``result()`` unwraps the task's value and books its worker's time."""

    __slots__ = ("_executor", "_taken", "future")

    def __init__(self, future, executor: DaskExecutor):
        self.future = future
        self._executor = executor
        self._taken = False

    def result(self, timeout: float | None = None) -> Any:
        value, worker, events, busy = self.future.result(timeout)
        if not self._taken:
            self._taken = True
            self._executor._add_worker_stats({worker: [1, events, busy]})
        if isinstance(value, _Failed):
            raise value.error
        return value

    def done(self) -> bool:
        return self.future.done()

    def cancel(self) -> bool:
        self.future.cancel()
        return True

    @property
    def key(self):
        return self.future.key


def _identity(value: Any) -> Any:
    return value


class _Failed:
    """mlaas4hep's own error of a task, sent back as its result (see :func:`_timed`)."""

    def __init__(self, error: Mlaas4hepError):
        self.error = error


def _timed(fn: Callable, *args: Any, **kwargs: Any) -> tuple[Any, str, int, float]:
    """Run ``fn`` on a worker; return its value, the worker's name, the unit's events and the seconds taken.

    A :class:`Mlaas4hepError` (a corrupt file...) is the unit's answer, not a
    failure of the task: it comes back as a value, so Dask does not retry it,
    and without its chain of causes (see :func:`mlaas4hep.scale.reduce.detached`).
    Any other exception fails the task, which Dask retries.
    """
    t0 = time.perf_counter()
    try:
        value = fn(*args, **kwargs)
    except Mlaas4hepError as err:
        value = _Failed(reduce_mod.detached(err))
    return value, reduce_mod.worker_name(), _events(args), time.perf_counter() - t0


def _events(args: tuple) -> int:
    """Events of the unit a task works on: its item is a Unit or a tuple starting with one."""
    from ..io.chunk import Unit

    item = args[-1] if args else None
    if isinstance(item, tuple) and item and isinstance(item[0], Unit):
        item = item[0]
    return item.stop - item.start if isinstance(item, Unit) else 0


# -------------------------------------------------------------------- connecting
def dask_executor(
    scheduler: str | None = None, workers: int | None = None, retries: int = DEFAULT_RETRIES
) -> DaskExecutor:
    """The executor for ``scheduler`` (kept for the life of the program, like process pools)."""
    key = (scheduler or None, None if scheduler else workers)
    with _LOCK:
        ex = _EXECUTORS.get(key)
        if ex is not None and ex.client.status not in ("closing", "closed"):
            return ex
        ex = _EXECUTORS[key] = _connect(scheduler, workers, retries)
        return ex


def _connect(scheduler: str | None, workers: int | None, retries: int) -> DaskExecutor:
    dask = extras.require("dask", "executor 'dask'")
    distributed = extras.require("distributed", "executor 'dask'")
    Client, LocalCluster = distributed.Client, distributed.LocalCluster

    _quiet_distributed()
    cluster = None
    if not scheduler:
        n = int(workers) if workers and int(workers) > 0 else default_workers()
        with dask.config.set(WORKER_CONFIG):
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.WARNING if not log.isEnabledFor(logging.DEBUG) else False,
            )
        client = Client(cluster)
        log.info("Dask: a private LocalCluster of %d workers, dashboard %s", n, client.dashboard_link)
    elif scheduler.startswith("gateway:") and not scheduler.startswith("gateway://"):
        client, cluster = _gateway_client(scheduler[len("gateway:") :])  # closing it leaves it running
    elif scheduler.startswith("gateway://"):
        raise ConfigError(
            f"scheduler {scheduler!r} is a Dask Gateway address, which needs the gateway's credentials; "
            "use 'gateway:CLUSTER_NAME' (see docs/scale.md)"
        )
    elif "://" not in scheduler and (scheduler.endswith(".json") or os.path.isfile(scheduler)):
        if not os.path.isfile(os.path.expanduser(scheduler)):
            raise ConfigError(f"Dask scheduler file {scheduler!r} does not exist")
        client = _client(Client, scheduler, scheduler_file=os.path.expanduser(scheduler))
    else:
        client = _client(Client, scheduler, address=scheduler)
    _check_workers(client, scheduler)
    # after distributed's own exit hook (atexit runs last-registered first), so that this
    # process closes its clients and clusters itself, quietly and within CLOSE_TIMEOUT_S
    atexit.unregister(shutdown_executors)
    atexit.register(shutdown_executors)
    return DaskExecutor(client, cluster, workers, retries)


def _quiet_distributed() -> None:
    """Keep distributed's start/stop chatter (INFO) out of the user's terminal unless ``-vv``.

    distributed sets its own loggers to INFO, and those records reach the
    handler of the command line whatever the root level is.
    """
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("distributed").setLevel(logging.WARNING)


def _client(Client, what: str, **kw):
    try:
        import dask

        timeout = dask.config.get("distributed.comm.timeouts.connect")  # 30s unless configured
        return Client(timeout=timeout, set_as_default=False, **kw)
    except (OSError, TimeoutError) as err:
        raise Mlaas4hepError(f"cannot connect to the Dask scheduler {what!r}: {err}") from None


def _gateway_client(name: str):
    try:
        from dask_gateway import Gateway
    except ImportError:
        raise ConfigError(
            "'gateway:' schedulers need the 'dask-gateway' package: pip install dask-gateway"
        ) from None
    gateway = Gateway()  # address, auth and proxy from the site's Dask configuration
    if not name:
        running = gateway.list_clusters()
        if len(running) != 1:
            raise ConfigError(
                f"'gateway:' needs a cluster name when {len(running)} clusters are running: "
                f"{[c.name for c in running]}"
            )
        name = running[0].name
    cluster = gateway.connect(name)
    return cluster.get_client(set_as_default=False), cluster


def _check_workers(client, scheduler: str | None) -> None:
    """Fail early, and clearly, when the workers cannot run mlaas4hep's tasks."""
    from .. import __version__

    try:
        seen = client.run(_worker_versions)
    except Exception as err:  # the function could not even be unpickled there
        raise Mlaas4hepError(
            f"the Dask workers of {scheduler or 'the local cluster'} cannot import mlaas4hep ({type(err).__name__}: "
            f"{err}); install mlaas4hep {__version__} in the workers' environment (see docs/scale.md)"
        ) from None
    mine = _worker_versions()
    for worker, versions in seen.items():
        diff = {k: (v, mine.get(k)) for k, v in versions.items() if v != mine.get(k)}
        if diff:
            log.warning(
                "Dask worker %s has other versions than this client (worker, client): %s", worker, diff
            )


def _worker_versions() -> dict[str, str]:
    import awkward
    import numpy
    import uproot

    from .. import __version__

    return {
        "mlaas4hep": __version__,
        "uproot": uproot.__version__,
        "awkward": awkward.__version__,
        "numpy": numpy.__version__,
    }


def shutdown_executors() -> None:
    """Close every client (and the local clusters this process started)."""
    with _LOCK:
        for ex in _EXECUTORS.values():
            try:
                ex.shutdown()
            except Exception:  # already gone
                pass
        _EXECUTORS.clear()
