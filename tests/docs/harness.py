"""Run the documentation: the shell and Python blocks of README.md and docs/*.md, as written.

:func:`extract` reads a Markdown file's fenced blocks; :class:`DocRun` runs one
document's blocks in order, in one directory of its own:

* ``bash``/``sh`` blocks run with ``bash`` under ``set -e -o pipefail``, and
  ``curl`` is called with ``--fail-with-body``, so an HTTP error answer fails
  the block (with the server's message in the output);
* ``console`` blocks run their ``$ `` lines (a trailing ``\\`` continues a line);
  the other lines are output and are not checked;
* ``python`` blocks run as a script of their own (``python FILE.py``): each block
  must stand alone, as a reader would paste it into a file;
* ``json`` and ``yaml`` blocks are parsed;
* other blocks (no language: outputs, layouts, synopses) are not run.

A block whose last command starts the model server (``mlaas4hep serve`` or
``python -m mlaas4hep.serve``) runs in the background: the document goes on
once ``/v2/health/ready`` answers (a bounded wait), and the server is stopped
when the document ends. The documents use the server's default port, 8083; the
harness runs them on a free port instead, replacing ``:8083`` and
``--port 8083`` in every block, adding ``--port`` to a ``serve`` command that
has none, and setting ``$MLAAS4HEP_URL`` (the client's default server).

Directives: an HTML comment on the line just before a fence (invisible on
GitHub) changes what is done with the block:

``<!-- doc-test: syntax-only (REASON) -->``
    Only check the syntax (``bash -n``, ``compile``, a YAML/JSON parse): for
    blocks that need the CERN network, a GPU, several nodes, ``pip install``...
``<!-- doc-test: file NAME -->``
    Write the block's text to ``NAME`` in the document's directory (after
    checking its syntax when it is YAML, JSON or Python), for the blocks that
    follow.

Every document starts in an empty directory holding a copy of ``examples/`` and
links to ``src/`` and ``bench/`` (what a clone of the repository has), with
``$HOME`` inside it (so ``~/.cache/mlaas4hep`` is private), the virtual
environment's ``bin`` first on ``$PATH`` and ``src/`` on ``$PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
#: The documents whose blocks are run, in a stable order.
DOCUMENTS = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))

RUN_LANGS = {"bash", "sh", "shell", "console", "python", "py"}
PARSE_LANGS = {"json", "yaml", "yml"}
DEFAULT_PORT = 8083  # the server's default port
#: Ports the documents may name (the server's HTTP port, a second server's, gRPC); each runs as a free port.
DOC_PORTS = (8083, 8084, 8001, 8002)
BLOCK_TIMEOUT_S = 300
SERVER_START_S = 60
TAIL_CHARS = 6000

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+-]*)[^\n]*$")
DIRECTIVE = re.compile(r"<!--\s*doc-test:\s*(?P<kind>[\w-]+)\s*(?P<arg>.*?)\s*-->")
SERVE_CMD = re.compile(r"^(?:\S+=\S+\s+)*(?:mlaas4hep\s+serve|python3?\s+-m\s+mlaas4hep\.serve)(?:\s|$)")

BASH_PREAMBLE = """\
set -e -o pipefail
curl() { command curl --fail-with-body "$@"; }
"""


@dataclass
class Block:
    """One fenced block: where it is, its language and text, and its directive."""

    doc: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    directive: str | None = None  # "syntax-only", "file"
    arg: str = ""

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.lang in RUN_LANGS and self.directive is None

    def commands(self) -> str:
        """The shell text of a bash or console block."""
        if self.lang != "console":
            return self.code
        out, cont = [], False
        for line in self.code.splitlines():
            if cont or line.startswith("$ "):
                out.append(line if cont else line[2:])
                cont = line.rstrip().endswith("\\")
        return "\n".join(out) + "\n"

    def is_server(self) -> bool:
        """The block's last command starts the model server (it is then run in the background)."""
        if self.lang not in ("bash", "sh", "shell", "console") or self.directive:
            return False
        cmds = [c for c in _logical_lines(self.commands()) if c and not c.startswith("#")]
        return bool(cmds) and bool(SERVE_CMD.match(cmds[-1]))


def _logical_lines(text: str) -> list[str]:
    """Shell lines with ``\\`` continuations joined, stripped."""
    out, cur = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        out.append((cur + line).strip())
        cur = ""
    if cur:
        out.append(cur.strip())
    return out


