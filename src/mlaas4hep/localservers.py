"""Local servers on 127.0.0.1: XRootD (Debian ``xrootd-server``), nginx (HTTP Range), and a small
cluster of ``mlaas4hep serve`` replicas behind nginx as a load balancer.

Both serve one directory read-only. The tests, the benchmarks and
``mlaas4hep demo --remote`` use them to read through real ``root://`` and
``http://`` protocol stacks on one machine. They run as subprocesses (XRootD as
the ``xrootd`` user when we are root: it refuses to run as root); start-up
waits are bounded.

:class:`Replica` is one ``mlaas4hep serve`` on fixed ports (restarted on the same ones), and
:class:`LoadBalancer` runs the shipped ``deploy/nginx/mlaas4hep.conf`` pointed at replicas:
the replica tests and ``bench/replicas.py`` use them.

For fault tests, :meth:`XRootDServer.kill` ends the server abruptly
(``SIGKILL``, as a crash or an OOM kill would) and :meth:`XRootDServer.start`
brings it back on the same port with the same configuration::

    srv = XRootDServer(data_dir)
    srv.kill()          # clients now see refused connections
    srv.start()         # the same root:// URLs work again
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

#: program: (what needs it, Debian/Ubuntu install command, EL9 install command)
SYSTEM_PACKAGES = {
    "xrootd": (
        "root:// reads need it: 'mlaas4hep demo --remote' and the tests",
        "apt-get install xrootd-server",
        "dnf install epel-release && dnf install xrootd-server",
    ),
    "nginx": ("the http:// tests need it", "apt-get install nginx-light", "dnf install nginx"),
}


class MissingProgram(RuntimeError):
    """A server program from a system package is not installed; the message says how to get it.

    ``make demo`` needs neither server; ``make test`` installs both
    (``.ci/system-deps.sh``).
    """

    def __init__(self, program: str):
        self.program = program
        why, debian, el9 = SYSTEM_PACKAGES[program]
        super().__init__(
            f"{program} is not installed ({why}); as root: {debian} (Debian/Ubuntu) or {el9} (EL9)"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}: {log.read_text()[-2000:] if log and log.exists() else ''}"
            )
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server did not listen on port {port} within {timeout}s")


def public_dir(prefix: str) -> Path:
    """A directory that an unprivileged server user can traverse and read."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    d.chmod(0o755)
    return d


class _Server:
    """A server subprocess with a private work directory; ``stop()`` ends it and cleans up."""

    proc: subprocess.Popen
    work: Path
    port: int

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class XRootDServer(_Server):
    """``xrootd`` exporting ``root`` read-only; run as the ``xrootd`` user when we are root.

    The process is ``xrootd`` itself (no ``runuser`` in between), so
    :meth:`kill` reaches the server and nothing is left behind.
    """

    def __init__(self, root: Path):
        if shutil.which("xrootd") is None:
            raise MissingProgram("xrootd")
        self.root = Path(root).resolve()
        if os.geteuid() == 0:  # the server runs as the xrootd user: it must reach the directory
            for d in [self.root, *self.root.parents]:
                if not os.stat(d).st_mode & 0o001:
                    raise RuntimeError(
                        f"the xrootd user cannot reach {self.root}: {d} is not traversable "
                        "by others (chmod o+x it, or use a directory under /tmp)"
                    )
        self.port = free_port()
        self.work = public_dir("mlaas4hep-xrd-")
        for sub in ("admin", "run", "log"):
            (self.work / sub).mkdir()
        cfg = self.work / "xrootd.cfg"
        cfg.write_text(
            f"xrd.port {self.port}\n"
            f"all.export {self.root} r/o\n"
            f"all.adminpath {self.work}/admin\n"
            f"all.pidpath {self.work}/run\n"
            "xrd.allow host localhost\n"
            "xrd.allow host 127.0.0.1\n"
        )
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "xrootd", str(self.work)], check=True)
        self.start()

    def start(self) -> None:
        """Start the server (again) on its port; return once it listens."""
        cmd = ["xrootd", "-c", str(self.work / "xrootd.cfg"), "-n", "test"]
        cmd += ["-l", str(self.work / "log" / "xrootd.log")]
        user: dict[str, Any] = {}
        if os.geteuid() == 0:  # xrootd refuses to run as root
            user = {"user": "xrootd", "group": "xrootd", "extra_groups": []}
        for attempt in range(3):  # xrootd 5.5 has been seen to crash (SIGSEGV) at start on a loaded host
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **user)
            try:
                wait_port(self.port, self.proc, log=self.work / "log" / "test" / "xrootd.log")
                return
            except RuntimeError:
                if self.proc.poll() is None or attempt == 2:
                    raise
                time.sleep(0.5)

    def kill(self) -> None:
        """End the server at once with ``SIGKILL`` (no clean shutdown); the port is free afterwards."""
        self.proc.kill()
        self.proc.wait(10)

    def url(self, name: str) -> str:
        return f"root://127.0.0.1:{self.port}/{self.root}/{name}"


