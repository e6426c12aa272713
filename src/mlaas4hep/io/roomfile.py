"""A raw unit's buffer that is already the decoded cache's ``x.npy``: no memory touched twice.

On a first use with a decoded cache, every event is written twice into fresh
memory: the specs pass decodes each unit into a raw buffer (held until epoch 0),
then epoch 0 lays it out into the cache's files (new pages of the page cache).
Fresh pages are what costs here: each is faulted in and zeroed by the kernel (and,
in a virtual machine, often backed anew by the host), about 1 ms a MiB measured on
this project's 2-core machine, against 0.15 ms to write memory already touched.
At 6M events (5 branches, 53 features) the raw buffers alone are 1.2 GB.

A :class:`RoomFile` puts the raw buffer in the page cache from the start: an
unnamed file (``O_TMPFILE``) in the cache directory, mapped. The specs pass
decodes into it (:func:`~mlaas4hep.io.firstuse.decode_raw`); epoch 0 widens the
rows to their final width inside it, as it does in memory
(:attr:`~mlaas4hep.io.rawunit.RawChunk.room`), and :meth:`RoomFile.publish`
writes the ``.npy`` header in front of them, cuts the file to its size and links
it into the cache under its name. The file's pages are touched once.

The data starts :data:`HEADER` bytes into the file, where :func:`numpy.save` puts
it for any 2-D shape this can hold (the header is checked to fit, else the unit
is laid out as before), so a published file is byte for byte what ``np.save``
writes. A file never published (no room in the cache, a run that stops after
the specs pass) has no name: it goes when its mapping and descriptor go, and
nothing is left on disk. Blocks are allocated (``posix_fallocate``) before any
page of them is written, so a full disk is an :class:`OSError` (the unit then
lives in memory), never a ``SIGBUS``. Each file holds a descriptor until its
unit is laid out: at most :func:`max_open` are open at once (the units beyond
them live in memory), so reading the data never runs out of descriptors.
"""

from __future__ import annotations

import io
import mmap
import os
import threading
import weakref
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

#: Bytes of ``.npy`` header before the data: what ``np.save`` writes for a 2-D float32 array.
HEADER = 128
#: How many room files may be open at once; None: a quarter of the descriptors this process may open.
MAX_OPEN: int | None = None
_open = 0
_lock = threading.Lock()


def max_open() -> int:
    """:data:`MAX_OPEN`, or a quarter of the soft ``RLIMIT_NOFILE`` (at most 4096)."""
    if MAX_OPEN is not None:
        return MAX_OPEN
    try:
        import resource  # Unix only, as O_TMPFILE is
    except ImportError:
        return 0
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 4096 if soft == resource.RLIM_INFINITY else min(soft // 4, 4096)


def _take() -> bool:
    global _open
    with _lock:
        if _open >= max_open():
            return False
        _open += 1
        return True


def _give_back(fd: int | None = None) -> None:
    global _open
    with _lock:
        _open -= 1
    if fd is not None:
        os.close(fd)


class RoomFile:
    """An unnamed, mapped file whose float32 :attr:`buffer` starts after a ``.npy`` header.

    Made by :meth:`create`; ``buffer`` has room for ``size`` floats, of which
    the first ``used`` have their blocks allocated on disk. The descriptor is
    closed when the object goes (the mapping keeps the file alive until the last
    array over it goes too).
    """

    def __init__(self, fd: int, size: int, used: int) -> None:
        self.fd = fd
        self.allocated = HEADER + 4 * used
        self._mm = mmap.mmap(fd, HEADER + 4 * size)
        self.buffer = np.frombuffer(self._mm, np.float32, count=size, offset=HEADER)
        weakref.finalize(self, _give_back, fd)

    @classmethod
    def create(cls, directory: str | Path, size: int, used: int) -> RoomFile | None:
        """A file in ``directory`` with room for ``size`` floats, the first ``used`` allocated.

        None where that cannot be done (no ``O_TMPFILE`` on this system or
        filesystem, a full disk, :func:`max_open` files open): the caller uses memory.
        """
        flag = getattr(os, "O_TMPFILE", None)
        if flag is None or size <= 0 or not _take():
            return None
        try:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(directory, flag | os.O_RDWR, 0o644)
        except OSError:
            _give_back()
            return None
        try:
            os.ftruncate(fd, HEADER + 4 * size)  # a sparse file: pages never written cost nothing
            os.posix_fallocate(fd, 0, HEADER + 4 * used)
            return cls(fd, size, used)
        except (OSError, ValueError):
            _give_back(fd)
            return None

    def reserve(self, floats: int) -> bool:
        """Allocate the blocks of the first ``floats`` of :attr:`buffer`; False on a full disk."""
        end = HEADER + 4 * floats
        if end <= self.allocated:
            return True
        try:
            os.posix_fallocate(self.fd, self.allocated, end - self.allocated)
        except OSError:
            return False
        self.allocated = end
        return True

    def holds(self, x: np.ndarray) -> bool:
        """Whether ``x`` is the start of :attr:`buffer`, C-ordered (what :meth:`publish` writes)."""
        return (
            x.dtype == np.float32
            and x.flags.c_contiguous
            and x.size <= self.buffer.size
            and (
                x.size == 0 or x.__array_interface__["data"][0] == self.buffer.__array_interface__["data"][0]
            )
        )

    def publish(self, x: np.ndarray, path: str | Path) -> bool:
        """Make the file ``path``: ``.npy`` of ``x`` (the start of :attr:`buffer`, see :meth:`holds`).

        The header goes in front, the file is cut to its size (the room after it
        is given back) and linked under ``path``. False where the header would
        not fit in :data:`HEADER` bytes or the link fails (e.g. another
        filesystem): the caller writes ``x`` itself.
        """
        header = io.BytesIO()
        npy.write_array_header_1_0(header, npy.header_data_from_array_1_0(x))
        if len(header.getvalue()) != HEADER or not self.holds(x) or not self.reserve(x.size):
            return False
        path = Path(path)
        try:
            os.pwrite(self.fd, header.getvalue(), 0)
            os.ftruncate(self.fd, HEADER + x.nbytes)
            # linkat(..., AT_SYMLINK_FOLLOW), which gives the unnamed file a name (a directory
            # descriptor makes Python call linkat; plain link() would not follow /proc's link)
            parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.link(f"/proc/self/fd/{self.fd}", path.name, dst_dir_fd=parent, follow_symlinks=True)
            finally:
                os.close(parent)
        except OSError:
            return False
        return True
