"""Where work runs: in the calling process, a local pool of processes or threads, or Dask.

Every parallel pass of mlaas4hep (specs, decoding) is a map of a picklable
function over units. :func:`ordered_map` runs it with a bounded number of tasks
in flight and yields results in submission order, so memory stays bounded and
the output is deterministic whatever the number of workers.

Worker processes need no ceremony from the caller:

* a script that starts workers without ``if __name__ == "__main__":`` (each
  worker re-runs the script's top level while it starts) stops at once with a
  short message saying to add the guard or set ``workers: 0``, instead of a
  hundred lines of tracebacks from every worker; a script read from standard
  input (``python - < job.py``) needs no guard: nothing is re-run;
* workers exit when their parent dies, even by ``kill -9``: they watch the
  parent's pipe from a thread, and on Linux the kernel also sends them SIGTERM
  (``PR_SET_PDEATHSIG``) when the process that forked them goes;
* Ctrl-C on a terminal (SIGINT to every process of the command) ends the
  workers silently; the parent alone reports the interruption, and a pool
  broken that way is replaced on next use.

A pool is started once per process and number of workers, and every pass
(file information, specs, each epoch, ``to_numpy``) reuses it. Its start
does not hold the first pass up: :func:`get_executor` hands out the pool
while its workers are still importing uproot and awkward (a second or two),
and a task whose result is asked for before any worker is up runs in the
calling process (:class:`StartingPool`); the tasks still waiting go to the
workers once they are up.

A pool of threads (``executor: threads``) starts at once and shares the calling
process's memory: decompression (zlib, LZ4, ZSTD) and NumPy's loops release
the GIL, so on a few cores threads decode nearly as fast as processes without
the pool's start (a second of CPU: the fork server's imports and each worker's
start) and without sending results between processes. A dataset's ``executor:
local`` with one or two workers (:data:`LOCAL_THREADS`) runs them as threads.
"""

from __future__ import annotations

import ast
import contextlib
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from typing import Any, ParamSpec, TypeVar

from .quietworkers import exit_quietly

P = ParamSpec("P")
T = TypeVar("T")
Item = TypeVar("Item")


class InlineExecutor(Executor):
    """Runs each task when its result is asked for (``workers: 0``)."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        f: Future[T] = _LazyFuture(fn, args, kwargs)
        return f


class _LazyFuture(Future[T]):
    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__()
        self._call: tuple[Callable[..., T], tuple[Any, ...], dict[str, Any]] | None = (fn, args, kwargs)

    def result(self, timeout: float | None = None) -> T:
        if self._call is not None:
            fn, args, kwargs = self._call
            self._call = None
            try:
                self.set_result(fn(*args, **kwargs))
            except BaseException as err:
                self.set_exception(err)
        return super().result(timeout)


_POOLS: dict[int, ProcessPoolExecutor] = {}
_THREADS: dict[int, ThreadPoolExecutor] = {}
_WARM: dict[int, list[Future[None]]] = {}  # one warm-up task per worker of each pool


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


UNGUARDED_MESSAGE = """\
mlaas4hep: worker processes re-run this script from the top, so they cannot start.
Put the script's code under `if __name__ == "__main__":`, or set `workers: 0`
in the dataset configuration (decoding then runs in this process)."""

#: names the file through which a worker tells its parent "your script is unguarded"
_MARKER_ENV = "MLAAS4HEP_UNGUARDED_MARKER"


def thread_pool(workers: int) -> ThreadPoolExecutor:
    """A shared pool of ``workers`` threads in this process, kept for the life of the program."""
    pool = _THREADS.get(workers)
    if pool is None:
        pool = _THREADS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="mlaas4hep-decode")
    return pool


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A shared pool of ``workers`` processes (``forkserver``: safe with threads), every worker up.

    Pools are kept for the life of the program, so later epochs reuse warm
    workers that still hold their files open.
    """
    pool = _launch(workers)
    _wait_up(workers)
    return pool


