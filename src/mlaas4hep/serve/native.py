"""The compiled hot path: the request path's modules as C extensions, used only when they match.

A single-row inference costs the server more in the Python interpreter than in
the model (about 60 % of its CPU at 64 clients, ``perf``). The modules every
request goes through (:data:`MODULES`: the HTTP and gRPC front ends, the data
plane, the batcher, the tensor codecs and the metrics) are plain, fully typed
Python, so mypyc (shipped with mypy) can compile them to C extensions:
``mlaas4hep compile`` (:mod:`.compiler`) does, into a new folder of
``_compiled/`` beside this file, then points ``_compiled/current.json`` (the
build's manifest) at it in one rename. A build folder is never changed after
that, and the one before it is kept, so a server that started on it goes on
loading its modules from it.

:func:`install` (run when the package is imported) puts a finder in front of
Python's own that loads those extensions instead of the ``.py`` files, but
only when they were built by this Python from the sources now on disk: each
compiled module's SHA-256, and one digest of every source of ``mlaas4hep.serve``
and of the package's top-level modules (the types the compiled code checks come
from them). The build's shared libraries (:data:`GROUPS`), which hold the code
of all the modules, are loaded at once, so a process runs one build. Otherwise every module
stays interpreted, never a mix, and :func:`state` says why. The same code runs
either way (compiled, it checks its type annotations at run time); the compiled
one costs less CPU per request. ``MLAAS4HEP_COMPILED=0`` turns it off.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The modules of :mod:`mlaas4hep.serve` compiled by ``mlaas4hep compile`` (those on every request's
#: path), in groups: each group is a shared library of its own (the module ``<name>__mypyc``), and
#: the groups compile side by side (on 2 cores the whole build takes 92-98 s instead of 150-179).
#: Calls within a group may be inlined; a request crosses groups a few times.
GROUPS = {
    "mlaas4hep_grpc_metrics": (
        "grpc_server",
        "grpccall",
        "grpcframes",
        "grpcwire",
        "h2credit",
        "h2limits",
        "metrics",
        "rawcontents",
    ),
    "mlaas4hep_core": (
        "batching",
        "bodytimer",
        "dataplane",
        "fastpath",
        "http",
        "httpfront",
        "httpproto",
        "intake",
        "tensors",
        "v2",
    ),
}
MODULES = tuple(sorted(m for group in GROUPS.values() for m in group))
PACKAGE = "mlaas4hep.serve"
HERE = Path(__file__).resolve().parent
#: Where ``mlaas4hep compile`` puts its builds, and the manifest of the current one.
COMPILED = HERE / "_compiled"
MANIFEST = "current.json"
ENV = "MLAAS4HEP_COMPILED"


@dataclass(frozen=True)
class State:
    """Whether the compiled modules are in use (``active``), and if not, why (``reason``)."""

    active: bool
    reason: str
    built: dict[str, Any]  # the manifest, or {} when there is none


_state = State(False, "not checked yet", {})


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dependencies(package: Path = HERE.parent) -> list[Path]:
    """The sources whose types the compiled modules may check: ``serve/`` and the package's top level."""
    serve = package / "serve"
    found = [*package.glob("*.py"), *(serve / "_proto").glob("*.pyi")]
    found += [p for p in serve.rglob("*.py") if not p.relative_to(serve).parts[0].startswith("_compiled")]
    return sorted(found)


def dependencies_hash(package: Path = HERE.parent, read: Callable[[Path], bytes] = Path.read_bytes) -> str:
    """One SHA-256 over :func:`dependencies` (their paths in the package and their bytes)."""
    h = hashlib.sha256()
    for path in dependencies(package):
        h.update(str(path.relative_to(package)).encode() + b"\0" + read(path) + b"\0")
    return h.hexdigest()


def says_off(value: str) -> bool:
    """Whether an environment variable's value turns something off (``0``, ``no``, ``false``, ``off``)."""
    return value.strip().lower() in ("0", "no", "false", "off")


