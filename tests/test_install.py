"""The install path: `make demo` needs neither root nor apt; missing system packages are named.

What a physicist on lxplus or a laptop relies on: ``make demo`` runs pip and the
demo only, while ``make test`` (and ``mlaas4hep demo --remote``) say which
system package is missing and how to install it, without prompting for a
password. The full ``make demo`` on a fresh clone as a non-root user is checked
by hand (it takes minutes); these tests check the recipes and the messages.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mlaas4hep.localservers import XRootDServer, public_dir

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = re.compile(r"\b(apt-get|apt|dnf|yum|sudo|system-deps)\b")


def fresh_copy(tmp_path: Path) -> Path:
    """The files the Makefile uses, as in a fresh clone (no .venv)."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / ".ci", tmp_path / ".ci")
    return tmp_path


def make_n(where: Path, target: str, *variables: str) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE") and k != "PY"}
    out = subprocess.run(
        ["make", "-n", target, *variables], cwd=where, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


def commands_of(script: Path) -> list[str]:
    """The lines of a shell script that run something (not comments, not messages)."""
    lines = []
    for line in script.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith(("#", '"')) or re.match(r"(say|fail|echo|printf)\b", s):
            continue  # a message, or a hint line continuing one
        lines.append(s)
    return lines


def test_make_demo_runs_pip_and_the_demo_only(tmp_path):
    lines = make_n(fresh_copy(tmp_path), "demo")
    assert lines == [
        "bash .ci/install.sh .venv all",
        "touch .venv/.installed",
        ".venv/bin/mlaas4hep demo --out demo-out",
    ]
    # and the install script never calls a system package manager or sudo
    run = [c for c in commands_of(ROOT / ".ci" / "install.sh") if SYSTEM.search(c)]
    assert run == [], run


def test_make_test_installs_the_system_packages(tmp_path):
    lines = make_n(fresh_copy(tmp_path), "test")
    assert "bash .ci/system-deps.sh" in lines
    # on pytest-xdist workers, one per core the process may use (at most 4); TEST_JOBS=0: one process
    cores = min(4, len(os.sched_getaffinity(0)))
    assert lines[-1] == f".venv/bin/python -m pytest -q --durations=30 -n {cores} --dist loadscope tests"
    one = make_n(tmp_path, "test", "TEST_JOBS=0")[-1]
    assert one == ".venv/bin/python -m pytest -q --durations=30 -n 0 --dist loadscope tests"


def as_unprivileged(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser") is None:
        pytest.skip("runuser is needed to run as an unprivileged user")
    return ["runuser", "-u", "nobody", "--", *cmd]


@pytest.mark.parametrize("with_apt", [True, False], ids=["debian", "el9"])
def test_system_deps_without_root_says_what_to_install_and_stops(with_apt):
    """No root and no sudo: two lines naming the packages, exit 1, no password prompt."""
    tmp_path = public_dir("mlaas4hep-sysdeps-")  # readable by the unprivileged user
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for prog in ["bash", "id", "env"] + (["apt-get"] if with_apt else []):
        (bin_dir / prog).symlink_to(shutil.which(prog) or f"/usr/bin/{prog}")
    script = tmp_path / "system-deps.sh"
    shutil.copy(ROOT / ".ci" / "system-deps.sh", script)
    # xrootd, chromium, podman and mmdebstrap are never in /usr/sbin; nginx and runc often are
    # (the script looks there too, so those count as present when they are)
    missing = ["xrootd", "nginx", "chromium", "podman", "runc", "mmdebstrap"]
    deb = ["xrootd-server", "xrootd-client", "nginx-light", "chromium", "podman", "runc", "mmdebstrap"]
    rpm = ["xrootd-server", "xrootd-client", "nginx", "chromium", "podman", "runc", "mmdebstrap"]
    for prog, d, r in (("nginx", "nginx-light", "nginx"), ("runc", "runc", "runc")):
        if any(os.access(f"{sbin}/{prog}", os.X_OK) for sbin in ("/usr/sbin", "/sbin")):
            missing.remove(prog)
            deb.remove(d)
            rpm.remove(r)
    cmd = as_unprivileged([str(bin_dir / "env"), "-i", f"PATH={bin_dir}", str(bin_dir / "bash"), str(script)])
    try:
        res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert res.returncode == 1
    assert res.stdout == ""
    assert res.stderr.splitlines() == [
        f"make test needs system packages that are missing: {' '.join(missing)} ('make demo' does not).",
        f"Install them as root: apt-get install {' '.join(deb)} (Debian/Ubuntu), "
        f"or dnf install epel-release && dnf install {' '.join(rpm)} (EL9).",
    ]


def test_a_missing_xrootd_is_named_with_its_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError) as err:
        XRootDServer(tmp_path)
    assert str(err.value) == (
        "xrootd is not installed (root:// reads need it: 'mlaas4hep demo --remote' and the tests); "
        "as root: apt-get install xrootd-server (Debian/Ubuntu) "
        "or dnf install epel-release && dnf install xrootd-server (EL9)"
    )
