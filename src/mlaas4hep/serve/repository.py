"""The model repository: versioned bundles on disk, loaded sessions in memory.

Layout (persistent across restarts)::

    DIR/
      {name}/
        {version}/          one bundle directory (model.onnx, bundle.json, ...)
        serving.json        optional per-model settings (max_batch, max_delay_ms)
      .state.json           which models are unloaded
      .generation           rewritten by every change (other processes watch it)
      .lock                 the writers' lock
      .staging/             uploads being checked, versions being deleted (never visible)

Versions are positive integers; "latest" (the default everywhere) is the
largest. The directory is a small transactional store (:mod:`.store`): every
change holds an exclusive lock shared by all processes and replicas on the
directory, becomes visible with one ``rename``, and ends by rewriting
``.generation``; a crash leaves leftovers that the next start removes. An
upload is unpacked into ``.staging``, loaded with onnxruntime, its
``bundle.json`` checked and the model run once on example rows (a *smoke
test*, cut off after ``smoke_seconds``) before it is renamed into place. A
deleted version is renamed to a tombstone in ``.staging`` first, so it is gone
at once, whole.

What is on disk is checked too: a version directory whose name is not a
version (1 <= v < 2**63) or whose ``bundle.json`` breaks the schema
(:mod:`mlaas4hep.bundle_schema`) is never served; it is logged and listed in
:attr:`Repository.broken`, which ``/models`` and the repository index report
(the scan is :func:`.inventory.scan`).
Messages name models, versions and files, never the server's directories.

Loaded :class:`~mlaas4hep.bundle.Predictor` objects sit in an LRU cache of
``max_loaded`` entries; an evicted model is reloaded on its next request.
A model can be *unloaded* explicitly (the repository extension of the Open
Inference Protocol): it stays on disk but refuses inference until loaded again.

Several server processes may share one directory (``--workers``, replicas on a
shared volume): each compares ``.generation``'s identity (one ``stat``) before
answering and rescans when another process changed the repository. Each
version directory is identified by its inode, so a version deleted and uploaded
again is never served from a stale cache.

A **read-only** directory (CVMFS, a ConfigMap, a ``:ro`` mount: detected, or
``read_only=True``) is served as it is, and every change is refused with
:class:`~mlaas4hep.serve.errors.ReadOnlyRepository`. A directory that holds one
bundle itself (``bundle.json`` at its top, as KServe's storage initializer
leaves ``/mnt/models``) is served, read-only, as that one model.

All methods are blocking (disk, onnxruntime): the app calls them from a thread.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import bundle, bundle_schema
from ..bundle import BundleError, Predictor
from ..bundle_spec import BundleSpec
from ..errors import Mlaas4hepError
from . import inventory
from .errors import (
    BundleInvalid,
    InvalidRequest,
    ModelBroken,
    ModelNotFound,
    ModelUnloaded,
    VersionConflict,
)
from .inventory import MAX_VERSION, check_name, is_version_dir, listdir, parse_version
from .store import Store, atomic_write, staged

log = logging.getLogger("mlaas4hep.serve")
#: Keys of ``serving.json`` (and of the ``serving`` object of ``bundle.json``).
SERVING_KEYS = {"max_batch": int, "max_delay_ms": float, "timeout_s": float}
#: Seconds an upload's smoke test may run before it is cut off and the upload refused.
SMOKE_SECONDS = 10.0
STATE = ".state.json"
#: Seconds between rescans of a read-only directory (its publisher does not tell us of changes).
READ_ONLY_RESCAN_S = 2.0
SYNC_INTERVAL_S = 0.001  # at most one ``stat`` of ``.generation`` per millisecond (one per request at 1k/s)


class Repository:
    """Bundles under ``root``, with at most ``max_loaded`` onnxruntime sessions in memory.

    ``read_only`` (None: detected) serves the directory as it is and refuses
    every change; ``smoke_seconds`` bounds the run of an upload on its example
    rows. ``shared`` is accepted for compatibility: every repository watches
    ``.generation`` (one ``stat`` per request), so the processes and replicas
    that share a directory agree.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        max_loaded: int = 16,
        threads: int | None = None,
        shared: bool = True,
        read_only: bool | None = None,
        smoke_seconds: float = SMOKE_SECONDS,
        spin: bool = False,
    ):
        self.root = Path(root)
        self.spin = spin  # idle onnxruntime threads busy-wait (see bundle.session)
        #: A directory holding one bundle itself (KServe's /mnt/models): served, read-only, as one model.
        self.single = (self.root / "bundle.json").is_file()
        self.store = Store(self.root, True if self.single else read_only)
        self.read_only = self.store.read_only
        if self.single:
            self.store.why = "it holds one bundle, KServe's layout, served as it is"
        self.max_loaded = max(1, int(max_loaded))
        self.threads = threads
        self.shared = shared
        self.smoke_seconds = float(smoke_seconds)
        self._lock = threading.RLock()  # the in-memory caches below
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
        self.generation = 0  # bumped on every change seen by this process
        self._scanned = 0.0  # when the directory was last scanned (time.monotonic)
        self._synced = float("-inf")  # when .generation was last looked at (time.monotonic)
        if self.read_only:
            self.rescan()
            return
        with self.store.write("repair the repository"):
            removed = self.store.repair()  # leftovers of a crash: staging, tombstones, half-written files
            if removed:
                log.warning("repository %s: removed what an interrupted change left: %s", self.root, removed)
            self.store.bump()  # whatever a crashed writer made visible, every process rescans once
            self._scan()

    # ------------------------------------------------------------ inventory
    def rescan(self) -> None:
        """Re-read the directory (the in-memory index serves every request in between).

        The scan sees every change whole (each is one ``rename``, see
        :mod:`.store`), and one that overlaps another process's change is
        repeated at the next request. Every version directory's ``bundle.json`` is checked against the
        schema (once per change of the file): a bad entry is never served, it
        is logged and listed in :attr:`broken` with the reason, and the others
        are served.
        """
        with self.store.read():
            self._scan()

    def _scan(self) -> None:
        """:meth:`rescan`, inside a transaction of :attr:`store`."""
        seen = self.store.signature()
        found = inventory.scan(self.root, self.single, self._meta_sig)
        for entry in found.broken:
            if entry not in self.broken:  # log each problem once, not at every rescan
                log.warning("skipping %s/%s: %s", entry["name"], entry["version"], entry["error"])
        stamps, metas = found.stamps, found.metas
        unloaded = self._read_state()
        with self._lock:
            self._index, self._unloaded = found.index, unloaded & set(found.index)
            self._meta = {k: m for k, m in metas.items() if k in stamps}
            self._specs = {k: sp for k, sp in self._specs.items() if self._meta.get(k) is sp.meta}
            self._meta_sig = {k: v for k, v in self._meta_sig.items() if k in metas}
            self.broken = found.broken
            for key in [k for k in self._loaded if stamps.get(k) != self._stamps.get(k) or k[0] in unloaded]:
                del self._loaded[key]
            self._stamps = stamps
            self.generation += 1
        self.store.gen_seen = seen
        self._scanned = time.monotonic()

    def _read_state(self) -> set[str]:
        """The unloaded models of ``.state.json`` (a missing or half-written file: none)."""
        try:
            unloaded = json.loads((self.root / STATE).read_text()).get("unloaded", [])
            return {u for u in unloaded if isinstance(u, str)}
        except (OSError, ValueError, AttributeError, TypeError):
            return set()

    def _write_state(self, unloaded: set[str]) -> None:
        atomic_write(self.root / STATE, json.dumps({"unloaded": sorted(unloaded)}).encode())

    def sync(self) -> None:
        """Rescan if another process changed the repository (one ``stat`` of ``.generation``,
        at most every :data:`SYNC_INTERVAL_S`).

        A read-only directory changes where it is published (a CVMFS release),
        where nobody rewrites ``.generation``: it is rescanned every
        :data:`READ_ONLY_RESCAN_S` seconds instead.
        """
        now = time.monotonic()
        if now - self._synced < SYNC_INTERVAL_S:
            return
        self._synced = now
        if self.store.changed_elsewhere() or (
            self.read_only and not self.single and now - self._scanned > READ_ONLY_RESCAN_S
        ):
            self.rescan()

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
        v = parse_version(version)
        if v is None:
            return name, versions[-1]
        if v not in versions:
            raise ModelNotFound(f"model {name!r} has no version {v} (versions: {versions})")
        return name, v

    def path(self, name: str, version: int) -> Path:
        return self.root if self.single else self.root / name / str(version)

    def meta(self, name: str, version: int) -> dict[str, Any]:
        """``bundle.json`` of a version (cached)."""
        key = (name, version)
        m = self._meta.get(key)
        if m is None:
            if version not in self._index.get(name, ()):  # deleted since it was resolved
                raise ModelNotFound(f"model {name!r} has no version {version}")
            try:
                m = bundle.read_meta(self.path(name, version), f"{name}/{version}")
            except BundleError as err:
                if not self.path(name, version).is_dir():
                    raise ModelNotFound(f"model {name!r} has no version {version}") from None
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
        if not self.single and f.is_file():
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
        self.store.refuse(f"change the settings of model {name!r}")
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
        with self.store.write(f"change the settings of model {name!r}"):
            self._scan()
            self.resolve(name)  # still there
            atomic_write(self.root / name / "serving.json", json.dumps(clean).encode())
            self.store.bump()
            self._scan()
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
                stamp = self.stamp(name, version)
                try:
                    spec = self.spec(name, version)
                    p = Predictor(
                        self.path(name, version),
                        self.threads,
                        self.spin,
                        spec,
                        f"{name}/{version}",
                        small_calls=True,  # lone requests of a few rows on one thread (see bundle.small_session)
                    )
                except (BundleError, Mlaas4hepError) as err:
                    if isinstance(err, ModelNotFound) or not self.path(name, version).is_dir():
                        raise ModelNotFound(f"model {name!r} has no version {version}") from None
                    raise ModelBroken(f"model {name!r} version {version} does not load: {err}") from None
                self._remember(key, p, stamp)
        return p

    def _remember(self, key: tuple[str, int], p: Predictor, stamp: int) -> None:
        with self._lock:
            if self._stamps.get(key) != stamp:  # deleted or replaced while it loaded: do not keep it
                return
            self._loaded[key] = p
            self._loaded.move_to_end(key)
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)

    def loaded(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._loaded)

    def load(self, name: str) -> None:
        """Mark a model ready and load its latest version."""
        self.store.refuse(f"load model {name!r}")
        self.rescan()
        self.resolve(name)
        with self.store.write(f"load model {name!r}"):
            self._scan()
            name, v = self.resolve(name)
            unloaded = self._read_state()
            if name in unloaded:
                self._write_state(unloaded - {name})
                self.store.bump()
                self._scan()
        self.predictor(name, v)

    def unload(self, name: str) -> None:
        """Free a model's sessions; it refuses inference until loaded again."""
        self.store.refuse(f"unload model {name!r}")
        self.resolve(name)
        with self.store.write(f"unload model {name!r}"):
            self._scan()
            self.resolve(name)
            unloaded = self._read_state()
            self._write_state(unloaded | {name})
            self.store.bump()
            self._scan()  # drops the sessions of an unloaded model

    def index(self) -> list[dict[str, Any]]:
        """The repository extension's index: every version with its state."""
        self.sync()
        with self._lock:  # one consistent snapshot
            index, unloaded, broken = dict(self._index), set(self._unloaded), list(self.broken)
        out = []
        for name in sorted(index):
            for v in index[name]:
                if name in unloaded:
                    state, reason = "UNAVAILABLE", "unloaded"
                else:
                    state, reason = "READY", "" if self.is_loaded(name, v) else "loads on first request"
                out.append({"name": name, "version": str(v), "state": state, "reason": reason})
        for b in broken:  # on disk but not served: say why
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
        no ``bundle.json``) gets a ``bundle.json`` written for it. The bundle is
        loaded and run once on example rows (:meth:`Predictor.smoke_test
        <mlaas4hep.bundle.Predictor.smoke_test>`) before it is installed.
        """
        self.store.refuse("install a model")
        for fname in files:
            if (
                "/" in fname
                or "\\" in fname
                or fname in (".", "..")
                or not fname.endswith(bundle.ALLOWED_SUFFIXES)
            ):
                raise BundleInvalid(f"file {fname[:200]!r} may not be part of a bundle")
        if "model.onnx" not in files:
            raise BundleInvalid(f"the bundle has no model.onnx (files: {sorted(files)})")
        want = parse_version(version)
        with staged(self.store.staging, "upload-") as stage:
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
        try:  # the slow part (onnxruntime builds the session and runs it once), outside the lock
            predictor = Predictor(stage, self.threads, False, label="the upload")
            predictor.smoke_test(self.smoke_seconds)
        except (BundleError, Mlaas4hepError) as err:
            raise BundleInvalid(f"invalid bundle: {err}") from None
        with self.store.write("install a model"):
            self._scan()
            existing = self.versions(name)
            taken = set(existing) | {
                int(b["version"]) for b in self.broken if b["name"] == name and is_version_dir(b["version"])
            }
            if want is None:
                mine = meta.get("version")
                if isinstance(mine, int) and not isinstance(mine, bool) and 1 <= mine <= MAX_VERSION:
                    want = mine if mine not in taken else None
                want = want or (max(taken) + 1 if taken else 1)
                if want > MAX_VERSION:
                    raise VersionConflict(f"model {name!r} has no version number left: give one")
            elif want in existing:
                raise VersionConflict(f"model {name!r} already has version {want}: delete it first")
            target = self.path(name, want)
            if target.exists():  # a broken version directory holds the number
                raise VersionConflict(f"model {name!r} version {want} is taken by a broken directory")
            meta["version"] = want
            predictor.meta["version"] = predictor.spec.version = want
            (stage / "bundle.json").write_text(json.dumps(meta, indent=1))
            target.parent.mkdir(exist_ok=True)
            os.rename(stage, target)  # atomic: the version appears whole or not at all
            unloaded = self._read_state()
            if name in unloaded:
                self._write_state(unloaded - {name})
            self.store.bump()
            self._scan()
            predictor.path, predictor.label = target, f"{name}/{want}"
            with self._lock:
                key = (name, want)
                self._meta[key] = predictor.meta  # what was written: parsed once, with the predictor
                self._specs[key] = predictor.spec
                self._remember(key, predictor, self.stamp(name, want))
        return name, want

    def delete(self, name: str, version: Any = None) -> list[int]:
        """Remove one version, or every version when ``version`` is None; returns those removed.

        The version (or the model) is renamed to a tombstone in ``.staging``
        within the transaction, so every process sees it gone at once and whole,
        and its files are removed after.
        """
        self.store.refuse(f"delete model {name!r}")
        v = parse_version(version)
        self.resolve(name, v)
        with staged(self.store.staging, "delete-") as trash, self.store.write(f"delete model {name!r}"):
            self._scan()
            versions = self.versions(name)
            if not versions:
                raise ModelNotFound(f"unknown model {name!r}")
            if v is not None and v not in versions:
                raise ModelNotFound(f"model {name!r} has no version {v}")
            if v is None:
                gone = versions
                os.rename(self.root / name, trash / "model")
            else:
                gone = [v]
                os.rename(self.path(name, v), trash / "version")
                if not any(is_version_dir(n) for n in listdir(self.root / name)):
                    os.rename(self.root / name, trash / "model")  # its last version: the model goes
            if not (self.root / name).exists():
                unloaded = self._read_state()
                if name in unloaded:
                    self._write_state(unloaded - {name})
            self.store.bump()
            self._scan()
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
