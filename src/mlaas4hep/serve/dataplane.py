"""The data plane: every serving operation once, whatever protocol asked for it.

Each front end is *decode → data plane → encode*: the Open Inference Protocol
over HTTP (:mod:`.v2`) and over gRPC (:mod:`.grpc_server`), the TFaaS API
(:mod:`.tfaas`), ``predict_root`` (:mod:`.rootpredict`) and the web page turn
their wire format into the calls of :class:`DataPlane` and its answers back
into their wire format. Everything in between happens here, once: the bearer
token (``credentials``: the ``Authorization`` value, HTTP header or gRPC
metadata), resolving a model and its version, readiness, the checks of the
input tensors (or the preprocessing of raw branches), the dynamic batcher,
the count of requests in flight, and the metrics.

What goes wrong is a domain error of :mod:`.errors`; this module knows no
protocol, status code or framework::

    plane = DataPlane(Repository("models/"), Auth(token), ServeConfig(repo="models/"), Metrics(outcome))
    result = await plane.infer(InferRequest("tth", inputs={"x": x}), credentials="Bearer s3cret")
    result.outputs["probs"]          # float32 [n, 1]
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from .. import __version__
from ..bundle_spec import BundleSpec
from ..errors import Mlaas4hepError
from . import metadata, rootscore, statistics, tritonconfig
from .auth import Auth
from .batching import Batch, Batcher, Inputs
from .config import ServeConfig
from .errors import InvalidRequest, ModelUnhealthy, ModelUnloaded, Saturated, TimedOut, TooLarge
from .intake import Intake
from .lanes import Lane
from .metrics import Metrics
from .repository import Repository
from .watchdog import Watchdog

T = TypeVar("T")


@dataclass(slots=True)
class InferRequest:
    """One inference request, as every protocol's decoder produces it.

    ``inputs``: named tensors (numpy arrays; a jagged raw branch may also be a
    list of lists, one per event, or a float ``[n, k]`` array padded with NaN).
    ``outputs``: the outputs asked for (``None``: all). ``version``: ``None``
    for the newest.
    """

    model: str
    inputs: dict[str, Any]
    version: Any = None
    outputs: list[str] | None = None
    id: str | None = None


@dataclass(slots=True)
class InferResult:
    """The answer to an :class:`InferRequest`: the model that computed it and its named outputs."""

    spec: BundleSpec
    outputs: dict[str, np.ndarray]
    id: str | None = None

    @property
    def model(self) -> str:
        return self.spec.name

    @property
    def version(self) -> int:
        return self.spec.version


@dataclass
class RootScores:
    """Scores of a ROOT file (``predict_root``): tensors ``entry``, the ids, ``scores``."""

    spec: BundleSpec
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


class _Admitted:
    """:meth:`DataPlane.admitted`'s context manager (a plain class: it is entered on every request)."""

    __slots__ = ("plane",)

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def __enter__(self) -> None:
        self.plane.in_flight += 1

    def __exit__(self, *exc: Any) -> None:
        self.plane.in_flight -= 1


