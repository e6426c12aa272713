"""Worker processes born quiet on Ctrl-C: the fork server imports this module.

Ctrl-C on a terminal sends SIGINT to every process of the command. A worker
that gets it prints a ``KeyboardInterrupt`` traceback of its own unless it
already exits quietly. Each worker installs a quiet handler in its
initializer (``executor._guard_worker``), but a worker still starting (in
``multiprocessing``'s bootstrap) has not run it yet.

:func:`mlaas4hep.io.executor.worker_context` names this module among the fork
server's preloads. Imported there, it installs a handler that ends the process
at once with status 130, printing nothing. Each worker the fork server forks
restores the handlers the server had after its preloads, so workers are quiet
from their first instruction, and so is the fork server itself once its main
script is imported (Python imports ``__main__`` before the other preloads).

A process has one fork server, so the workers of other ``forkserver`` pools of
the same program (the user's own, PyTorch's ``DataLoader`` with that start
method) also end this way on Ctrl-C, without running their ``finally`` blocks:
the program's main process still gets its ``KeyboardInterrupt``.

Imported anywhere else (a tool that imports every module), it does nothing.
"""

from __future__ import annotations

import os
import signal
import sys
from multiprocessing import forkserver


def exit_quietly(signum: int, frame: object) -> None:
    """End this process at once with the shell's status for Ctrl-C (130), printing nothing."""
    os._exit(128 + signum)


def _in_fork_server() -> bool:
    """Whether this import runs inside the fork server's start (``multiprocessing.forkserver.main``)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is forkserver.main.__code__:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


if _in_fork_server():
    signal.signal(signal.SIGINT, exit_quietly)