class NginxServer(_Server):
    """nginx serving ``root`` with Range and multi-range requests (``max_ranges``)."""

    def __init__(self, root: Path):
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(nginx):
            raise MissingProgram("nginx")
        self.root = Path(root)
        self.port = free_port()
        self.work = public_dir("mlaas4hep-nginx-")
        conf = self.work / "nginx.conf"
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf.write_text(
            f"{user}daemon off;\nworker_processes 2;\npid {self.work}/nginx.pid;\n"
            f"error_log {self.work}/error.log;\nevents {{ worker_connections 256; }}\n"
            "http {\n  access_log off;\n"
            f"  client_body_temp_path {self.work}/body;\n  proxy_temp_path {self.work}/proxy;\n"
            f"  fastcgi_temp_path {self.work}/fcgi;\n  uwsgi_temp_path {self.work}/uwsgi;\n"
            f"  scgi_temp_path {self.work}/scgi;\n"
            f"  server {{ listen 127.0.0.1:{self.port}; root {self.root}; max_ranges 1024; }}\n}}\n"
        )
        self.proc = subprocess.Popen(
            [nginx, "-c", str(conf), "-p", str(self.work)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc, log=self.work / "error.log")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


class Replica:
    """One ``mlaas4hep serve`` of ``repo`` on fixed HTTP and gRPC ports (``args``: more options)."""

    def __init__(self, repo: Path, *args: str):
        self.repo, self.args = Path(repo), list(args)
        self.port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> Replica:
        """Start (again, on the same ports); return once ``/v2/health/ready`` answers 200."""
        import sys
        import urllib.request

        cmd = [sys.executable, "-m", "mlaas4hep.serve", "--repo", str(self.repo), "--port", str(self.port)]
        cmd += ["--grpc-port", str(self.grpc_port), *self.args]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlaas4hep serve exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"mlaas4hep serve not ready in {timeout} s")

    def stop(self, sig: int = 15) -> None:
        """Send ``sig`` (default SIGTERM: the server drains if told to) and wait for the end."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)
        self.proc = None


class LoadBalancer(_Server):
    """nginx running ``conf`` (``deploy/nginx/mlaas4hep.conf``) in front of ``replicas``.

    The configuration's three HTTP and three gRPC ``server`` lines become the replicas' ports
    (fewer replicas: the lines left over are dropped), and it listens on free local ports.

    ``follow_readiness``: do what Kubernetes' endpoints controller does for a Service (and
    Envoy's or an ingress's view of it): poll every replica's ``/v2/health/ready`` every
    0.1 s and, on the same answer twice, reload nginx with the replicas that are not ready
    marked ``down`` (a replica too busy to answer in time keeps its place). A replica
    that drains (SIGTERM with ``--drain-seconds``) then stops getting new requests while it
    still answers the ones already sent to it.
    """

    def __init__(self, conf: Path, replicas: list[Replica], follow_readiness: bool = False):
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(nginx):
            raise MissingProgram("nginx")
        self.replicas = replicas
        self.port, self.grpc_port = free_port(), free_port()
        self.work = w = public_dir("mlaas4hep-lb-")
        text = Path(conf).read_text()
        text = text.replace("listen 8000;", f"listen 127.0.0.1:{self.port};")
        text = text.replace("listen 8001 http2;", f"listen 127.0.0.1:{self.grpc_port} http2;")
        temps = "".join(
            f"    {k}_temp_path {w}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        text = text.replace("http {\n", "http {\n" + temps, 1)
        head = (
            "user root;\n" if os.geteuid() == 0 else ""
        ) + f"daemon off;\npid {w}/nginx.pid;\nerror_log {w}/error.log;\n"
        self._template = head + text
        self.down: frozenset[int] = frozenset()
        self._write()
        self.proc = subprocess.Popen([nginx, "-c", str(w / "nginx.conf"), "-p", str(w)])
        wait_port(self.port, self.proc, log=w / "error.log")
        wait_port(self.grpc_port, self.proc, log=w / "error.log")
        self.url = f"http://127.0.0.1:{self.port}"
        self.reloads = 0
        self._stop = threading.Event()
        if follow_readiness:
            threading.Thread(target=self._follow, name="lb-follow-readiness", daemon=True).start()

    def _write(self) -> None:
        text = self._template
        for kind, ports in (
            ("00", [r.port for r in self.replicas]),
            ("01", [r.grpc_port for r in self.replicas]),
        ):
            text = _point(text, kind, ports, self.down)
        (self.work / "nginx.conf").write_text(text)

    def _follow(self) -> None:
        import urllib.error
        import urllib.request

        def ready(r: Replica) -> bool | None:
            """True, False (503 while draining, refused while stopped), None (no answer in time: busy)."""
            try:
                with urllib.request.urlopen(r.url + "/v2/health/ready", timeout=1) as answer:
                    return bool(answer.status == 200)
            except urllib.error.HTTPError:
                return False
            except ConnectionRefusedError:
                return False
            except OSError as err:
                return False if isinstance(getattr(err, "reason", None), ConnectionRefusedError) else None

        seen: list[bool | None] = [None] * len(self.replicas)
        while not self._stop.wait(0.1):
            down = set(self.down)
            for i, r in enumerate(self.replicas):
                now = ready(r)
                if now is not None and now == seen[i]:  # the same answer twice: act on it
                    (down.discard if now else down.add)(i)
                seen[i] = now
            if frozenset(down) != self.down and self.proc.poll() is None:
                self.down = frozenset(down)
                self._write()
                self.proc.send_signal(signal.SIGHUP)  # nginx reloads: old workers finish their requests
                self.reloads += 1

    def stop(self) -> None:
        self._stop.set()
        super().stop()


def _point(conf: str, kind: str, ports: list[int], down: frozenset[int] = frozenset()) -> str:
    """``conf`` with its ``server 127.0.0.1:8N{kind}`` lines pointed at ``ports`` (extra lines
    dropped), those of the replicas in ``down`` marked ``down``."""
    import re

    left = iter(enumerate(ports))

    def one(m: re.Match[str]) -> str:
        i, port = next(left, (None, None))
        if port is None:
            return ""
        line = m.group(0).replace(m.group(0).split()[1], f"127.0.0.1:{port}")
        return line.replace(";", " down;", 1) if i in down else line

    return re.sub(rf" *server 127\.0\.0\.1:8[123]{kind} [^\n]*\n", one, conf)