class DataPlane:
    """The protocol-neutral server: repository, auth, batchers, lanes, limits and metrics.

    ``config`` holds the limits and batching defaults; ``metrics`` counts what it does.
    All methods that may block (disk, onnxruntime, remote files) run off the
    event loop; the others are cheap and synchronous.
    """

    def __init__(self, repo: Repository, auth: Auth, config: ServeConfig, metrics: Metrics):
        self.repo, self.auth = repo, auth
        self.config = config
        self.allow_remote = tuple(h.lower() for h in config.allow_remote)
        self.metrics = metrics
        self.started = time.time()
        self.in_flight = 0  # inference requests being handled, all models (the batchers read it)
        self.draining = False  # SIGTERM received (see .drain): not ready, still serving
        self.intake = Intake(config.max_pending)  # request bytes all connections hold (see .intake)
        metrics.intake = lambda: (self.intake.used, self.intake.waiting)
        # each model has threads of its own (infer_threads of them), so a model that hangs cannot
        # take the others' threads; the watchdog cuts its calls off after their time limit
        self._pools: dict[tuple[str, int], ThreadPoolExecutor] = {}
        self.watchdog = Watchdog(self._cut)
        self.unhealthy: dict[tuple[str, int], str] = {}  # model versions cut off, and why
        self.io_pool = ThreadPoolExecutor(4, thread_name_prefix="mlaas4hep-io")  # repository, uploads
        # request work that may be slow gets lanes of its own (see .lanes): preprocessing of raw
        # inputs, and predict_root, whose remote reads may hang until the io layer's timeouts
        self.pre_lane = Lane(
            "preprocessing",
            max(1, config.infer_threads),
            64,
            config.pre_timeout,
            lambda t: TimedOut(
                f"preprocessing the request took longer than {t:g} s: send fewer events", retry_after=1
            ),
        )
        self.root_lane = Lane(
            "predict_root",
            config.root_threads,
            2 * config.root_threads,
            config.root_timeout,
            lambda t: InvalidRequest(f"cannot score the file: no result within {t:g} s"),
        )
        self._batchers: dict[tuple[str, int], Batcher] = {}
        self._generation = repo.generation

    # ------------------------------------------------------------ models
    def spec(self, name: str, version: Any = None, credentials: str | None = None) -> BundleSpec:
        """The contract of model ``name`` (``version``: None for the newest), for a reader's credentials.

        The repository parses each version's ``bundle.json`` once (and again
        only when it changes on disk); the session is not loaded for this.
        """
        self.auth.require_read_header(credentials)
        key = self.repo.resolve(name, version)
        if self.repo.generation != self._generation:
            self._prune()
        return self.repo.spec(*key)

    def batcher(self, info: BundleSpec) -> Batcher:
        key = (info.name, info.version)
        b = self._batchers.get(key)
        if b is None:
            cfg = self.repo.serving(*key)
            repo, watchdog = self.repo, self.watchdog
            timeout = float(cfg.get("timeout_s", self.config.infer_timeout))
            what = f"model {info.name!r} version {info.version}"

            def predict(x: Batch, _key: tuple[str, int] = key) -> np.ndarray:
                assert isinstance(x, dict)  # the server batches named tensors
                predictor = repo.predictor(*_key)
                if predictor.loops and made:  # the first call runs in a thread, before any inline one
                    made[0].never_inline()  # a Loop may run for ever on the next inputs: never on the loop
                return watchdog.run(lambda ro: predictor.run(x, ro), _key, timeout, what)

            made: list[Batcher] = []

            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = ThreadPoolExecutor(
                    max(1, self.config.infer_threads), thread_name_prefix=f"mlaas4hep-infer-{info.name}"
                )
            b = self._batchers[key] = Batcher(
                predict,
                max_batch=cfg.get("max_batch", self.config.max_batch),
                max_delay_ms=cfg.get("max_delay_ms", self.config.max_delay_ms),
                executor=pool,
                observe=self.metrics.batch_observer(info.name, str(info.version)),
                in_flight=lambda: self.in_flight,
                max_calls=max(1, self.config.infer_threads),
            )
            made.append(b)
        return b

    def _prune(self) -> None:
        """Retire the batchers: they are rebuilt with the current settings (the repository changed,
        maybe in another process); old ones finish their queue, then stop."""
        self._generation = self.repo.generation
        for b in self._batchers.values():
            b.retire()
        self._batchers.clear()

    def _cut(self, key: Any, seconds: float) -> None:
        """The watchdog cut a call of ``key`` off: that version is unhealthy until loaded again."""
        self.unhealthy[key] = f"a call ran longer than {seconds:g} s and was cut off; load the model again"

    def _check_healthy(self, info: BundleSpec) -> None:
        reason = self.unhealthy.get((info.name, info.version))
        if reason is not None:
            raise ModelUnhealthy(f"model {info.name!r} version {info.version} is unhealthy: {reason}")

    def _changed(self) -> None:
        """Rebuild batchers on next use (after an upload, delete, load, unload or new settings)."""
        self.unhealthy.clear()  # a model loaded again (or replaced) gets a new chance
        self._prune()
        self.metrics.loaded = len(self.repo.loaded())

    # ------------------------------------------------------------ inference
    def admitted(self) -> _Admitted:
        """Count a request as in flight from its arrival (before its body is read and decoded):
        each model's batcher waits for company only while other requests are being handled
        (``with plane.admitted(): ...``)."""
        return _Admitted(self)

    async def infer(
        self, request: InferRequest, credentials: str | None = None, spec: BundleSpec | None = None
    ) -> InferResult:
        """Score ``request``: auth, model, readiness, input checks or preprocessing, the batcher, metrics.

        ``spec``: the model as :meth:`spec` resolved it for the same credentials (an adapter that
        needed it to decode), so that it is not resolved twice.
        """
        with self.metrics.observe() as obs:
            if spec is None or spec.name != request.model:
                spec = self.spec(request.model, request.version, credentials)
            info = spec
            obs.model, obs.version = info.name, str(info.version)
            if not self.repo.is_ready(info.name):
                raise ModelUnloaded(f"model {info.name!r} is unloaded: load it through the repository API")
            self._check_healthy(info)
            if request.outputs is not None:
                for out in request.outputs:
                    if out != info.output_name:
                        raise InvalidRequest(
                            f"unknown output {out!r}; model {info.name!r} has [{info.output_name!r}]"
                        )
            inputs = await self.inputs(info, request.inputs)
            pending, key = self.metrics.triton.pending, (info.name, str(info.version))
            pending[key] = pending.get(key, 0) + 1
            try:
                y = await self.batcher(info).infer(inputs)
            finally:
                pending[key] -= 1
            return InferResult(info, {info.output_name: y}, request.id)

    async def inputs(self, info: BundleSpec, tensors: dict[str, Any]) -> Inputs:
        """The model's checked input tensors from a request's named tensors.

        Either the model's own tensors (checked by :meth:`BundleSpec.check`), or
        raw branches (``[n]`` arrays; jagged ones as lists per event or NaN-padded
        ``[n, k]``), preprocessed in the preprocessing lane after a size check.
        """
        if not info.wants_raw(tensors):
            return info.check(tensors)
        tensors = {k: _jagged_lists(k, v) if k in info.jagged else _flat(v) for k, v in tensors.items()}
        info.check_raw_names(tensors)
        # what the preprocessing will allocate is known before it runs: events x values per event
        self.check_cells(max(_events(v) for v in tensors.values()), info.values_per_event)
        return await self.preprocess(_raw_inputs, info, tensors)

    async def preprocess(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a request's preprocessing in its lane: off the event loop, with a time limit."""
        return await self.pre_lane.run(fn, *args)

    def check_cells(self, events: int, features: int) -> None:
        """:class:`TooLarge` when ``events x features`` exceeds what one request may make the server allocate."""
        if events * features > self.config.max_cells:
            raise TooLarge(
                f"{events} events x {features} features exceed this server's limit of "
                f"{self.config.max_cells} values per request: send fewer events per request"
            )

    async def predict_root(
        self, name: str, version: Any, query: rootscore.RootQuery, credentials: str | None = None
    ) -> RootScores:
        """Scores of every entry of a ROOT file (see :mod:`.rootscore`), in the ``predict_root`` lane."""
        info = self.spec(name, version, credentials)
        if info.preprocessor is None:
            raise InvalidRequest(f"model {info.name!r} has no preprocessing, so it cannot read ROOT files")
        if not self.repo.is_ready(info.name):
            raise ModelUnloaded(f"model {info.name!r} is unloaded")
        query.url = rootscore.check_url(query.url, self.config.root_prefixes, self.allow_remote)
        deadline = time.monotonic() + self.config.root_timeout
        predictor = await self.blocking(self.repo.predictor, info.name, info.version)
        tensors = await self.root_lane.run(
            rootscore.score, predictor, info, query, self.config.max_cells, deadline
        )
        return RootScores(info, tensors)

    async def friend_file(self, scores: RootScores, tree: str) -> bytes:
        """The scores as a ROOT file holding a friend tree ``tree`` (in the ``predict_root`` lane)."""
        return await self.root_lane.run(rootscore.friend_file, scores.tensors, scores.spec, tree)

    # ------------------------------------------------------------ health and metadata
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """False once draining (SIGTERM), so balancers stop sending work here."""
        return not self.draining

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "mlaas4hep", "version": __version__, "extensions": metadata.EXTENSIONS}

    def model_metadata(
        self, name: str, version: Any = None, credentials: str | None = None
    ) -> dict[str, Any]:
        info = self.spec(name, version, credentials)
        return metadata.model_metadata(info, self.repo.versions(info.name))

    def model_ready(self, name: str, version: Any = None, credentials: str | None = None) -> bool:
        """Whether the model can be called now; :class:`ModelNotFound` when it does not exist."""
        info = self.spec(name, version, credentials)
        return self.repo.is_ready(info.name) and (info.name, info.version) not in self.unhealthy

    def model_config(self, name: str, version: Any = None, credentials: str | None = None) -> dict[str, Any]:
        """Triton's model configuration (:mod:`.tritonconfig`): what Triton clients read to batch."""
        info = self.spec(name, version, credentials)
        b = self.batcher(info)
        return tritonconfig.model_config(info, b.max_batch, b.max_delay)

    def statistics(
        self, name: str | None = None, version: Any = None, credentials: str | None = None
    ) -> dict[str, Any]:
        """Triton's statistics of one model, or of every model (no name)."""
        self.auth.require_read_header(credentials)
        names = [name] if name else self.repo.names()
        specs = [self.spec(n, version if name else None) for n in names]
        return statistics.statistics(self.metrics.merged(), specs)  # every worker's numbers

    def models(self, credentials: str | None = None) -> list[dict[str, Any]]:
        """What TFaaS's ``/models`` and the web page show: every model, and the versions not served."""
        self.auth.require_read_header(credentials)
        out = []
        for name in self.repo.names():
            try:
                info = self.spec(name)
                out.append(metadata.model_summary(info, self.repo.versions(name), self.repo.is_ready(name)))
            except Mlaas4hepError as err:  # a broken or concurrently deleted model does not hide the others
                out.append({"name": name, "error": str(err)})
        for b in self.repo.broken:  # versions on disk that are not served, and why
            out.append({"name": b["name"], "version": b["version"], "broken": True, "error": b["error"]})
        return out

    def status(self, credentials: str | None = None) -> dict[str, Any]:
        self.auth.require_read_header(credentials)
        return {
            "status": "ok",
            "version": __version__,
            "uptime_s": round(time.time() - self.started, 1),
            "models": self.repo.names(),
            "loaded": [f"{n}/{v}" for n, v in self.repo.loaded()],
            "auth": self.auth.enabled,
            "pid": os.getpid(),  # which process answered (with --workers N)
        }

    # ------------------------------------------------------------ repository
    async def repository_index(
        self, credentials: str | None = None, ready_only: bool = False
    ) -> list[dict[str, Any]]:
        """Every version and its state (``READY``, ``UNAVAILABLE`` with a reason).

        :class:`Saturated` while the recent queue time per execution exceeds
        ``saturation_queue_ms``: CMSSW's SONIC calls this at start-up and picks
        another server when it fails (as SuperSONIC's rate limiter makes it fail).
        """
        self.auth.require_read_header(credentials)
        limit = self.config.saturation_queue_ms
        if limit is not None:
            recent = self.metrics.triton.queue_ms_per_exec()
            if recent > limit:
                raise Saturated(
                    f"this server is saturated: {recent:.1f} ms of queue per execution recently "
                    f"(limit {limit:g} ms); use another server",
                    retry_after=5,
                )
        await self.blocking(self.repo.rescan)
        index = self.repo.index()
        cut = {(n, str(v)): reason for (n, v), reason in self.unhealthy.items()}
        for m in index:
            reason = cut.get((m["name"], str(m["version"])))
            if reason is not None and m["state"] == "READY":
                m.update(state="UNAVAILABLE", reason=reason)
        return [m for m in index if not ready_only or m["state"] == "READY"]

    async def load(
        self, name: str, config: Mapping[str, Any] | None = None, credentials: str | None = None
    ) -> None:
        """Load ``name`` (repository extension); ``config``: serving settings, ours or Triton's."""
        self.auth.require_admin_header(credentials)
        if config is not None:
            settings = tritonconfig.serving_settings(config)
            await self.blocking(self.repo.rescan)
            await self.blocking(self.repo.set_serving, name, settings)
        await self.blocking(self.repo.load, name)
        self._changed()

    async def unload(self, name: str, credentials: str | None = None) -> None:
        self.auth.require_admin_header(credentials)
        await self.blocking(self.repo.unload, name)
        self._changed()

    async def install(
        self,
        files: dict[str, bytes] | Callable[[], dict[str, bytes]],
        name: str | None = None,
        version: Any = None,
        credentials: str | None = None,
    ) -> tuple[str, int]:
        """Install a bundle (its files, or a function unpacking them off the event loop); its name and version."""
        self.auth.require_admin_header(credentials)
        if callable(files):
            files = await self.blocking(files)
        installed, v = await self.blocking(self.repo.install, files, name, version)
        self._changed()
        return installed, v

    async def delete(self, name: str, version: Any = None, credentials: str | None = None) -> list[int]:
        """Delete every version of ``name``, or one; the versions deleted."""
        self.auth.require_admin_header(credentials)
        gone = await self.blocking(self.repo.delete, name, version)
        self._changed()
        return gone

    def check_admin(self, credentials: str | None) -> None:
        """Refuse early (before an upload is read) a client that may not change the repository."""
        self.auth.require_admin_header(credentials)

    def check_read(self, credentials: str | None) -> None:
        """Refuse early (before a body is read) a client that may not read or predict."""
        self.auth.require_read_header(credentials)

    def metrics_exposition(self) -> tuple[bytes, str]:
        """The Prometheus text of this process's metrics, and its content type."""
        self.metrics.loaded = len(self.repo.loaded())
        return self.metrics.exposition()

    # ------------------------------------------------------------ plumbing
    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call (disk, network, model loading) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.io_pool, fn, *args)

    def close(self) -> None:
        for b in self._batchers.values():
            b.close()
        self.watchdog.close()
        self.pre_lane.close()
        self.root_lane.close()
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        self.io_pool.shutdown(wait=False, cancel_futures=True)


