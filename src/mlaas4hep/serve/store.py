"""The repository directory as a small transactional store shared by processes and replicas.

Every change to a repository directory (an upload, a delete, a load or an
unload, new serving settings, the repair at start) is a **transaction**:

* it runs while its process holds an exclusive :func:`fcntl.flock` on
  ``DIR/.lock`` (:meth:`Store.write`), so changes are serialised across the
  threads of a process, the ``--workers`` of a server and the replicas that
  mount one directory (a PVC, an NFS export: Linux maps ``flock`` to NFS
  locks). A scan of the directory (:meth:`Store.read`) takes no file lock:
  it sees every change whole (see below), and one that overlaps a change is
  repeated at the next request;
* what it makes visible appears with one ``rename``: an upload is unpacked,
  loaded and smoke-tested in ``.staging/upload-<uuid>`` before it is renamed
  to ``{name}/{version}``; a deleted version is first renamed to a tombstone,
  ``.staging/delete-<uuid>/x``, and only then removed, so a name is never
  half there and never reused while its files go; small files (``.state.json``,
  ``serving.json``) are written beside and renamed over;
* it ends by rewriting ``DIR/.generation`` (:meth:`Store.bump`), whose identity
  (inode, modification time: one ``stat``) every process compares before it
  answers a request, rescanning when another process changed the directory.

A crash at any point leaves either the old state or the new one, plus
leftovers that the next writer start removes (:meth:`Store.repair`): staging
and tombstone folders whose owner is dead (each is flocked by its live
owner, see :func:`staged`), half-written ``*.tmp`` files. Readers never repair
and never delete what they did not create.

A **read-only** repository (a CVMFS path, a Kubernetes ConfigMap, a ``:ro``
mount; detected when the directory cannot be written, or declared) is served
as it is: no lock, no staging folder, no state file; every change raises
:class:`~mlaas4hep.serve.errors.ReadOnlyRepository`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import ReadOnlyRepository

STAGING = ".staging"
LOCK = ".lock"
GENERATION = ".generation"
#: Errors that say a directory cannot be written to.
_READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


class Store:
    """Transactions on the repository directory ``root`` (see the module's documentation)."""

    def __init__(self, root: Path, read_only: bool | None = None):
        self.root = root
        self.staging = root / STAGING
        self._lock_file = root / LOCK
        self._gen_file = root / GENERATION
        self._thread_lock = threading.RLock()
        self._held = threading.local()  # depth of this thread's transaction (read or write)
        self.read_only = self._detect_read_only() if read_only is None else bool(read_only)
        self.gen_seen: tuple[int, int] | None = None
        #: Why changes are refused, in the words of :meth:`refuse`.
        self.why = "it is served as it is; change it where it is published"
        if not self.read_only:
            self.staging.mkdir(exist_ok=True)

    def _detect_read_only(self) -> bool:
        """True when ``root`` cannot be written (try creating the lock file, as a writer would)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._lock_file, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as err:
            if err.errno in _READ_ONLY_ERRNOS:
                return True
            raise
        os.close(fd)
        return not os.access(self.root, os.W_OK)

    def refuse(self, what: str) -> None:
        """Raise :class:`ReadOnlyRepository` when the repository cannot be changed."""
        if self.read_only:
            raise ReadOnlyRepository(
                f"the repository {self.root.name!r} is read-only: cannot {what} ({self.why})"
            )

    # ------------------------------------------------------------ locking
    @contextlib.contextmanager
    def write(self, what: str) -> Iterator[None]:
        """An exclusive transaction (one at a time across threads, processes and replicas)."""
        self.refuse(what)
        with self._locked(fcntl.LOCK_EX):
            yield

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        """A scan of the directory: serialised with this process's transactions, not with others'.

        Readers take no file lock (they would starve writers, and a read-only
        directory has none). They need none: every change appears with one
        ``rename``, so a scan sees each version whole or not at all, and a scan
        that overlaps another process's transaction is repeated at the next
        request, because it remembers the ``.generation`` it started from.
        """
        with self._locked(None):
            yield

    @contextlib.contextmanager
    def _locked(self, mode: int | None) -> Iterator[None]:
        """This thread's transaction: the file lock in ``mode`` (None: none), then the process's lock.

        The file lock is taken first, holding nothing: a writer that waits for
        another process's transaction never keeps this process's readers (the
        event loop, checking ``.generation``) waiting too.
        """
        depth = getattr(self._held, "depth", 0)
        if depth:  # nested in this thread's transaction, which holds the locks already
            self._held.depth = depth + 1
            try:
                yield
            finally:
                self._held.depth = depth
            return
        fd = None
        if mode is not None:
            fd = os.open(self._lock_file, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            if fd is not None and mode is not None:
                # one writer at a time, across threads (one open file each) and processes
                fcntl.flock(fd, mode)
            with self._thread_lock:
                self._held.depth = 1
                try:
                    yield
                finally:
                    self._held.depth = 0
        finally:
            if fd is not None:
                os.close(fd)  # releases the flock

    # ------------------------------------------------------------ generation
    def signature(self) -> tuple[int, int] | None:
        """Identity of ``.generation`` (inode, modification time); None when there is none yet."""
        try:
            st = os.stat(self._gen_file)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    def changed_elsewhere(self) -> bool:
        """Whether another process changed the directory since this one last looked (one ``stat``)."""
        return self.signature() != self.gen_seen

    def bump(self) -> None:
        """Tell every process that the directory changed (inside a write transaction).

        The file's modification time is set explicitly and strictly increases:
        file-system timestamps are coarse and inodes get reused, so two quick
        changes could otherwise leave the same (inode, mtime) signature.
        """
        old = self.signature()
        t = time.time_ns()
        if old is not None and t <= old[1]:
            t = old[1] + 1
        tmp = self._gen_file.with_name(f"{GENERATION}.{os.getpid()}.tmp")
        tmp.write_bytes(uuid.uuid4().hex.encode())
        os.utime(tmp, ns=(t, t))
        os.replace(tmp, self._gen_file)
        self.gen_seen = self.signature()

    # ------------------------------------------------------------ changes
    def tombstone(self, path: Path) -> None:
        """Remove ``path`` (a version or model directory): renamed away at once, then deleted."""
        with staged(self.staging, "delete-") as trash:
            os.rename(path, trash / "x")

    def repair(self) -> list[str]:
        """Remove what crashed writers left (inside a write transaction); returns what was removed."""
        removed = clean_staging(self.staging)
        for tmp in [*self.root.glob("*.tmp"), *self.root.glob("*/*.tmp")]:
            if tmp.is_file():  # a state, settings or generation file half-written by a dead writer
                tmp.unlink(missing_ok=True)
                removed.append(str(tmp.relative_to(self.root)))
        return removed


def atomic_write(path: Path, data: bytes) -> None:
    """Write a small file so that readers see the old content or the new one, never a part."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@contextlib.contextmanager
def staged(staging: Path, prefix: str) -> Iterator[Path]:
    """A fresh directory ``staging/{prefix}{uuid}``, removed on exit.

    While it exists, this process holds an exclusive :func:`fcntl.flock` on the
    sibling file ``{name}.lock``. The kernel releases that lock when the process
    dies, however it dies, so :func:`clean_staging` can tell a crashed upload
    from a live one (of another worker) by trying the lock: process ids cannot
    tell them apart in a container, where PID 1 is always alive.
    """
    while True:
        work = staging / f"{prefix}{uuid.uuid4().hex}"
        lock = work.with_name(work.name + ".lock")
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:  # a cleaner may have taken and removed the file before we locked it: then start again
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        work.mkdir()
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        lock.unlink(missing_ok=True)
        os.close(fd)


def clean_staging(staging: Path) -> list[str]:
    """Remove what crashed processes left in ``.staging``; keep the work of live ones (see :func:`staged`)."""
    removed: list[str] = []
    if not staging.is_dir():
        return removed
    for lock in sorted(staging.glob("*.lock")):
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its process is alive
            os.close(fd)
            continue
        work = lock.with_name(lock.name[: -len(".lock")])
        if work.exists():
            _remove(work)
            removed.append(f"{STAGING}/{work.name}")
        lock.unlink(missing_ok=True)
        os.close(fd)
    for d in staging.iterdir():  # no lock beside it: a crash before locking, or an older server's leftover
        if not d.name.endswith(".lock") and not d.with_name(d.name + ".lock").exists():
            _remove(d)
            removed.append(f"{STAGING}/{d.name}")
    return removed


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)