def _launch(workers: int) -> ProcessPoolExecutor:
    """The pool of ``workers`` processes, started (not waited for) if there is none yet."""
    if _starting_as_worker():
        # We are a worker importing the user's script, which asks for workers again at
        # its top level. Leave quietly; the parent explains (see _wait_up).
        marker = os.environ.get(_MARKER_ENV)
        if marker:
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
        raise SystemExit(1)
    pool = _POOLS.get(workers)
    if pool is None or getattr(pool, "_broken", False):  # e.g. its workers were interrupted
        _refuse_unguarded_main()
        _forget_unreadable_main()
        ctx = worker_context()
        os.environ[_MARKER_ENV] = _marker()  # inherited by the forkserver and the workers
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_guard_worker)
        # start every worker now rather than one by one inside the first pass, from a thread:
        # starting a process waits for the fork server's imports, the caller need not
        warm: list[Future[None]] = [Future() for _ in range(workers)]
        threading.Thread(target=_start, args=(pool, warm), name="mlaas4hep-pool-start", daemon=True).start()
        _WARM[workers] = warm
        _POOLS[workers] = pool
    return pool


def worker_context() -> multiprocessing.context.BaseContext:
    """How worker processes start: forked from a fork server on POSIX, spawned elsewhere.

    The fork server imports uproot and awkward once (about a second of CPU);
    each worker forked from it starts with them imported instead of importing
    them again, and with the quiet Ctrl-C handler of :mod:`.quietworkers` from
    its first instruction. The fork server is one per process, shared with any
    other ``forkserver`` pool of the program.
    """
    if os.name != "posix":
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    package = __name__.rpartition(".")[0]
    ctx.set_forkserver_preload([package + ".quietworkers", "__main__", package + ".reader"])
    return ctx


def _close_pools_at_exit() -> None:
    """At exit, wait (a bounded time) for workers still starting, then shut the pools down.

    A command that ends before its pool is up (a small job done by the calling
    process, see :class:`StartingPool`) would otherwise leave the fork server
    starting workers whose parent is gone: each printed a ``FileNotFoundError``
    traceback from ``multiprocessing`` after the command's own output.

    This runs before ``concurrent.futures``'s own exit hook, and shuts the
    pools down itself, waiting: Python 3.11's hook wakes each pool's manager
    thread while that thread may be closing its wake-up pipe, a race that
    printed ``OSError: [Errno 9] Bad file descriptor`` after the output of a
    loaded machine's short commands.
    """
    for warm in list(_WARM.values()):
        for f in warm:
            try:
                f.result(timeout=10)
            except BaseException:
                pass
    with contextlib.suppress(Exception):
        shutdown_pools()


# concurrent.futures.process (imported above) registered its hook first: this one runs before it
threading._register_atexit(_close_pools_at_exit)  # type: ignore[attr-defined]


def _start(pool: ProcessPoolExecutor, warm: list[Future[None]]) -> None:
    """Start the workers of ``pool``: ``warm[i]`` is done once a worker has run its warm-up task."""
    for f in warm:
        try:
            pool.submit(_warm_up).add_done_callback(partial(_settle, f))
        except BaseException as err:  # the program is ending, or the pool broke
            f.set_exception(err)


def _settle(outer: Future[T], inner: Future[T]) -> None:
    """Give ``outer`` the outcome of ``inner``."""
    if inner.cancelled():
        outer.cancel()
        outer.set_running_or_notify_cancel()
    elif inner.exception() is not None:
        outer.set_exception(inner.exception())
    else:
        outer.set_result(inner.result())


def _marker() -> str:
    return os.path.join(tempfile.gettempdir(), f"mlaas4hep-unguarded-{os.getpid()}")


