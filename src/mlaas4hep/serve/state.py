"""What every front end shares: the repository, auth, metrics, batchers, lanes and limits.

:class:`ServerState` is protocol-neutral: the HTTP routes (:mod:`.tfaas`,
:mod:`.v2`, :mod:`.rootpredict`) and the gRPC service (:mod:`.grpc_server`)
are thin adapters over it. They resolve a model to its contract
(:meth:`ServerState.model`, a :class:`~mlaas4hep.bundle_spec.BundleSpec`), turn
a request's named tensors into the model's inputs (:meth:`ServerState.inputs`:
checked tensors, or raw branches preprocessed off the event loop), and score
them through the model's dynamic batcher (:meth:`ServerState.infer`). What goes
wrong is a domain error (:mod:`.errors`) that each front end answers in its own
protocol.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from ..bundle_spec import BundleSpec
from .auth import Auth
from .batching import Batch, Batcher, Inputs
from .errors import ApiError, ModelUnloaded
from .lanes import Lane
from .metrics import Metrics
from .repository import Repository

T = TypeVar("T")

MAX_BODY = 64 * 1024 * 1024  # inference requests
MAX_UPLOAD = 512 * 1024 * 1024  # bundle uploads
MAX_CELLS = 2**25  # events x features one request may make the server allocate (128 MiB of float32)
PRE_TIMEOUT = 30.0  # seconds of preprocessing per request
ROOT_TIMEOUT = 300.0  # seconds per predict_root request


class ServerState:
    """Everything the routes share: repository, auth, metrics, batchers and thread pools."""

    def __init__(
        self,
        repo: Repository,
        auth: Auth,
        max_batch: int = 256,
        max_delay_ms: float = 2.0,
        max_body: int = MAX_BODY,
        max_upload: int = MAX_UPLOAD,
        infer_threads: int = 2,
        root_prefixes: tuple[str, ...] = ("root://", "http://", "https://"),
        allow_remote: tuple[str, ...] = (),
        max_cells: int = MAX_CELLS,
        pre_timeout: float = PRE_TIMEOUT,
        root_timeout: float = ROOT_TIMEOUT,
        root_threads: int = 2,
    ):
        self.repo, self.auth = repo, auth
        self.max_batch, self.max_delay_ms = max_batch, max_delay_ms
        self.max_body, self.max_upload = max_body, max_upload
        self.root_prefixes = root_prefixes
        self.allow_remote = tuple(h.lower() for h in allow_remote)
        self.max_cells = max_cells
        self.root_timeout = root_timeout
        self.metrics = Metrics()
        self.started = time.time()
        self.in_flight = 0  # inference requests being handled (kept by the fast path)
        self.infer_pool = ThreadPoolExecutor(max(1, infer_threads), thread_name_prefix="mlaas4hep-infer")
        self.io_pool = ThreadPoolExecutor(4, thread_name_prefix="mlaas4hep-io")  # repository, uploads
        # request work that may be slow gets lanes of its own (see .lanes): preprocessing of raw
        # inputs, and predict_root, whose remote reads may hang until the io layer's timeouts
        self.pre_lane = Lane(
            "preprocessing",
            max(1, infer_threads),
            64,
            pre_timeout,
            lambda t: ApiError(
                503,
                f"preprocessing the request took longer than {t:g} s: send fewer events",
                {"Retry-After": "1"},
            ),
        )
        self.root_lane = Lane(
            "predict_root",
            root_threads,
            2 * root_threads,
            root_timeout,
            lambda t: ApiError(400, f"cannot score the file: no result within {t:g} s"),
        )
        self._batchers: dict[tuple[str, int], Batcher] = {}
        self._generation = repo.generation

    def model(self, name: str, version: Any = None) -> BundleSpec:
        """Resolve ``name``/``version`` (:class:`ModelNotFound` if unknown) to its contract.

        The repository parses each version's ``bundle.json`` once (and again
        only when it changes on disk); the session is not loaded for this.
        """
        key = self.repo.resolve(name, version)
        if self.repo.generation != self._generation:
            self._prune()
        return self.repo.spec(*key)

    def _prune(self) -> None:
        """Retire the batchers: they are rebuilt with the current settings (the repository changed,
        maybe in another process); old ones finish their queue, then stop."""
        self._generation = self.repo.generation
        for b in self._batchers.values():
            b.retire()
        self._batchers.clear()

    def batcher(self, info: BundleSpec) -> Batcher:
        key = (info.name, info.version)
        b = self._batchers.get(key)
        if b is None:
            cfg = self.repo.serving(*key)
            repo = self.repo

            def predict(x: Batch, _key: tuple[str, int] = key) -> np.ndarray:
                assert isinstance(x, dict)  # the server batches named tensors
                return repo.predictor(*_key).run(x)

            b = self._batchers[key] = Batcher(
                predict,
                max_batch=cfg.get("max_batch", self.max_batch),
                max_delay_ms=cfg.get("max_delay_ms", self.max_delay_ms),
                executor=self.infer_pool,
                observe=self.metrics.batch_observer(info.name),
                in_flight=lambda: self.in_flight,
            )
        return b

    async def infer(self, info: BundleSpec, inputs: Inputs) -> np.ndarray:
        """Scores for checked input tensors (:meth:`BundleSpec.check`) through the model's dynamic batcher."""
        if not self.repo.is_ready(info.name):
            raise ModelUnloaded(
                f"model {info.name!r} is unloaded: POST /v2/repository/models/{info.name}/load first"
            )
        return await self.batcher(info).infer(inputs)

    async def inputs(self, info: BundleSpec, tensors: dict[str, Any]) -> Inputs:
        """The model's checked input tensors from a request's named tensors, whatever the protocol.

        Either the model's own tensors (checked by :meth:`BundleSpec.check`), or
        raw branches (``[n]`` arrays, lists per event), preprocessed in the
        preprocessing lane after a size check.
        """
        if not info.wants_raw(tensors):
            return info.check(tensors)
        info.check_raw_names(tensors)
        # what the preprocessing will allocate is known before it runs: events x values per event
        self.check_cells(max(_events(v) for v in tensors.values()), info.values_per_event)
        return await self.preprocess(_raw_inputs, info, tensors)

    def forget(self, name: str) -> None:
        """Rebuild batchers on next use (after delete, unload or new settings)."""
        self._prune()
        self.metrics.loaded.set(len(self.repo.loaded()))

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call (disk, network, model loading) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.io_pool, fn, *args)

    async def preprocess(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a request's preprocessing in its lane: off the event loop, with a time limit."""
        return await self.pre_lane.run(fn, *args)

    def check_cells(self, events: int, features: int) -> None:
        """413 when ``events x features`` exceeds what one request may make the server allocate."""
        if events * features > self.max_cells:
            raise ApiError(
                413,
                f"{events} events x {features} features exceed this server's limit of "
                f"{self.max_cells} values per request: send fewer events per request",
            )

    def close(self) -> None:
        for b in self._batchers.values():
            b.close()
        self.pre_lane.close()
        self.root_lane.close()
        self.infer_pool.shutdown(wait=False, cancel_futures=True)
        self.io_pool.shutdown(wait=False, cancel_futures=True)


def _events(value: Any) -> int:
    """Events in a raw branch as a request carries it (an array, or a list of values or of lists)."""
    if isinstance(value, np.ndarray):
        return int(value.shape[0]) if value.ndim else 1
    return len(value) if isinstance(value, list) else 1


def _raw_inputs(info: BundleSpec, tensors: dict[str, Any]) -> Inputs:
    """Raw branches to the model's tensors: conversion and preprocessing (in the preprocessing lane)."""
    return info.preprocess(info.raw_arrays(tensors))