def turned_off() -> bool:
    return says_off(os.environ.get(ENV, ""))


def soabi() -> str:
    """This Python's ABI tag (``cpython-311-x86_64-linux-gnu``): extensions are built for one."""
    return str(sys.implementation.cache_tag) + "/" + importlib.machinery.EXTENSION_SUFFIXES[0]


def check(folder: Path = COMPILED, ignore_env: bool = False) -> State:
    """What :func:`install` would do with ``folder``: the extensions' state, without loading them."""
    if turned_off() and not ignore_env:
        return State(False, f"turned off by {ENV}={os.environ[ENV]}", {})
    try:
        built = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return State(False, "not compiled (run `mlaas4hep compile`)", {})
    except (OSError, ValueError) as err:
        return State(False, f"{folder / MANIFEST} is unreadable ({err}): run `mlaas4hep compile`", {})
    if built.get("abi") != soabi():
        return State(False, f"compiled for {built.get('abi')}, not this Python ({soabi()})", built)
    modules = built.get("modules", {})
    if sorted(modules) != sorted(MODULES):
        return State(False, "compiled from another list of modules: run `mlaas4hep compile`", built)
    sources: dict[Path, bytes] = {}  # each file read once: the compiled ones are dependencies too

    def read(path: Path) -> bytes:
        data = sources.get(path)
        if data is None:
            data = sources[path] = path.read_bytes()
        return data

    for name, digest in modules.items():
        if hashlib.sha256(read(HERE / f"{name}.py")).hexdigest() != digest:
            return State(False, f"{name}.py changed since it was compiled: run `mlaas4hep compile`", built)
    if built.get("dependencies") != dependencies_hash(read=read):
        return State(
            False, "a module they use changed since they were compiled: run `mlaas4hep compile`", built
        )
    where = folder / str(built.get("build", ""))
    sizes = built.get("sizes", {})
    runtimes = built.get("runtimes", [])
    wrong = [f for f in [*built.get("files", {}).values(), *runtimes] if _size(where / f) != sizes.get(f)]
    if wrong or len(built.get("files", {})) != len(MODULES) or not runtimes:
        return State(False, f"{where} lacks {', '.join(wrong) or 'modules'}: run `mlaas4hep compile`", built)
    return State(True, f"compiled by mypyc {built.get('mypy', '?')} ({len(MODULES)} modules)", built)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the compiled extension of each module in ``paths`` (full name -> ``.so`` file)."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        where = self.paths.get(fullname)
        if where is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(where))
        return importlib.util.spec_from_file_location(fullname, where, loader=loader)


def install(folder: Path = COMPILED) -> State:
    """Load the compiled modules from ``folder`` from now on, when :func:`check` allows it."""
    global _state
    state = check(folder)
    if state.active and not any(isinstance(f, _Finder) for f in sys.meta_path):
        loaded = [m for m in MODULES if f"{PACKAGE}.{m}" in sys.modules]
        if loaded:  # too late for a consistent set: stay interpreted
            state = State(False, f"{PACKAGE}.{loaded[0]} was imported before the compiled modules", {})
        else:
            built = state.built
            where = folder / built["build"]
            try:  # the code of every module: loaded now, so that this process runs this build
                for runtime in built["runtimes"]:
                    _load_runtime(where / runtime)
            except (ImportError, OSError, AssertionError) as err:
                state = State(False, f"cannot load {where}: {err}", built)
            else:
                paths = {f"{PACKAGE}.{m}": where / f for m, f in built["files"].items()}
                sys.meta_path.insert(0, _Finder(paths))
    _state = state
    return state


def _load_runtime(path: Path) -> None:
    """A group's shared library, as the module its extensions import (``<group>__mypyc``)."""
    name = path.name.split(".")[0]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module


def state() -> State:
    """Whether this process serves from the compiled modules, and why (not)."""
    return _state
