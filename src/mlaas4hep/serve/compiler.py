"""``mlaas4hep compile``: build the server's hot path (:data:`.native.MODULES`) with mypyc.

mypyc (part of mypy: ``pip install 'mlaas4hep[compile]'``) type-checks the
package and turns each listed module into a C extension; a C compiler is
needed (``gcc``, Debian's ``build-essential``). The build runs on a copy of
the package's sources in a temporary folder, so a failed build leaves the
installed package as it was; the extensions and a manifest of the sources
they were built from then replace ``_compiled/`` in one rename. Nothing
changes for a server already running: the next one to start uses them
(:mod:`.native`). About two minutes on two cores.
"""

from __future__ import annotations

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
from pathlib import Path

from ..terminal import CommandError
from . import native

PACKAGE_ROOT = native.HERE.parent  # the mlaas4hep package


def requirements() -> str | None:
    """Why this machine cannot compile, or None."""
    if importlib.util.find_spec("mypyc") is None:
        return "mypyc is not installed: pip install 'mlaas4hep[compile]' (it comes with mypy)"
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler}) on PATH: install one (Debian: apt-get install build-essential)"
    return None


def _copy_sources(dest: Path) -> None:
    """The package's Python sources (for mypy's view of every import), without built files."""
    for pattern in ("*.py", "*.pyi", "py.typed"):  # .pyi: the protobuf modules' types
        for src in PACKAGE_ROOT.rglob(pattern):
            rel = src.relative_to(PACKAGE_ROOT)
            if "__pycache__" in rel.parts or any(p.startswith("_compiled") for p in rel.parts):
                continue
            out = dest / "mlaas4hep" / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, out)


def compile_hot_path(log: Path | None = None) -> dict[str, object]:
    """Build the extensions and install them in :data:`.native.COMPILED`; returns the manifest.

    ``log``: where mypyc's and the compiler's output go (kept on failure; default a temporary file).
    """
    why = requirements()
    if why is not None:
        raise CommandError(f"cannot compile: {why}")
    import mypy.version

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mlaas4hep-compile-") as tmp:
        work = Path(tmp)
        _copy_sources(work)
        sources = [f"mlaas4hep/serve/{m}.py" for m in native.MODULES]
        log_path = log or Path(tempfile.mkstemp(prefix="mlaas4hep-compile-", suffix=".log")[1])
        with open(log_path, "wb") as out:
            done = subprocess.run(
                [sys.executable, "-m", "mypyc", "--ignore-missing-imports", *sources],
                cwd=work,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "MYPYC_OPT_LEVEL": os.environ.get("MYPYC_OPT_LEVEL", "3")},
            )
        if done.returncode != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise CommandError(
                f"mypyc failed (exit {done.returncode}); its output: {log_path}\n" + "\n".join(tail)
            )
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]  # .cpython-311-x86_64-linux-gnu.so
        files = {m: f"{m}{suffix}" for m in native.MODULES}
        runtime = list(work.glob(f"*__mypyc{suffix}"))
        if len(runtime) != 1 or not all((work / "mlaas4hep/serve" / f).is_file() for f in files.values()):
            raise CommandError(f"mypyc did not write every extension; its output: {log_path}")
        stage = native.COMPILED.with_name("_compiled.new")
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        for f in files.values():
            shutil.copyfile(work / "mlaas4hep/serve" / f, stage / f)
        shutil.copyfile(runtime[0], stage / runtime[0].name)
        manifest: dict[str, object] = {
            "abi": native.soabi(),
            "mypy": mypy.version.__version__,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.monotonic() - t0, 1),
            "modules": {m: native.source_hash(work / "mlaas4hep/serve" / f"{m}.py") for m in native.MODULES},
            "files": files,
            "runtime": runtime[0].name,
        }
        (stage / native.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if log is None:
            log_path.unlink()
    old = native.COMPILED.with_name("_compiled.old")
    shutil.rmtree(old, ignore_errors=True)
    if native.COMPILED.exists():
        native.COMPILED.rename(old)
    stage.rename(native.COMPILED)
    shutil.rmtree(old, ignore_errors=True)
    return manifest
