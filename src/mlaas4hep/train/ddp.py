"""PyTorch DDP: ``mlaas4hep train`` under ``torchrun``.

:func:`mlaas4hep.train.train` calls :func:`init` first. Outside ``torchrun``
(no ``WORLD_SIZE`` in the environment, or ``WORLD_SIZE=1``) it returns ``None``
and nothing changes. Under ``torchrun --nproc-per-node N`` (one or several
nodes) it reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``, initialises the default process group
(``nccl`` with one GPU per process, ``cuda:LOCAL_RANK``, when the training device
is CUDA; ``gloo`` on CPU) and returns a :class:`Context` that the runner uses
at a handful of points:

* **data**: each rank reads its shard of the epoch's shuffled (file, entry
  range) units, :meth:`Dataset.units(epoch, rank, world)
  <mlaas4hep.io.Dataset.units>` (disjoint, balanced by events, reshuffled each
  epoch); the validation rows are those of the shard read first, so the ranks'
  validation sets are disjoint and their union is the whole validation set;
* **uneven batches**: the shards hold about, not exactly, the same number of
  events. :meth:`Context.steps` runs the ranks in lock step: before each
  step the ranks all-reduce their batch sizes; a rank whose data is exhausted
  takes an *idle step* (a forward pass whose loss is multiplied by zero, so it
  contributes a zero gradient to DDP's all-reduce, then the same optimizer step)
  until every rank is done. Each rank's loss is scaled by ``world * n_rank /
  n_total`` so that DDP's average is the mean over the events of the step,
  whatever their split between ranks. No event is dropped or repeated, and
  weights and optimizer states stay identical on every rank;
* **gradients**: the PyTorch backend trains through :meth:`Context.wrap`, the
  model in :class:`torch.nn.parallel.DistributedDataParallel` (evaluation and
  export use the plain module);
* **validation**: every rank predicts its share; :meth:`Context.gather`
  all-gathers scores, labels and weights so every rank computes the same
  metrics on the whole validation set (early stopping decides alike everywhere);
* **outputs**: only rank 0 writes the checkpoint, ``metrics.json``, the plots
  and the bundle; the others wait at a :meth:`Context.barrier`. ``--resume``:
  every rank loads the same checkpoint (``OUT`` must be on a filesystem all ranks
  see); :meth:`Context.check_resume` fails clearly when it is not;
* **throughput**: :meth:`Context.gather_rates` gives the events and seconds of
  every rank, recorded per epoch as ``ranks`` in ``metrics.json``.

``MLAAS4HEP_DDP_TIMEOUT`` (seconds, default 1800) bounds every collective
operation, so a rank that dies makes the others fail instead of hanging. The
process group is created once per process and destroyed at exit: a later
:func:`~mlaas4hep.train.train` in the same process reuses it (re-creating a
group on the same rendezvous store is not reliable), and so does a group the
caller initialised (``torch.distributed.init_process_group`` before ``train``).
See ``docs/ddp.md`` for the launch procedures.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .strategy import Local

log = logging.getLogger(__name__)

#: Environment variable: the timeout of collective operations, in seconds.
TIMEOUT_ENV = "MLAAS4HEP_DDP_TIMEOUT"
DEFAULT_TIMEOUT = 1800.0


@dataclass(frozen=True)
class DistEnv:
    """What ``torchrun`` (or any launcher setting the same variables) tells a process."""

    rank: int
    world_size: int
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect(environ: Mapping[str, str] | None = None) -> DistEnv | None:
    """The distributed environment, or ``None`` when this is a single process.

    Needs ``WORLD_SIZE`` > 1 and ``RANK``; ``LOCAL_RANK`` defaults to ``RANK`` and
    ``LOCAL_WORLD_SIZE`` to ``WORLD_SIZE`` (one node).
    """
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
    except ValueError:
        return None
    if world <= 1:
        return None
    if "RANK" not in env:
        raise RuntimeError(
            "WORLD_SIZE is set but RANK is not: launch with torchrun (or set RANK, LOCAL_RANK, "
            "MASTER_ADDR and MASTER_PORT for every process)"
        )
    rank = int(env["RANK"])
    port = env.get("MASTER_PORT")
    return DistEnv(
        rank=rank,
        world_size=world,
        local_rank=int(env.get("LOCAL_RANK", rank)),
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", world)),
        master_addr=env.get("MASTER_ADDR"),
        master_port=int(port) if port else None,
    )


def _timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT)))


def init(device: str = "auto", environ: Mapping[str, str] | None = None) -> Context | None:
    """Initialise the process group for training on ``device`` (the ``training.device`` setting).

    Returns ``None`` outside a distributed launch. ``auto`` / ``cuda`` with CUDA
    available: ``nccl`` and ``cuda:LOCAL_RANK``; otherwise ``gloo`` and ``cpu``.
    """
    if detect(environ) is None and "torch" not in sys.modules:
        return None  # a single process: do not import torch for it
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # the caller's group
        if dist.get_world_size() <= 1:
            return None
        given = detect(environ) or DistEnv(
            dist.get_rank(), dist.get_world_size(), dist.get_rank(), dist.get_world_size()
        )
        backend = dist.get_backend()
        dev = f"cuda:{torch.cuda.current_device()}" if backend == "nccl" else "cpu"
        return Context(given, dev, str(backend))
    env = detect(environ)
    if env is None:
        return None
    want_cuda = str(device) == "auto" or str(device).startswith("cuda")
    if want_cuda and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if env.local_rank >= n:
            raise RuntimeError(
                f"LOCAL_RANK {env.local_rank} but this node has {n} CUDA devices: "
                f"use --nproc-per-node {n} or fewer"
            )
        torch.cuda.set_device(env.local_rank)
        pg_backend, dev = "nccl", f"cuda:{env.local_rank}"
    else:
        if str(device).startswith("cuda"):
            raise RuntimeError(f"device {str(device)!r} was asked for but PyTorch sees no CUDA device")
        pg_backend, dev = "gloo", "cpu"
    kw: dict[str, Any] = {}
    if pg_backend == "nccl":
        kw["device_id"] = torch.device(dev)
    try:
        dist.init_process_group(pg_backend, timeout=_timeout(), **kw)
    except TypeError:  # torch without device_id
        dist.init_process_group(pg_backend, timeout=_timeout())
    atexit.register(_destroy)
    log.info(
        "DDP: rank %d of %d (local rank %d), %s on %s, master %s:%s",
        env.rank,
        env.world_size,
        env.local_rank,
        pg_backend,
        dev,
        env.master_addr,
        env.master_port,
    )
    return Context(env, dev, pg_backend)


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


class Context(Local):
    """An initialised process group: the :class:`~.strategy.Local` strategy for a ``torchrun`` launch."""

    def __init__(self, env: DistEnv, device: str, backend: str):
        import torch

        self.env = env
        self.rank, self.world, self.local_rank = env.rank, env.world_size, env.local_rank
        self.device = device  # the training device of this rank
        self.backend = backend
        #: Where collective tensors live: the GPU for NCCL, else the CPU.
        self.comm_device = torch.device(device if backend == "nccl" else "cpu")

    def __repr__(self) -> str:
        return (
            f"Context(rank={self.rank}, world={self.world}, backend={self.backend!r}, device={self.device!r})"
        )

    # ------------------------------------------------------------ lifecycle
    def barrier(self) -> None:
        import torch.distributed as dist

        if self.backend == "nccl":
            dist.barrier(device_ids=[self.comm_device.index])
        else:
            dist.barrier()

    def ordered(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 first, then on each node's local rank 0, then on the others.

        For steps that fill a cache (the specs pass): rank 0 computes and saves;
        with a shared cache the others just load it, with a per-node cache one
        process per node computes it.
        """
        out = fn() if self.rank == 0 else None
        self.barrier()
        if self.rank != 0 and self.local_rank == 0:
            out = fn()
        self.barrier()
        if self.local_rank != 0:
            out = fn()
        return out

    # ------------------------------------------------------------ collectives
    def _tensor(self, values: Sequence[float]):
        import torch

        return torch.tensor(list(values), dtype=torch.float64, device=self.comm_device)

    def all_reduce(self, values: Sequence[float], op: str = "sum") -> np.ndarray:
        """Element-wise sum (or ``max``, ``min``) of ``values`` over the ranks."""
        import torch.distributed as dist

        t = self._tensor(values)
        dist.all_reduce(
            t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]
        )
        return t.cpu().numpy()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one."""
        return bool(self.all_reduce([float(bool(flag))], "max")[0])

    def all_gather(self, values: Sequence[float]) -> np.ndarray:
        """``(world, len(values))``: every rank's ``values``, in rank order."""
        import torch
        import torch.distributed as dist

        t = self._tensor(values)
        out = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(out, t)
        return torch.stack(out).cpu().numpy()

    def gather_arrays(self, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        """Concatenate each array over the ranks (rank order), on every rank.

        The arrays of one rank share their first dimension, which may differ
        between ranks.
        """
        import torch
        import torch.distributed as dist

        counts = self.all_gather([len(arrays[0])])[:, 0].astype(np.int64)
        m = max(int(counts.max()), 1)
        out = []
        for a in arrays:
            a = np.ascontiguousarray(a)
            src = torch.from_numpy(a)
            t = torch.zeros((m,) + tuple(a.shape[1:]), dtype=src.dtype, device=self.comm_device)
            t[: len(a)] = src.to(self.comm_device)
            bufs = [torch.empty_like(t) for _ in range(self.world)]
            dist.all_gather(bufs, t)
            out.append(np.concatenate([b[:c].cpu().numpy() for b, c in zip(bufs, counts)]))
        return tuple(out)

    # ------------------------------------------------------------ training hooks
    def wrap(self, module: Any) -> Any:
        """``module`` in :class:`torch.nn.parallel.DistributedDataParallel`, for the training step.

        The wrapper broadcasts rank 0's initial weights; the backend keeps the
        plain module for state dicts, evaluation and export.
        """
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.comm_device.index] if self.backend == "nccl" else None
        return DistributedDataParallel(module, device_ids=ids)

    def begin_epoch(self, epoch: int, seed: int) -> None:
        """Seed this rank's torch generator by (seed, epoch, rank): different dropout
        masks on each rank, and a resumed run continues exactly."""
        import torch

        torch.manual_seed(int(np.random.SeedSequence([seed, epoch, self.rank, 11]).generate_state(1)[0]))

    def steps(self, batches: Iterable[Any], idle_step: Callable[[], None]) -> Iterator[tuple[Any, float]]:
        """``(batch, loss_scale)`` in lock step with the other ranks (see the module docstring).

        Before each step the ranks all-reduce their batch sizes; the loss scale
        is ``world * n_rank / n_total``. When this rank has no batch left but
        another rank has, ``idle_step()`` runs here instead. Ends when every
        rank is out of batches.
        """
        import torch
        import torch.distributed as dist

        it = iter(batches)
        count = torch.zeros(1, dtype=torch.float64, device=self.comm_device)
        done = False
        try:
            while True:
                batch = None if done else next(it, None)
                done = batch is None
                n = 0 if batch is None else len(batch)
                count.fill_(n)
                dist.all_reduce(count)
                total = int(count.item())
                if total == 0:
                    return
                if batch is None:
                    idle_step()
                    continue
                yield batch, self.world * n / total
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def gather(self, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        """Each array concatenated over the ranks (rank order), on every rank."""
        return self.gather_arrays(*(np.asarray(a) for a in arrays))

    def epoch_totals(
        self, train_loss: float, events: int, seconds: float
    ) -> tuple[float, int, float, list[dict[str, float]] | None]:
        """The epoch's mean loss and events over the ranks, the slowest rank's seconds, per-rank rates."""
        loss_sum, n_all = self.all_reduce([train_loss * events, events])
        ranks = self.gather_rates(events, seconds)
        return float(loss_sum / max(n_all, 1)), int(n_all), max(r["seconds"] for r in ranks), ranks

    def gather_rates(self, events: int, seconds: float) -> list[dict[str, float]]:
        """Per rank: ``rank``, ``events``, ``seconds``, ``events_per_s``."""
        rows = self.all_gather([events, seconds])
        return [
            {"rank": r, "events": int(n), "seconds": float(s), "events_per_s": float(n / s) if s > 0 else 0.0}
            for r, (n, s) in enumerate(rows)
        ]

    def check_resume(self, epoch: int | None) -> None:
        """Every rank must have found the same checkpoint (``None``: none found)."""
        got = self.all_gather([-2 if epoch is None else epoch])[:, 0]
        if len(set(got.tolist())) > 1:
            seen = ", ".join(f"rank {r}: {'none' if e == -2 else int(e)}" for r, e in enumerate(got))
            from .errors import TrainError

            raise TrainError(
                f"--resume: the ranks see different checkpoints ({seen}); the output directory "
                "must be on a filesystem shared by all ranks (see docs/ddp.md)"
            )