def extract(path: str | os.PathLike, name: str | None = None) -> list[Block]:
    """The fenced blocks of a Markdown file, with the directive written just before each."""
    lines = Path(path).read_text().splitlines()
    name = name or str(path)
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m["indent"], m["fence"], m["lang"].lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith(fence[0] * len(fence)) and stripped.strip(fence[0]) == "":
                break
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        else:
            raise ValueError(f"{name}:{start + 1}: the block opened here is never closed")
        i += 1
        directive, arg = None, ""
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        if j >= 0 and (d := DIRECTIVE.search(lines[j])):
            directive, arg = d["kind"], d["arg"]
            if directive not in ("syntax-only", "file"):
                raise ValueError(f"{name}:{j + 1}: unknown doc-test directive {directive!r}")
            if directive == "syntax-only" and not arg:
                raise ValueError(f"{name}:{j + 1}: say why the block is syntax-only: (REASON)")
            if directive == "file" and not arg:
                raise ValueError(f"{name}:{j + 1}: 'doc-test: file' needs a file name")
        blocks.append(Block(name, start + 1, lang, "\n".join(body) + "\n", directive, arg))
    return blocks


class BlockError(AssertionError):
    """A block failed: the message names the document, the line and shows the output."""


def _distinct_ports(documented: tuple[int, ...], runs: int = 1) -> list[dict[int, int]]:
    """For each of ``runs`` documents, a free port for each documented one, all different: the
    sockets stay bound until every port is chosen (ports picked one at a time can come back
    twice, as CI once saw), so documents that run at the same time never share a port."""
    socks = [socket.socket() for _ in range(len(documented) * runs)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        ports = [s.getsockname()[1] for s in socks]
        n = len(documented)
        return [dict(zip(documented, ports[i * n : (i + 1) * n])) for i in range(runs)]
    finally:
        for s in socks:
            s.close()


def port_sets(runs: int) -> list[dict[int, int]]:
    """The ports of ``runs`` documents that run at the same time (see :class:`DocRun`'s ``ports``)."""
    return _distinct_ports(DOC_PORTS, runs)


def _tail(text: str) -> str:
    return text if len(text) <= TAIL_CHARS else "[...]\n" + text[-TAIL_CHARS:]


def _wait(
    proc: subprocess.Popen, timeout: float, stop: threading.Event | None = None
) -> tuple[int | None, float]:
    """Wait for ``proc`` at most ``timeout`` seconds, or until ``stop`` is set: its exit status
    (None if it is still running) and the CPU seconds (user + system) of it and the children
    it waited for.

    ``os.wait4`` reports the CPU of this one process, where ``getrusage(RUSAGE_CHILDREN)``
    would add that of every document running at the same time in other threads."""
    deadline = time.monotonic() + timeout
    pause = 0.002
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_utime + usage.ru_stime
        if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
            return None, 0.0
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of a block's process group (it was started in a session of its own)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass


@dataclass
class DocRun:
    """Runs the blocks of one document in ``workdir``; call :meth:`close` at the end."""

    doc: str
    workdir: Path
    ports: dict[int, int] = field(default_factory=lambda: port_sets(1)[0])
    #: (where, what was done, wall seconds, CPU seconds of the processes it waited for)
    timings: list[tuple[str, str, float, float]] = field(default_factory=list)
    servers: list[tuple[Block, subprocess.Popen, Path]] = field(default_factory=list)
    #: Once set (the test session ends), the running block is stopped.
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(ROOT / "examples", self.workdir / "examples")
        for name in ("src", "bench"):
            (self.workdir / name).symlink_to(ROOT / name, target_is_directory=True)
        (self.workdir / "home").mkdir()
        env = dict(os.environ)
        bindir = str(Path(sys.executable).parent)  # the venv's bin, not resolved through its links
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
        env["HOME"] = str(self.workdir / "home")
        env["MLAAS4HEP_URL"] = f"http://127.0.0.1:{self.port}"
        env["MPLBACKEND"] = "Agg"
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("MLAAS4HEP_TOKEN", None)
        self.env = env
        self.timeout: float = BLOCK_TIMEOUT_S
        self._cpu = 0.0  # CPU seconds of the block that runs now

    # -------------------------------------------------------------- running
    def run(self, block: Block, timeout: float | None = None) -> None:
        """Run (or check) one block; ``timeout`` replaces :data:`BLOCK_TIMEOUT_S`."""
        self.timeout = timeout or BLOCK_TIMEOUT_S
        t0 = time.perf_counter()
        self._cpu = 0.0
        if block.directive == "file":
            self._write_file(block)
            kind = f"file {block.arg}"
        elif block.directive == "syntax-only":
            self._check_syntax(block)
            kind = "syntax"
        elif block.lang in PARSE_LANGS:
            self._parse(block)
            kind = "parse"
        elif block.is_server():
            self._start_server(block)
            kind = "server"
        elif block.lang in ("python", "py"):
            self._run_python(block)
            kind = "python"
        elif block.lang in RUN_LANGS:
            self._run_shell(block)
            kind = "shell"
        else:
            return
        self.timings.append((block.where, kind, time.perf_counter() - t0, self._cpu))

    @property
    def port(self) -> int:
        """The port that stands for the server's default port, 8083."""
        return self.ports[DEFAULT_PORT]

    def _ported(self, code: str) -> str:
        """The block with each documented port replaced by this run's stand-in."""
        for doc_port, port in self.ports.items():
            code = re.sub(rf"(?<=:){doc_port}\b", str(port), code)
            code = re.sub(rf"(--(?:grpc-)?port(?:=|\s+)){doc_port}\b", rf"\g<1>{port}", code)
        return code

    def _fail(self, block: Block, what: str, output: str = "") -> None:
        raise BlockError(
            f"{block.where}: the {block.lang} block {what}\n"
            f"--- block (ports {self.ports} as run) ---\n{block.code}"
            + (f"--- output ---\n{_tail(output)}" if output else "")
        )

    def _exec(self, block: Block, argv: list[str]) -> None:
        """Run ``argv``; the output goes to a file, not a pipe, so that a process the
        block leaves behind cannot hold the harness; such processes are killed."""
        log = self.workdir / f"_block_{block.line}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                argv,
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                rc, self._cpu = _wait(proc, self.timeout, self.stop)
            finally:
                _kill_group(proc)
        if rc is None and self.stop.is_set():
            self._fail(block, "was stopped: the test session ended", log.read_text(errors="replace"))
        elif rc is None:
            self._fail(block, f"did not finish in {self.timeout:.0f} s", log.read_text(errors="replace"))
        elif rc != 0:
            self._fail(block, f"exited with status {rc}", log.read_text(errors="replace"))

    def _run_shell(self, block: Block) -> None:
        self._exec(block, ["bash", "-c", BASH_PREAMBLE + self._ported(block.commands())])

    def _run_python(self, block: Block) -> None:
        script = self.workdir / f"_doc_block_{block.line}.py"
        script.write_text(self._ported(block.code))
        self._exec(block, [sys.executable, script.name])

    def _start_server(self, block: Block) -> None:
        code = self._ported(block.commands())
        lines = code.rstrip("\n").split("\n")
        last = lines[-1]
        if not re.search(r"--port\b", " ".join(_logical_lines(code)[-1:])):
            lines[-1] = re.sub(r"(\s+#.*)?$", rf" --port {self.port}\g<1>", last, count=1)
        m = re.search(r"--port(?:=|\s+)(\d+)", "\n".join(lines))
        port = int(m.group(1)) if m else self.port
        log = self.workdir / f"_server_{block.line}.log"
        proc = subprocess.Popen(
            ["bash", "-c", BASH_PREAMBLE + "\n".join(lines) + "\n"],
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.servers.append((block, proc, log))
        url = f"http://127.0.0.1:{port}/v2/health/ready"
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline and not self.stop.is_set():
            if proc.poll() is not None:
                self._fail(block, f"(a server) exited with status {proc.returncode}", log.read_text())
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self._fail(block, f"(a server) did not answer {url} within {SERVER_START_S} s", log.read_text())

    def _check_syntax(self, block: Block) -> None:
        if block.lang in ("bash", "sh", "shell", "console"):
            p = subprocess.run(["bash", "-n"], input=block.commands(), capture_output=True, text=True)
            if p.returncode != 0:
                self._fail(block, "is not valid bash", p.stderr)
        elif block.lang in ("python", "py"):
            try:
                compile(block.code, block.where, "exec")
            except SyntaxError as err:
                self._fail(block, f"is not valid Python: {err}")
        elif block.lang in PARSE_LANGS:
            self._parse(block)
        else:
            self._fail(block, "is marked syntax-only but has no language the harness can check")

    def _parse(self, block: Block) -> None:
        try:
            if block.lang == "json":
                json.loads(block.code)
            else:
                yaml.safe_load(block.code)
        except (ValueError, yaml.YAMLError) as err:
            self._fail(block, f"does not parse: {err}")

    def _write_file(self, block: Block) -> None:
        if block.lang in PARSE_LANGS or block.lang in ("python", "py"):
            self._check_syntax(block)
        target = self.workdir / block.arg
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.code)

    # -------------------------------------------------------------- the end
    def close(self) -> list[str]:
        """Stop the servers the document started; returns their logs' tails."""
        logs = []
        for block, proc, log in self.servers:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    pass
            _kill_group(proc)
            logs.append(f"--- server of {block.where} ---\n{_tail(log.read_text())}")
        self.servers.clear()
        return logs