def _wait_up(workers: int) -> None:
    """Wait until every worker of the pool is up; a short message if the script is unguarded."""
    try:
        for f in _WARM.get(workers, []):
            f.result()
    except BaseException:
        pool = _POOLS.pop(workers, None)
        _WARM.pop(workers, None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        marker = _marker()
        if os.path.exists(marker):
            os.unlink(marker)
            # a message, not a traceback: nothing the caller could catch would help
            raise SystemExit(UNGUARDED_MESSAGE) from None
        raise


def _starting_as_worker() -> bool:
    """True while a freshly started worker (or the forkserver) imports the main script."""
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def _refuse_unguarded_main() -> None:
    """Stop before any worker starts when the call comes from unguarded top-level code of the script.

    Workers re-run the main script's top level, so a pool started from there
    cannot start. The worker-side marker (see :func:`_launch`) catches this
    too, but only once a worker has tried; this check reads the script
    (its syntax tree) and answers at once, before the calling process goes on
    without workers.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not str(path).endswith(".py") or not os.path.exists(path):
        return  # an interactive session, a notebook, python -c: nothing is re-run
    frame = sys._getframe(1)
    while frame is not None and not (
        frame.f_globals.get("__name__") == "__main__" and frame.f_code.co_name == "<module>"
    ):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return
    line = frame.f_lineno
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.If)
            and _is_main_guard(node.test)
            and node.lineno <= line <= (node.end_lineno or node.lineno)
        ):
            return
    raise SystemExit(UNGUARDED_MESSAGE)


def _forget_unreadable_main() -> None:
    """A script read from standard input (``python - < job.py``): let workers start as under ``python -c``.

    Its ``__main__.__file__`` is ``'<stdin>'``, which every new worker would try
    to run as a file, dying with ``FileNotFoundError`` (the pool then broke with
    ``BrokenProcessPool``). Workers need nothing of the script, so the name of a
    file that does not exist is dropped from ``__main__``, as under ``python -c``.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if isinstance(path, str) and path.startswith("<") and path.endswith(">") and not os.path.exists(path):
        del main.__file__  # type: ignore[union-attr]


def _is_main_guard(test: ast.expr) -> bool:
    """``__name__ == "__main__"`` (either way round)."""
    if not isinstance(test, ast.Compare) or len(test.comparators) != 1:
        return False
    sides = [test.left, test.comparators[0]]
    return any(isinstance(x, ast.Name) and x.id == "__name__" for x in sides) and any(
        isinstance(x, ast.Constant) and x.value == "__main__" for x in sides
    )


def _warm_up() -> None:
    from . import reader  # noqa: F401  (imports uproot, awkward, numpy)


def _guard_worker() -> None:
    """In each worker: exit when the parent process dies, however it dies; exit quietly on Ctrl-C."""
    signal.signal(signal.SIGINT, exit_quietly)  # no traceback per worker (spawned ones too)
    if sys.platform.startswith("linux"):
        try:  # the kernel sends SIGTERM when the process that forked us exits
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    if not parent.is_alive():  # died before we got here
        os._exit(1)
    threading.Thread(target=_exit_with, args=(parent,), name="mlaas4hep-parent-watch", daemon=True).start()


def _exit_with(parent: multiprocessing.process.BaseProcess) -> None:
    parent.join()  # returns when the parent's end of our pipe closes: the parent is gone
    os._exit(1)


def shutdown_pools() -> None:
    for pool in _POOLS.values():
        pool.shutdown(cancel_futures=True)
    for threads in _THREADS.values():
        threads.shutdown(cancel_futures=True)
    _POOLS.clear()
    _THREADS.clear()
    _WARM.clear()


class StartingPool(Executor):
    """The pool of ``workers`` processes while they start: what cannot wait runs here.

    :meth:`submit` hands a task to the pool once every worker is up. Before
    that it returns a future that holds the task: asked for its result while
    no worker is up, it runs the task in the calling process; the tasks still
    held when the workers are up go to them. So the calling process decodes
    the first units while the workers import their libraries, and no task
    waits for a worker that is not there yet.
    """

    def __init__(self, workers: int):
        self.workers = workers
        self._pool = _launch(workers)
        self._lock = threading.Lock()
        self._held: deque[_Held[Any]] = deque()
        self._warm = list(_WARM.get(workers, []))
        for f in self._warm:
            f.add_done_callback(self._on_warm)

    @property
    def up(self) -> bool:
        return all(f.done() for f in self._warm)

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        with self._lock:
            if not self.up:
                held: _Held[T] = _Held(self, fn, args, kwargs)
                self._held.append(held)
                return held
        self._check()
        return self._pool.submit(fn, *args, **kwargs)

    def _check(self) -> None:
        """Raise (a short message for an unguarded script) if a worker failed to start."""
        if any(f.done() and f.exception() is not None for f in self._warm):
            _wait_up(self.workers)

    def _on_warm(self, _: Future[None]) -> None:
        with self._lock:
            if not self.up:
                return
            held, self._held = list(self._held), deque()
        # from a thread of our own: this callback runs in the pool's manager thread,
        # which must not block on the pool it manages
        threading.Thread(target=_dispatch, args=(held,), name="mlaas4hep-pool-up", daemon=True).start()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """The pool is shared by the whole program: see :func:`shutdown_pools`."""


def _dispatch(held: list[_Held[Any]]) -> None:
    for h in held:
        h.dispatch()


class _Held(Future[T]):
    """A task of a :class:`StartingPool`, run here or sent to the workers, whichever comes first."""

    def __init__(
        self, owner: StartingPool, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ):
        super().__init__()
        self._owner = owner
        self._call: tuple[Callable[..., T], tuple[Any, ...], dict[str, Any]] | None = (fn, args, kwargs)

    def _claim(self) -> tuple[Callable[..., T], tuple[Any, ...], dict[str, Any]] | None:
        with self._owner._lock:
            call, self._call = self._call, None
            return call

    def dispatch(self) -> None:
        """Send the task to the workers (now up), unless the caller already ran it."""
        call = self._claim()
        if call is None:
            return
        fn, args, kwargs = call
        try:
            self._owner._check()
            inner = self._owner._pool.submit(fn, *args, **kwargs)
        except BaseException as err:
            self.set_exception(err)
            return
        inner.add_done_callback(partial(_settle, self))

    def result(self, timeout: float | None = None) -> T:
        call = self._claim()
        if call is not None:  # no worker is up yet: run it here
            fn, args, kwargs = call
            try:
                self.set_result(fn(*args, **kwargs))
            except BaseException as err:
                self.set_exception(err)
        return super().result(timeout)


#: Where executors of other packages register: an entry point ``NAME = "module:function"``,
#: ``function(scheduler, workers)`` returning the executor (mlaas4hep's ``dask`` is one, in
#: :mod:`mlaas4hep.scale.dask`; the streaming layer never imports the layer above it).
EXECUTOR_ENTRY_POINTS = "mlaas4hep.executors"
#: A dataset's ``executor: local`` with at most this many workers runs them as threads: on
#: 2 cores a first use (600k events, 5 branches, lengths from the specs, shuffled) took
#: 1.16x the CPU of a plain uproot pass on 2 threads against 1.7x on 2 processes, whose start
#: and raw units on disk cost more than the GIL does (bench/RESULTS-firstuse.md, Stop 13).
#: More workers are processes: threads share one GIL, which more cores would wait for.
LOCAL_THREADS = 2
#: The executors of this machine (the others are registered: :data:`EXECUTOR_ENTRY_POINTS`).
LOCAL_KINDS = ("local", "processes", "threads")


def registered_executor(kind: str) -> Callable[[str | None, int | None], Executor]:
    """The factory registered for executor ``kind`` (a :class:`~mlaas4hep.errors.ConfigError` if none)."""
    from importlib.metadata import entry_points

    from ..errors import ConfigError

    found = {ep.name: ep for ep in entry_points(group=EXECUTOR_ENTRY_POINTS)}
    if kind not in found:
        known = ", ".join([*LOCAL_KINDS, *sorted(found)])
        raise ConfigError(f"unknown executor {kind!r} (known here: {known})")
    factory: Callable[[str | None, int | None], Executor] = found[kind].load()
    return factory


def get_executor(kind: str = "local", workers: int | None = None, scheduler: str | None = None) -> Executor:
    """``local`` (processes, or inline when ``workers == 0``), ``processes``, ``threads``, or a
    registered one (``dask``)."""
    if scheduler and kind in LOCAL_KINDS:
        kind = "dask"  # a scheduler address means a Dask cluster
    if kind not in LOCAL_KINDS:
        return registered_executor(kind)(scheduler, workers)
    n = default_workers() if workers is None else int(workers)
    if n <= 0:
        return InlineExecutor()
    if kind == "threads":
        return thread_pool(n)
    pool = _launch(n)
    if all(f.done() and f.exception() is None for f in _WARM.get(n, [])):
        return pool
    return StartingPool(n)


def ordered_map(
    executor: Executor, fn: Callable[[Item], T], items: Iterable[Item], prefetch: int = 4
) -> Iterator[tuple[Item, Future[T]]]:
    """Yield ``(item, future)`` in order, keeping at most ``prefetch`` tasks in flight.

    The caller calls ``future.result()``, so it decides what to do on error
    (raise, or skip and report).
    """
    pending: deque[tuple[Item, Future[T]]] = deque()
    it = iter(items)
    for item in it:
        pending.append((item, executor.submit(fn, item)))
        if len(pending) >= max(1, prefetch):
            break
    while pending:
        item, fut = pending.popleft()
        for nxt in it:
            pending.append((nxt, executor.submit(fn, nxt)))
            break
        yield item, fut
