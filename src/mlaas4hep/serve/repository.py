"""The model repository: versioned bundles on disk, loaded sessions in memory.

Layout (persistent across restarts)::

    DIR/
      {name}/
        {version}/          one bundle directory (model.onnx, bundle.json, ...)
        serving.json        optional per-model settings (max_batch, max_delay_ms)
      .staging/             uploads being unpacked and checked (never visible)

Versions are positive integers; "latest" (the default everywhere) is the
largest. An install is atomic: files are written into ``.staging``, the bundle
is loaded with onnxruntime and its ``bundle.json`` checked, and only then is the
directory renamed into place (one ``rename`` on the same file system). A crash
mid-upload leaves at most a stale staging folder, which the next start removes
(a staging folder is live while its process holds a ``flock`` on its ``.lock``
file: see :func:`staged`).

What is on disk is checked too: a version directory whose name is not a
version (1 <= v < 2**63) or whose ``bundle.json`` breaks the schema
(:mod:`mlaas4hep.bundle_schema`) is never served; it is logged and listed in
:attr:`Repository.broken`, which ``/models`` and the repository index report.

Loaded :class:`~mlaas4hep.bundle.Predictor` objects sit in an LRU cache of
``max_loaded`` entries; an evicted model is reloaded on its next request.
A model can be *unloaded* explicitly (the repository extension of the Open
Inference Protocol): it stays on disk but refuses inference until loaded again
(the set of unloaded models is kept in ``DIR/.state.json``).

Several server processes may share one directory (``--workers``, ``shared=True``):
every change rewrites ``DIR/.generation``, and each process compares that file's
identity (one ``stat``) before answering, rescanning when another process changed the
repository. Each version directory is identified by its inode, so a version
deleted and uploaded again is never served from a stale cache.

All methods are blocking (disk, onnxruntime): the app calls them from a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import bundle, bundle_schema
from ..bundle import BundleError, Predictor
from ..bundle_spec import BundleSpec
from ..errors import Mlaas4hepError
from .errors import (
    BundleInvalid,
    InvalidRequest,
    ModelBroken,
    ModelNotFound,
    ModelUnloaded,
    VersionConflict,
)

log = logging.getLogger("mlaas4hep.serve")
MAX_VERSION = bundle_schema.MAX_VERSION
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
#: Keys of ``serving.json`` (and of the ``serving`` object of ``bundle.json``).
SERVING_KEYS = {"max_batch": int, "max_delay_ms": float, "timeout_s": float}


def check_name(name: str) -> str:
    """A model name: letters, digits, ``_ . -``; no path separators."""
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        raise InvalidRequest(f"invalid model name {name!r}: use letters, digits, '_', '.', '-' (at most 100)")
    return name


def parse_version(version: Any) -> int | None:
    """``None``/``""``/``"latest"`` mean the latest version; otherwise an integer 1 <= v < 2**63."""
    if version is None or version == "" or version == "latest":
        return None
    msg = f"invalid model version {str(version)[:40]!r}: versions are integers from 1 to 2**63-1"
    if isinstance(version, bool) or not isinstance(version, (int, str)):
        raise InvalidRequest(msg)
    text = str(version).strip()
    if not text.lstrip("+").isdigit() or len(text) > 20:
        raise InvalidRequest(msg)
    v = int(text)
    if not 1 <= v <= MAX_VERSION:
        raise InvalidRequest(msg)
    return v


class Repository:
    """Bundles under ``root``, with at most ``max_loaded`` onnxruntime sessions in memory."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        max_loaded: int = 16,
        threads: int | None = None,
        shared: bool = False,
    ):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_loaded = max(1, int(max_loaded))
        self.threads = threads
        self.shared = shared  # other processes serve the same directory: check .generation per request
        self._staging = self.root / ".staging"
        self._staging.mkdir(exist_ok=True)
        clean_staging(self._staging)  # leftovers of a crash
        self._lock = threading.RLock()
        self._loaded: OrderedDict[tuple[str, int], Predictor] = OrderedDict()
        self._loading: dict[tuple[str, int], threading.Lock] = {}
        self._meta: dict[tuple[str, int], dict[str, Any]] = {}
        self._specs: dict[tuple[str, int], BundleSpec] = {}  # valid while its .meta is the cached meta
        self._meta_sig: dict[tuple[str, int], tuple[tuple[int, int, int], dict[str, Any]]] = {}
        #: Version directories that are not served, with the reason: ``{"name", "version", "error"}``.
        self.broken: list[dict[str, Any]] = []
        self._unloaded: set[str] = set()
        self._index: dict[str, list[int]] = {}
        self._stamps: dict[tuple[str, int], int] = {}
        self._gen_file = self.root / ".generation"
        self._gen_seen: tuple[int, int] | None = None
        self.generation = 0  # bumped on every change seen by this process
        self.rescan()

    # ------------------------------------------------------------ inventory
    def rescan(self) -> None:
        """Re-read the directory (the in-memory index serves every request in between).

        Every version directory's ``bundle.json`` is checked against the schema
        (once per change of the file): a bad entry is never served, it is logged
        and listed in :attr:`broken` with the reason, and the others are served.
        """
        self._gen_seen = self._gen_signature()
        index: dict[str, list[int]] = {}
        stamps: dict[tuple[str, int], int] = {}
        metas: dict[tuple[str, int], dict[str, Any]] = {}
        broken: list[dict[str, Any]] = []
        for d in sorted(self.root.iterdir()):
            if not (d.is_dir() and NAME_RE.match(d.name)):
                continue
            vs = []
            for v in sorted(d.iterdir()):
                if not (v.name.isascii() and v.name.isdigit()):
                    continue
                reason = self._check_version_dir(d.name, v, metas)
                if reason is None:
                    key = (d.name, int(v.name))
                    vs.append(key[1])
                    stamps[key] = v.stat().st_ino
                    continue
                entry = {"name": d.name, "version": v.name, "error": reason}
                broken.append(entry)
                if entry not in self.broken:  # log each problem once, not at every rescan
                    log.warning("skipping %s: %s", v, reason)
            if vs:
                index[d.name] = sorted(vs)
        try:
            unloaded = set(json.loads((self.root / ".state.json").read_text()).get("unloaded", []))
        except (OSError, ValueError, AttributeError, TypeError):
            unloaded = set()
        with self._lock:
            self._index, self._unloaded = index, unloaded & set(index)
            self._meta = {k: m for k, m in metas.items() if k in stamps}
            self._specs = {k: sp for k, sp in self._specs.items() if self._meta.get(k) is sp.meta}
            self._meta_sig = {k: v for k, v in self._meta_sig.items() if k in metas}
            self.broken = broken
            for key in [k for k in self._loaded if stamps.get(k) != self._stamps.get(k) or k[0] in unloaded]:
                del self._loaded[key]
            self._stamps = stamps
            self.generation += 1

    def _check_version_dir(
        self, name: str, vdir: Path, metas: dict[tuple[str, int], dict[str, Any]]
    ) -> str | None:
        """Why the version directory ``vdir`` cannot be served (None: it can); fills ``metas``."""
        if len(vdir.name) > 19 or not 1 <= int(vdir.name) <= MAX_VERSION or vdir.name != str(int(vdir.name)):
            return "the version must be an integer from 1 to 2**63-1, written without leading zeros"
        f = vdir / "bundle.json"
        try:
            st = f.stat()
        except OSError:
            return "no bundle.json" if vdir.is_dir() else "not a directory"
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        key = (name, int(vdir.name))
        cached = self._meta_sig.get(key)
        if cached is not None and cached[0] == sig:
            meta = cached[1]
        else:
            try:
                meta = bundle.read_meta(vdir)
            except BundleError as err:
                return str(err)
            self._meta_sig[key] = (sig, meta)
        metas[key] = meta
        return None

    def _gen_signature(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self._gen_file)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    def sync(self) -> None:
        """Rescan if another process changed the repository (one ``stat``; only when ``shared``)."""
        if self.shared and self._gen_signature() != self._gen_seen:
            self.rescan()

    def _changed(self) -> None:
        """Tell the other processes (and bump this one's generation).

        The file's modification time is set explicitly and strictly increases:
        file-system timestamps are coarse and inodes get reused, so two quick
        changes could otherwise leave the same (inode, mtime) signature.
        """
        old = self._gen_signature()
        t = time.time_ns()
        if old is not None and t <= old[1]:
            t = old[1] + 1
        tmp = self._gen_file.with_name(f".generation.{os.getpid()}.tmp")
        tmp.write_bytes(uuid.uuid4().hex.encode())
        os.utime(tmp, ns=(t, t))
        os.replace(tmp, self._gen_file)
        self._gen_seen = self._gen_signature()
        self.generation += 1

    def _save_state(self) -> None:
        _atomic_write(self.root / ".state.json", json.dumps({"unloaded": sorted(self._unloaded)}).encode())

    def stamp(self, name: str, version: int) -> int:
        """Identity of a version's directory (changes when it is replaced)."""
        return self._stamps.get((name, version), 0)

    def names(self) -> list[str]:
        """Models with at least one version."""
        self.sync()
        return sorted(self._index)

    def versions(self, name: str) -> list[int]:
        return list(self._index.get(name, ()))

    def resolve(self, name: str, version: Any = None) -> tuple[str, int]:
        """``(name, version)`` of an existing model; 404 otherwise."""
        self.sync()
        versions = self._index.get(name)
        if not versions:
            raise ModelNotFound(f"unknown model {name!r}")
        if version is None:
            return name, versions[-1]
        v = parse_version(version)
        if v is None:
            return name, versions[-1]
        if v not in versions:
            raise ModelNotFound(f"model {name!r} has no version {v} (versions: {versions})")
        return name, v

    def path(self, name: str, version: int) -> Path:
        return self.root / name / str(version)

    def meta(self, name: str, version: int) -> dict[str, Any]:
        """``bundle.json`` of a version (cached)."""
        key = (name, version)
        m = self._meta.get(key)
        if m is None:
            try:
                m = bundle.read_meta(self.path(name, version))
            except BundleError as err:
                raise ModelBroken(f"model {name!r} version {version} is broken on disk: {err}") from None
            self._meta[key] = m
        return m

    def spec(self, name: str, version: int) -> BundleSpec:
        """The parsed contract of a version (:class:`~mlaas4hep.bundle_spec.BundleSpec`), built once."""
        key = (name, version)
        meta = self.meta(name, version)
        s = self._specs.get(key)
        if s is None or s.meta is not meta:
            try:
                s = BundleSpec(meta, name, version)
            except BundleError as err:
                raise ModelBroken(f"model {name!r} version {version} cannot be served: {err}") from None
            self._specs[key] = s
        return s

    def serving(self, name: str, version: int) -> dict[str, Any]:
        """Per-model settings: ``bundle.json``'s ``serving``, overridden by ``DIR/{name}/serving.json``."""
        out = dict(self.meta(name, version).get("serving") or {})
        f = self.root / name / "serving.json"
        if f.is_file():
            try:
                extra = json.loads(f.read_text())
                if not isinstance(extra, dict):
                    raise ValueError("not an object")
                bundle_schema.check_serving(extra, "serving.json")
                out.update(extra)
            except (OSError, ValueError) as err:  # BundleError is a ValueError
                log.warning("ignoring %s: %s", f, err)
        return {k: t(out[k]) for k, t in SERVING_KEYS.items() if isinstance(out.get(k), (int, float))}

    def set_serving(self, name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and store per-model settings in ``serving.json``."""
        self.resolve(name)
        clean: dict[str, Any] = {}
        for k, v in settings.items():
            if k not in SERVING_KEYS:
                raise InvalidRequest(f"unknown serving setting {k!r} (known: {sorted(SERVING_KEYS)})")
            clean[k] = v
        try:
            bundle_schema.check_serving(clean)
        except BundleError as err:
            raise InvalidRequest(str(err).removeprefix("bundle.json ")) from None
        clean = {k: SERVING_KEYS[k](v) for k, v in clean.items()}
        _atomic_write(self.root / name / "serving.json", json.dumps(clean).encode())
        self._changed()
        return clean

    # ------------------------------------------------------------ sessions
    def is_ready(self, name: str) -> bool:
        return name not in self._unloaded  # callers resolve() (and so sync) first

    def is_loaded(self, name: str, version: int) -> bool:
        return (name, version) in self._loaded

    def predictor(self, name: str, version: int) -> Predictor:
        """The loaded bundle (loading it, and evicting the least recently used, if needed)."""
        key = (name, version)
        with self._lock:
            if name in self._unloaded:
                raise ModelUnloaded(
                    f"model {name!r} is unloaded: POST /v2/repository/models/{name}/load first"
                )
            p = self._loaded.get(key)
            if p is not None:
                self._loaded.move_to_end(key)
                return p
            lock = self._loading.setdefault(key, threading.Lock())
        with lock:  # one loader per key; others wait for it
            with self._lock:
                p = self._loaded.get(key)
            if p is None:
                try:
                    spec = self.spec(name, version)
                    p = Predictor(self.path(name, version), self.threads, False, spec)
                except (BundleError, Mlaas4hepError) as err:
                    raise ModelBroken(f"model {name!r} version {version} does not load: {err}") from None
                self._remember(key, p)
        return p

    def _remember(self, key: tuple[str, int], p: Predictor) -> None:
        with self._lock:
            self._loaded[key] = p
            self._loaded.move_to_end(key)
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)

    def loaded(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._loaded)

    def load(self, name: str) -> None:
        """Mark a model ready and load its latest version."""
        self.rescan()
        name, v = self.resolve(name)
        with self._lock:
            if name in self._unloaded:
                self._unloaded.discard(name)
                self._save_state()
                self._changed()
        self.predictor(name, v)

    def unload(self, name: str) -> None:
        """Free a model's sessions; it refuses inference until loaded again."""
        self.resolve(name)
        with self._lock:
            self._unloaded.add(name)
            for key in [k for k in self._loaded if k[0] == name]:
                del self._loaded[key]
            self._save_state()
            self._changed()

    def index(self) -> list[dict[str, Any]]:
        """The repository extension's index: every version with its state."""
        out = []
        for name in self.names():
            for v in self.versions(name):
                if name in self._unloaded:
                    state, reason = "UNAVAILABLE", "unloaded"
                else:
                    state, reason = "READY", "" if self.is_loaded(name, v) else "loads on first request"
                out.append({"name": name, "version": str(v), "state": state, "reason": reason})
        for b in self.broken:  # on disk but not served: say why
            out.append(
                {"name": b["name"], "version": b["version"], "state": "UNAVAILABLE", "reason": b["error"]}
            )
        return out

    # ------------------------------------------------------------ install / delete
    def install(
        self, files: Mapping[str, bytes], name: str | None = None, version: Any = None
    ) -> tuple[str, int]:
        """Install a bundle given as ``{file name: bytes}``; returns ``(name, version)``.

        ``name``/``version`` override those of ``bundle.json``. Without a
        version, the bundle's own is used if free, else the latest plus one.
        A TFaaS-style upload (``model.onnx`` + ``params.json`` + ``labels.txt``,
        no ``bundle.json``) gets a ``bundle.json`` written for it.
        """
        for fname in files:
            if (
                "/" in fname
                or "\\" in fname
                or fname in (".", "..")
                or not fname.endswith(bundle.ALLOWED_SUFFIXES)
            ):
                raise BundleInvalid(f"file {fname!r} may not be part of a bundle")
        if "model.onnx" not in files:
            raise BundleInvalid(f"the bundle has no model.onnx (files: {sorted(files)})")
        want = parse_version(version)
        with staged(self._staging, "upload-") as stage:
            return self._install_staged(stage, files, name, want)

    def _install_staged(
        self, stage: Path, files: Mapping[str, bytes], name: str | None, want: int | None
    ) -> tuple[str, int]:
        for fname, content in files.items():
            (stage / fname).write_bytes(content)
        if "bundle.json" not in files:
            _tfaas_bundle(stage, name)
        meta = _read_json(stage / "bundle.json", "bundle.json")
        if not isinstance(meta, dict):
            raise BundleInvalid("bundle.json must hold an object")
        name = check_name(name if name else str(meta.get("name", "")))
        meta["name"] = name
        (stage / "bundle.json").write_text(json.dumps(meta, indent=1))
        try:  # the slow part (onnxruntime builds the session), outside the lock
            predictor = Predictor(stage, self.threads, False)
        except (BundleError, Mlaas4hepError) as err:
            raise BundleInvalid(f"invalid bundle: {err}") from None
        with self._lock:
            self.sync()
            existing = self.versions(name)
            if want is None:
                mine = meta.get("version")
                want = int(mine) if isinstance(mine, int) and mine >= 1 and mine not in existing else None
                want = want or (existing[-1] + 1 if existing else 1)
                if want > MAX_VERSION:
                    raise VersionConflict(f"model {name!r} has no version number left: give one")
            elif want in existing:
                raise VersionConflict(f"model {name!r} already has version {want}: delete it first")
            meta["version"] = want
            predictor.meta["version"] = predictor.spec.version = want
            (stage / "bundle.json").write_text(json.dumps(meta, indent=1))
            target = self.path(name, want)
            target.parent.mkdir(exist_ok=True)
            try:
                os.rename(stage, target)  # atomic: the version appears whole or not at all
            except OSError:  # another process installed the same version meanwhile
                raise VersionConflict(f"model {name!r} version {want} was installed concurrently") from None
            self._index[name] = sorted(existing + [want])
            self._stamps[(name, want)] = target.stat().st_ino
            predictor.path = target
            self._meta[(name, want)] = predictor.meta  # what was written: parsed once, with the predictor
            self._specs[(name, want)] = predictor.spec
            if name in self._unloaded:
                self._unloaded.discard(name)
                self._save_state()
            self._remember((name, want), predictor)
            self._changed()
        return name, want

    def delete(self, name: str, version: Any = None) -> list[int]:
        """Remove one version, or every version when ``version`` is None; returns those removed."""
        name, _ = self.resolve(name)
        v = parse_version(version)
        with staged(self._staging, "delete-") as trash, self._lock:
            versions = self.versions(name)
            if v is not None and v not in versions:
                raise ModelNotFound(f"model {name!r} has no version {v}")
            gone = [v] if v is not None else versions
            src = self.path(name, v) if v is not None else self.root / name
            os.rename(src, trash / "x")  # disappears atomically, then removed at leisure
            left = [x for x in versions if x not in gone]
            if left:
                self._index[name] = left
            else:
                self._index.pop(name, None)
            for g in gone:
                self._loaded.pop((name, g), None)
                self._meta.pop((name, g), None)
                self._specs.pop((name, g), None)
                self._stamps.pop((name, g), None)
            if not self.versions(name):
                if name in self._unloaded:
                    self._unloaded.discard(name)
                    self._save_state()
                shutil.rmtree(self.root / name, ignore_errors=True)
            self._changed()
        return gone


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise BundleInvalid(f"{what} is not valid JSON: {err}") from None


def _tfaas_bundle(stage: Path, name: str | None) -> None:
    """Write ``bundle.json`` for a TFaaS-style upload (params.json + labels.txt + model.onnx)."""
    import onnx

    params = _read_json(stage / "params.json", "params.json") if (stage / "params.json").is_file() else {}
    if not isinstance(params, dict):
        raise BundleInvalid("params.json must hold an object")
    labels_file = stage / str(params.get("labels") or "labels.txt")
    if labels_file.parent != stage or not labels_file.is_file():
        raise BundleInvalid("a TFaaS upload needs labels (labels.txt) along with the model")
    labels = [ln.strip() for ln in labels_file.read_text(errors="replace").splitlines()]
    labels = [ln for ln in labels if ln and not ln.startswith("#")]
    try:
        graph = onnx.load_model_from_string((stage / "model.onnx").read_bytes()).graph
        dims = graph.input[0].type.tensor_type.shape.dim
        n = dims[-1].dim_value if dims else 0
    except Exception as err:  # onnx raises DecodeError and friends
        raise BundleInvalid(f"model.onnx is not a valid ONNX model: {err}") from None
    if not n:
        raise BundleInvalid(
            "model.onnx must have a fixed number of input features (its last input dimension)"
        )
    bundle.write(
        stage,
        stage / "model.onnx",
        None,
        labels or ["0", "1"],
        name=str(name or params.get("name") or ""),
        framework="onnx",
        features=[f"x{i}" for i in range(n)],
        description=str(params.get("description", "")),
    )


@contextlib.contextmanager
def staged(staging: Path, prefix: str) -> Iterator[Path]:
    """A fresh directory ``staging/{prefix}{uuid}``, removed on exit.

    While it exists, this process holds an exclusive :func:`fcntl.flock` on the
    sibling file ``{name}.lock``. The kernel releases that lock when the process
    dies, however it dies, so :func:`clean_staging` can tell a crashed upload
    from a live one (of another worker) by trying the lock: process ids cannot
    tell them apart in a container, where PID 1 is always alive.
    """
    while True:
        work = staging / f"{prefix}{uuid.uuid4().hex}"
        lock = work.with_name(work.name + ".lock")
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:  # a cleaner may have taken and removed the file before we locked it: then start again
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        work.mkdir()
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        lock.unlink(missing_ok=True)
        os.close(fd)


def clean_staging(staging: Path) -> None:
    """Remove what crashed processes left in ``.staging``; keep the work of live ones (see :func:`staged`)."""
    for lock in sorted(staging.glob("*.lock")):
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its process is alive
            os.close(fd)
            continue
        _remove(lock.with_name(lock.name[: -len(".lock")]))
        lock.unlink(missing_ok=True)
        os.close(fd)
    for d in staging.iterdir():  # no lock beside it: a crash before locking, or an older server's leftover
        if not d.name.endswith(".lock") and not d.with_name(d.name + ".lock").exists():
            _remove(d)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
