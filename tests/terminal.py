"""Run a command the way a person does: on a pseudo-terminal, as a real process.

``on_pty(argv)`` starts ``argv`` with stdin, stdout and stderr on the slave side
of a fresh pty (120 x 40), reads everything it writes, and returns its exit
status and its screen output with colours and cursor movements removed
(carriage returns become new lines, so every redraw of a bar is one line).
``in_background(argv)`` does the same in a thread, for a long command that can run while
other tests do (``.result()`` waits for it).
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
#: a progress bar's line: the bar glyphs and a measured rate
BAR_WITH_RATE = re.compile(r"━.*\b\d[\d,]* (events|rounds)/s")


def terminal_env(**extra: str) -> dict[str, str]:
    """The environment of a person's shell: a terminal type, no CI flag, this checkout's sources."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "MLAAS4HEP_PROGRESS", "NO_COLOR")}
    env.update(TERM="xterm-256color", COLUMNS="120", LINES="40", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(extra)
    return env


def cli(*args: str) -> list[str]:
    """``mlaas4hep ARGS`` with this interpreter (the console script may point at another checkout)."""
    return [sys.executable, "-m", "mlaas4hep.cli", *args]


def on_pty(argv: list[str], cwd: str | os.PathLike | None = None, timeout: float = 300, **env: str):
    """``(exit status, text)`` of ``argv`` run on a pseudo-terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        argv,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=cwd,
        env=terminal_env(**env),
        start_new_session=True,
    )
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            raise AssertionError(f"{argv} still running after {timeout}s: {plain(b''.join(chunks))[-2000:]}")
        rc = proc.wait(30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return rc, plain(b"".join(chunks))


def plain(data: bytes) -> str:
    text = ANSI.sub("", data.decode("utf-8", "replace"))
    return "\n".join(line for line in re.split(r"\r\n|\r|\n", text) if line.strip())


def bar_lines(text: str, description: str) -> list[str]:
    """The lines of ``text`` that draw the bar named ``description`` with a rate."""
    return [
        ln for ln in text.splitlines() if ln.lstrip().startswith(description) and BAR_WITH_RATE.search(ln)
    ]


def in_background(
    argv: list[str], cwd: str | os.PathLike | None = None, timeout: float = 300, **env: str
) -> Future:
    """:func:`on_pty` in a thread of its own: a future of its ``(exit status, text)``."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pty")
    try:
        return pool.submit(on_pty, argv, cwd, timeout, **env)
    finally:
        pool.shutdown(wait=False)  # the thread ends with the command
