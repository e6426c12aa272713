"""Worker processes born quiet on Ctrl-C: imported by the fork server only.

Ctrl-C on a terminal sends SIGINT to every process of the command. A worker
that gets it prints a ``KeyboardInterrupt`` traceback of its own unless it
already exits quietly. Each worker installs a quiet handler in its
initializer (``executor._guard_worker``), but a worker still starting (in
``multiprocessing``'s bootstrap) has not run it yet.

The fork server imports this module before it forks any worker (it is the
first of its preloaded modules), and each worker it forks restores the
handlers the server had after its preloads: so workers are born with the
quiet handler, and the fork server itself leaves quietly if Ctrl-C comes
while it is still importing uproot and awkward.
"""

from __future__ import annotations

import os
import signal


def exit_quietly(signum: int, frame: object) -> None:
    """End this process at once with the shell's status for Ctrl-C (130), printing nothing."""
    os._exit(128 + signum)


signal.signal(signal.SIGINT, exit_quietly)
