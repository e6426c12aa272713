"""Podman on a machine without an image registry: a Debian base made offline, builds, and runs.

The recipe (``../shared/BRIEF.md`` §7): ``mmdebstrap`` writes a minimal Debian with python3 and
its venv module from Debian's packages, ``podman import`` turns it into ``localhost/...``; builds
and runs use ``--network host`` and runc, with a containers.conf that asks for no ulimits, no
pids limit and the cgroupfs manager (or runs fail with setrlimit or "cgroups in hybrid mode"
errors). :func:`podman_or_skip` says why and skips where any of it is missing or cannot run;
what fails after that (our image, our server) fails the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

#: The cached base image: made once per machine, reused while ``podman image exists`` says so.
BASE_IMAGE = "localhost/mlaas4hep-base:bookworm"
BUILDER_IMAGE = "localhost/mlaas4hep-base-dev:bookworm"
CONTAINERS_CONF = """\
[containers]
default_ulimits = []
pids_limit = 0
[engine]
cgroup_manager = "cgroupfs"
"""


class Podman:
    """``podman`` with this machine's settings; :meth:`__call__` runs a subcommand and checks it."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.runc = shutil.which("runc", path="/usr/sbin:/usr/bin:/sbin:/bin") or "runc"
        conf = workdir / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.engine = f"podman --runtime {self.runc}"

    def argv(self, *args: str) -> list[str]:
        return [*self.engine.split(), *args]

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        r = subprocess.run(self.argv(*args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {r.returncode}:\n{r.stderr[-3000:]}")
        return r


def podman_or_skip(workdir: Path) -> Podman:
    """A working podman with the cached Debian base image, or ``pytest.skip`` saying what is missing."""
    missing = [p for p in ("podman", "runc", "mmdebstrap") if not shutil.which(p, path="/usr/sbin:/usr/bin")]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install podman runc mmdebstrap)")
    pm = Podman(workdir)
    _debian(pm, BASE_IMAGE, "python3,python3-venv")
    probe = pm("run", "--rm", "--network", "host", BASE_IMAGE, "python3", "-c", "print(6 * 7)", check=False)
    if probe.stdout.strip() != "42":
        pytest.skip(f"podman cannot run a container here: {probe.stderr.strip()[-300:]}")
    return pm


def builder_image(pm: Podman) -> str:
    """The Debian base with a C compiler and Python's headers (the image's BUILDER), made once."""
    _debian(pm, BUILDER_IMAGE, "python3,python3-venv,python3-dev,gcc,libc6-dev")
    return BUILDER_IMAGE


def _debian(pm: Podman, image: str, packages: str) -> None:
    """A minimal Debian bookworm with ``packages``, imported as ``image`` unless it exists."""
    if pm("image", "exists", image, check=False).returncode == 0:
        return
    tar = pm.workdir / f"{image.rsplit('/', 1)[-1].replace(':', '-')}.tar"
    made = subprocess.run(
        ["mmdebstrap", "--variant=minbase", f"--include={packages}", "bookworm", str(tar)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if made.returncode != 0:
        pytest.skip(f"mmdebstrap cannot make a Debian base here: {made.stderr.strip()[-300:]}")
    pm("import", str(tar), image, timeout=300)
    tar.unlink()


def host_pip_volumes(workdir: Path) -> list[str]:
    """``--volume`` options that give pip inside a build the host's certificate bundle and local indexes.

    Behind a TLS-intercepting proxy pip needs the host's CA bundle; local package indexes
    (``file://`` find-links and extra indexes) make a cold build faster. Read from the host's
    ``pip config list``; nothing when the host's pip has no such settings.
    """
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
    ).stdout
    settings: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name in ("cert", "find-links", "extra-index-url", "index-url"):
            settings[name] = value.strip().strip("'\"")
    volumes, conf = [], ["[global]"]
    for name, value in settings.items():
        kept = []
        for item in value.split():
            path = item.removeprefix("file://")
            if "://" in path:  # a remote index is reached through the host's network as it is
                kept.append(item)
            elif Path(path).exists():
                # an index's pages may link to files beside simple/: mount its parent
                top = Path(path).parent if path.rstrip("/").endswith("/simple") else Path(path)
                volumes += ["--volume", f"{top}:{top}:ro"]
                kept.append(item)
        if kept:
            conf.append(f"{name} = {' '.join(kept)}")
    if len(conf) == 1:
        return []
    pip_conf = workdir / "pip.conf"
    pip_conf.write_text("\n".join(conf) + "\n")
    return [*volumes, "--volume", f"{pip_conf}:/etc/pip.conf:ro"]


def wait_ready(url: str, container: str, pm: Podman, timeout: float = 60, verify: Any = True) -> None:
    """Until ``url`` answers 200, or fail with the container's log."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2, verify=verify).status_code == 200:
                return
        except httpx.TransportError:
            pass
        state = pm("inspect", "--format", "{{.State.Running}}", container, check=False).stdout.strip()
        if state == "false":
            break
        time.sleep(0.3)
    logs = pm("logs", container, check=False)
    raise AssertionError(f"{container} not ready at {url}:\n{(logs.stdout + logs.stderr)[-3000:]}")
