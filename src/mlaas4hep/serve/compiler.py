"""``mlaas4hep compile``: build the server's hot path (:data:`.native.MODULES`) with mypyc.

mypyc (part of mypy: ``pip install 'mlaas4hep[compile]'``) type-checks the
package and turns each listed module into a C extension; a C compiler is
needed (``gcc``, Debian's ``build-essential``). The build runs on a copy of
the package's sources in a folder of its own (:func:`work_folder`), so a failed
build leaves the installed package as it was; the extensions go to a new folder of
``_compiled/``, and the manifest of the sources they were built from then
becomes ``_compiled/current.json`` in one rename. Nothing changes for a server
already running (its build folder is kept): the next one to start uses the new
build (:mod:`.native`). About a minute and a half on two cores. ``pip uninstall``
leaves ``_compiled/`` behind: remove it with the package's folder.

The build folder is kept between builds (under ``~/.cache/mlaas4hep/compile``), as
mypyc's separate compilation expects: mypy re-reads only the sources that
changed (its cache is in the folder), mypyc rewrites only the C files whose code
changed, and a group whose C files did not change is not compiled again. After
an edit outside the compiled modules a build takes seconds, after an edit of one
of them about a minute (its group is compiled again), instead of a minute and a
half (bench/RESULTS-serve.md, "Stop 23"). A failed build removes its folder, so the
next one starts afresh, and a folder no build used for 30 days is removed.
``MLAAS4HEP_COMPILE_CACHE`` names another parent folder, or ``off`` builds in a
temporary folder every time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ..terminal import CommandError
from . import native

PACKAGE_ROOT = native.HERE.parent  # the mlaas4hep package

#: The parent of the kept build folders (``off``: a temporary folder for each build).
CACHE_ENV = "MLAAS4HEP_COMPILE_CACHE"

#: The build script: mypyc's own (``python -m mypyc`` writes one like it), with the groups of
#: :data:`.native.GROUPS`, each a shared library, built side by side (``build_ext --parallel``).
SETUP = """\
import os
import sys
from setuptools import setup
from mypyc.build import mypycify

