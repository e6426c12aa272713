"""How many processes train together: the :class:`Strategy` the runner and the backend share.

The runner (:mod:`.runner`) is written once, for any number of processes. At
the handful of points where a data-parallel run differs from a single process,
it asks its strategy instead of branching:

==========================  ==============================  =======================================
point                       :class:`Local` (one process)    :class:`.ddp.Context` (``torchrun``)
==========================  ==============================  =======================================
``rank``, ``world``         0, 1                            this rank, the number of ranks
``ordered(fn)``             ``fn()``                        rank 0 first (fills the specs cache)
``wrap(module)``            the module                      its ``DistributedDataParallel``
``begin_epoch``             nothing                         seeds torch by (seed, epoch, rank)
``steps(batches, idle)``    ``(batch, 1.0)`` each           lock step; loss scales; idle steps
``gather(*arrays)``         the arrays                      concatenated over ranks (rank order)
``epoch_totals``            unchanged                       summed over ranks, per-rank rates
``any(flag)``               ``flag``                        true on every rank if on one
``check_resume``            nothing                         every rank found the same checkpoint
``barrier``                 nothing                         waits for every rank
==========================  ==============================  =======================================

The backend owns the strategy it was built with (``backend.strategy``): a
PyTorch backend trains through ``strategy.wrap(model)``, and the other
frameworks refuse a strategy with ``world > 1`` (:meth:`Local.require_single`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np


class Local:
    """One process: every hook is the identity, so the runner's loop is the plain loop."""

    rank = 0
    world = 1
    local_rank = 0
    #: What the trainer should run on (``None``: the configuration's ``device``).
    device: str | None = None

    @property
    def is_main(self) -> bool:
        """Whether this process writes outputs (checkpoints, metrics, plots, the bundle)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        """Wait until every process reaches this point."""

    def ordered(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (on rank 0 first when there are several processes) and return its result."""
        return fn()

    def wrap(self, module: Any) -> Any:
        """The module the training step calls (the module itself in one process)."""
        return module

    def require_single(self, framework: str, model_file: str) -> None:
        """Fail when several processes would train a framework that cannot synchronise them."""
        if self.distributed:
            from .errors import TrainError

            raise TrainError(
                f"distributed training (torchrun, WORLD_SIZE={self.world}) needs a PyTorch "
                f"model; {model_file} is a {framework} model: run it in one process"
            )

    def begin_epoch(self, epoch: int, seed: int) -> None:
        """Per-epoch setup (nothing in one process)."""

    def steps(self, batches: Iterable[Any], idle_step: Callable[[], None]) -> Iterator[tuple[Any, float]]:
        """``(batch, loss_scale)`` per training step; ``idle_step`` keeps an exhausted rank in step."""
        for b in batches:
            yield b, 1.0

    def gather(self, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        """Each array over every process (rank order): here, the arrays themselves."""
        return tuple(np.asarray(a) for a in arrays)

    def epoch_totals(
        self, train_loss: float, events: int, seconds: float
    ) -> tuple[float, int, float, list[dict[str, float]] | None]:
        """``(mean loss, events, seconds, per-rank rates or None)`` of an epoch over every process."""
        return train_loss, events, seconds, None

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on at least one."""
        return bool(flag)

    def check_resume(self, epoch: int | None) -> None:
        """Every process must have found the same checkpoint (``None``: none)."""