def _events(value: Any) -> int:
    """Events in a raw branch as a request carries it (an array, or a list of values or of lists)."""
    if isinstance(value, np.ndarray):
        return int(value.shape[0]) if value.ndim else 1
    return len(value) if isinstance(value, list) else 1


def _flat(value: Any) -> Any:
    """A flat raw branch as ``[n]`` (an ``[n, 1]`` tensor is accepted too)."""
    if isinstance(value, np.ndarray) and value.ndim == 2 and value.shape[1] == 1:
        return value.reshape(-1)
    return value


def _jagged_lists(name: str, value: Any) -> Any:
    """A jagged raw branch as lists per event; a float ``[n, k]`` tensor padded with NaN is converted.

    A tensor cannot be ragged (gRPC, binary HTTP), so the NaNs after each event's values mark its end.
    """
    if not isinstance(value, np.ndarray):
        return value
    if value.ndim != 2 or value.dtype.kind != "f":
        raise InvalidRequest(
            f"jagged raw input {name!r} must be a list per event, or a float [n, k] tensor padded with NaN"
        )
    valid = ~np.isnan(value)
    return [row[ok].tolist() for row, ok in zip(value, valid)]


def _raw_inputs(info: BundleSpec, tensors: dict[str, Any]) -> Inputs:
    """Raw branches to the model's tensors: conversion and preprocessing (in the preprocessing lane)."""
    return info.preprocess(info.raw_arrays(tensors))