groups = {groups!r}
paths = [p for g, _ in groups for p in g]
setup(
    name="mlaas4hep_compiled",
    ext_modules=mypycify(
        ["--ignore-missing-imports", *paths], opt_level=os.environ["MYPYC_OPT_LEVEL"], separate=groups
    ),
)
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)  # built: skip freeing mypy's analysis at exit (about 25 s)
"""


def requirements() -> str | None:
    """Why this machine cannot compile, or None."""
    if importlib.util.find_spec("mypyc") is None:
        return "mypyc is not installed: pip install 'mlaas4hep[compile]' (it comes with mypy)"
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler}) on PATH: install one (Debian: apt-get install build-essential)"
    if not os.access(native.HERE, os.W_OK):
        return f"cannot write to {native.HERE}: run it as the installation's owner"
    return None


def _package_sources() -> dict[Path, Path]:
    """The package's Python sources (for mypy's view of every import) by their path in the
    package, without built files."""
    found = {}
    for pattern in ("*.py", "*.pyi", "py.typed"):  # .pyi: the protobuf modules' types
        for src in PACKAGE_ROOT.rglob(pattern):
            rel = src.relative_to(PACKAGE_ROOT)
            if "__pycache__" in rel.parts or any(p.startswith("_compiled") for p in rel.parts):
                continue
            found[rel] = src
    return found


def sync_sources(dest: Path, sources: dict[Path, Path] | None = None) -> list[Path]:
    """Make ``dest/mlaas4hep`` hold ``sources`` (:func:`_package_sources`): write the files
    whose bytes differ, remove the sources that are gone; an unchanged file keeps its
    modification time (mypy then skips it). Returns the paths written or removed."""
    sources = _package_sources() if sources is None else sources
    root, changed = dest / "mlaas4hep", []
    for rel, src in sources.items():
        out, data = root / rel, src.read_bytes()
        if not out.is_file() or out.read_bytes() != data:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
            changed.append(rel)
    for pattern in ("*.py", "*.pyi", "py.typed"):
        for old in list(root.rglob(pattern)) if root.is_dir() else []:
            if old.relative_to(root) not in sources:
                old.unlink()
                changed.append(old.relative_to(root))
    return changed


def work_folder() -> Path | None:
    """Where this installation's builds run, kept between builds; None: a temporary folder.

    One folder per installed package, Python, mypy version, optimisation level and C
    compiler settings (``CC``, ``CFLAGS``), since a C file that did not change is not
    compiled again."""
    parent = os.environ.get(CACHE_ENV, "").strip()
    if native.says_off(parent):
        return None
    import mypy.version

    if not parent:
        parent = str(
            Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlaas4hep" / "compile"
        )
    settings = [str(PACKAGE_ROOT.resolve()), native.soabi(), mypy.version.__version__, _opt_level()]
    settings += [os.environ.get(v, "") for v in ("CC", "CFLAGS")]
    return Path(parent) / hashlib.sha256("\0".join(settings).encode()).hexdigest()[:16]


def _opt_level() -> str:
    return os.environ.get("MYPYC_OPT_LEVEL", "3")


#: A kept build folder not used for this many days is removed by the next build (of any installation).
UNUSED_DAYS = 30


def prune_unused(parent: Path, days: float = UNUSED_DAYS) -> list[Path]:
    """Remove the build folders under ``parent`` that no build used for ``days`` (those of
    uninstalled packages, removed virtual environments); returns them."""
    cutoff, removed = time.time() - days * 86400, []
    for folder in parent.iterdir() if parent.is_dir() else []:
        with contextlib.suppress(OSError):
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder)
                removed.append(folder)
    return removed


@contextlib.contextmanager
def _building_in(kept: Path | None) -> Iterator[Path]:
    """The folder a build runs in: ``kept``, removed if the build fails, or a temporary one."""
    if kept is None:
        with tempfile.TemporaryDirectory(prefix="mlaas4hep-compile-") as tmp:
            yield Path(tmp)
        return
    kept.mkdir(parents=True, exist_ok=True)
    os.utime(kept)  # in use: see prune_unused
    prune_unused(kept.parent)
    try:
        yield kept
    except BaseException:
        shutil.rmtree(kept, ignore_errors=True)  # the next build starts afresh
        raise


def compile_hot_path(log: Path | None = None) -> dict[str, object]:
    """Build the extensions and make them :data:`.native.COMPILED`'s current build; returns its manifest.

    ``log``: where mypyc's and the compiler's output go (on failure it is kept in any case).
    One build at a time per installation (a lock in ``_compiled/``); the manifest records the
    sources it was built from as they were when the build started.
    """
    why = requirements()
    if why is not None:
        raise CommandError(f"cannot compile: {why}")
    import mypy.version

    native.COMPILED.mkdir(exist_ok=True)
    with open(native.COMPILED / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second `mlaas4hep compile` waits for this one
        return _build(log, mypy.version.__version__)


def _build(log: Path | None, mypy_version: str) -> dict[str, object]:
    t0 = time.monotonic()
    with _building_in(work_folder()) as work:
        sync_sources(work)
        digests = {m: native.source_hash(work / "mlaas4hep/serve" / f"{m}.py") for m in native.MODULES}
        depends = native.dependencies_hash(work / "mlaas4hep")
        groups = [([f"mlaas4hep/serve/{m}.py" for m in ms], name) for name, ms in native.GROUPS.items()]
        (work / "setup.py").write_text(SETUP.format(groups=groups))
        log_path = log or work / "compile.log"
        jobs = max(1, min(len(groups), os.cpu_count() or 1))  # the groups' C compiles side by side
        with open(log_path, "wb") as out:
            done = subprocess.run(
                [sys.executable, "setup.py", "build_ext", "--inplace", "--parallel", str(jobs)],
                cwd=work,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "MYPYC_OPT_LEVEL": _opt_level()},
            )
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]  # .cpython-311-x86_64-linux-gnu.so
        files = {m: f"{m}{suffix}" for m in native.MODULES}
        runtimes = [f"{name}__mypyc{suffix}" for name in native.GROUPS]
        built = all((work / r).is_file() for r in runtimes) and all(
            (work / "mlaas4hep/serve" / f).is_file() for f in files.values()
        )
        if done.returncode != 0 or not built:
            kept = log_path
            if log is None:  # the temporary folder goes: keep its log
                fd, name = tempfile.mkstemp(prefix="mlaas4hep-compile-", suffix=".log")
                os.close(fd)
                kept = Path(shutil.copyfile(log_path, name))
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            what = (
                f"mypyc failed (exit {done.returncode})" if done.returncode else "mypyc left extensions out"
            )
            raise CommandError(f"{what}; its output: {kept}\n" + "\n".join(tail))
        build = f"build-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"
        folder = native.COMPILED / build
        folder.mkdir()
        try:
            for f in files.values():
                shutil.copyfile(work / "mlaas4hep/serve" / f, folder / f)
            for r in runtimes:
                shutil.copyfile(work / r, folder / r)
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    names = [*files.values(), *runtimes]
    manifest: dict[str, object] = {
        "build": build,
        "abi": native.soabi(),
        "mypy": mypy_version,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.monotonic() - t0, 1),
        "modules": digests,
        "dependencies": depends,
        "files": files,
        "runtimes": runtimes,
        "sizes": {f: (folder / f).stat().st_size for f in names},
    }
    current = native.COMPILED / native.MANIFEST
    previous = _build_of(current)
    tmp_manifest = current.with_name(f".{native.MANIFEST}.{os.getpid()}")
    tmp_manifest.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp_manifest, current)  # servers started from now on load this build
    for old in native.COMPILED.glob("build-*"):  # the previous build stays: servers may run on it
        if old.name not in (build, previous):
            shutil.rmtree(old, ignore_errors=True)
    return manifest


def _build_of(manifest: Path) -> str | None:
    try:
        return str(json.loads(manifest.read_text()).get("build"))
    except (OSError, ValueError):
        return None
