"""PyTorch: the first-class backend.

Data path, per epoch::

    Dataset.chunks ──► split train/val ──► torch.from_numpy (pinned on CUDA)   [background thread]
        ──► .to(device, non_blocking) ──► pool ≥ shuffle buffer ──► permute on device ──► batch views

With ``loader_workers > 0`` the chunks come instead from a
:class:`torch.utils.data.DataLoader` over :class:`StreamingDataset`, an
``IterableDataset`` that gives each DataLoader worker a disjoint share of the
epoch's units (``Dataset.chunks(rank=worker, world=workers)``). By default
(``loader_workers: 0``) decoding already runs in the dataset's own process pool
and the DataLoader would only add a copy through shared memory.

The default step is ``BCEWithLogitsLoss`` (one output) or ``CrossEntropyLoss``
(several), weighted by the event weights, with Adam at ``learning_rate``; the
model file's ``loss()``, ``optimizer(params)`` and ``train_step(...)`` replace
the respective pieces (see :mod:`.userfile`). ``amp: true`` runs forward passes
under bfloat16 autocast.

Under DDP (:mod:`mlaas4hep.train.ddp`) the training step goes through
``train_model``, the DistributedDataParallel wrapper of ``model``; the loss is
multiplied by ``loss_scale`` before the backward pass, and :meth:`TorchBackend.idle_step`
keeps a rank whose shard is exhausted in step with the others.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.shuffle import batches as shuffled_batches
from . import checkpoint, export
from .backend import Backend
from .config import TrainConfig
from .data import Part, Source, prefetch
from .userfile import UserModel


@dataclass
class TorchBatch:
    """What ``train_step(model, batch, ...)`` receives: tensors on the training device."""

    x: torch.Tensor
    y: torch.Tensor  # int64 class ids
    weight: torch.Tensor

    def __getitem__(self, key: str) -> torch.Tensor:  # batch["x"] works too
        return getattr(self, key)


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        from .errors import TrainError

        raise TrainError("device 'cuda' was asked for but PyTorch sees no CUDA device")
    return torch.device(device)


class StreamingDataset(torch.utils.data.IterableDataset):
    """An epoch's ``(train, val)`` rows as tensors, sharded across DataLoader workers.

    Each worker ``i`` of ``n`` reads the units that :meth:`Dataset.units` assigns
    to rank ``i`` of ``n`` (composed with the source's own rank and world), so
    the workers together read every unit exactly once.
    """

    def __init__(self, source: Source, epoch: int, need_val: bool):
        self.source, self.epoch, self.need_val = source, epoch, need_val

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        src = self.source
        if info is not None and src.ds.workers != 0:  # a daemonic worker cannot start a process pool
            src.ds.config = dataclasses.replace(src.ds.config, workers=0)
        rank, world = src.rank * nw + wid, src.world * nw
        for train, val in src.pairs(self.epoch, rank, world, self.need_val):
            item = {
                "x": torch.from_numpy(train.x),
                "y": torch.from_numpy(train.y),
                "w": torch.from_numpy(train.w),
            }
            if val is not None:
                item.update(
                    vx=torch.from_numpy(val.x), vy=torch.from_numpy(val.y), vw=torch.from_numpy(val.w)
                )
            yield item


class _Probabilities(torch.nn.Module):
    """The user's model followed by what turns its output into probabilities (for export)."""

    def __init__(self, model: torch.nn.Module, logits: bool, binary: bool):
        super().__init__()
        self.model, self.logits, self.binary = model, logits, binary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if out.ndim == 1:
            out = out.unsqueeze(1)
        if self.logits:
            out = torch.sigmoid(out) if out.shape[1] == 1 else torch.softmax(out, dim=1)
        if self.binary and out.shape[1] == 2:
            out = out[:, 1:2]
        return out


class TorchBackend(Backend):
    framework = "pytorch"

    def __init__(
        self, um: UserModel, cfg: TrainConfig, n_features: int, n_classes: int, device: str = "auto"
    ):
        super().__init__(um, cfg, n_features, n_classes, device)
        self.dev = resolve_device(device)
        self.device = str(self.dev)
        self.cuda = self.dev.type == "cuda"
        self.model = um.model.to(self.dev)
        #: The module the training step calls: ``model``, or its DDP wrapper (:meth:`Context.wrap`).
        self.train_model: torch.nn.Module = self.model
        #: Multiplies the loss before backward (set per step under DDP; 1 otherwise).
        self.loss_scale = 1.0
        self._last_x: torch.Tensor | None = None
        self.logits = um.output != "probabilities"
        hooks = um.hooks
        self.user_loss = hooks["loss"]() if "loss" in hooks else None
        params = self.model.parameters()
        self.optimizer = (
            hooks["optimizer"](params)
            if "optimizer" in hooks
            else torch.optim.Adam(params, lr=cfg.learning_rate)
        )
        self.train_step_fn = hooks.get("train_step")
        self._step_kwargs = set()
        if self.train_step_fn is not None:
            try:
                self._step_kwargs = set(inspect.signature(self.train_step_fn).parameters)
            except (TypeError, ValueError):
                pass
        self.amp = bool(cfg.amp)

    # ------------------------------------------------------------ data
    def _parts(self, source: Source, epoch: int) -> Iterator[Part]:
        if source.in_memory or self.cfg.loader_workers <= 0:
            yield from source.epoch(epoch)
            return
        collect = source.val is None
        loader = torch.utils.data.DataLoader(
            StreamingDataset(source, epoch, collect),
            batch_size=None,
            num_workers=self.cfg.loader_workers,
            pin_memory=False,
            prefetch_factor=2,
            multiprocessing_context="forkserver",
        )
        vals = []
        for item in loader:
            if collect and "vx" in item and len(item["vy"]):
                vals.append(Part(item["vx"].numpy(), item["vy"].numpy(), item["vw"].numpy()))
            yield Part(item["x"], item["y"], item["w"])
        if collect:
            source.val = Part.concat(vals, self.n_features)

    def _to_tensors(self, p: Part) -> tuple:
        out = []
        for a in (p.x, p.y, p.w):
            t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
            if self.cuda:
                t = t.pin_memory()
            out.append(t)
        return tuple(out)

    def epoch_batches(self, source: Source, epoch: int, buffer: float) -> Iterator[tuple]:
        """Batches ``(x, y, w)`` on the device; reading runs ahead in a thread."""
        host = prefetch(self._parts(source, epoch), depth=2, transform=self._to_tensors)
        on_device = (tuple(t.to(self.dev, non_blocking=True) for t in ts) for ts in host)
        rng = np.random.default_rng([self.cfg.seed, epoch, 7])
        return shuffled_batches(
            on_device,
            self.cfg.batch_size,
            buffer,
            rng,
            cat=torch.cat,
            take=lambda a, p: a[torch.from_numpy(p).to(self.dev, non_blocking=True)],
        )

    # ------------------------------------------------------------ training
    def begin_epoch(self, epoch: int) -> None:
        self._loss_sum = torch.zeros((), device=self.dev)
        self._n = 0
        self.train_model.train()

    def loss(self, out: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The training loss: the file's ``loss()`` or the weighted default."""
        if self.user_loss is not None:
            if out.ndim == 2 and out.shape[1] == 1:
                target = y.to(out.dtype).view_as(out)
            elif out.ndim == 1:
                target = y.to(out.dtype)
            else:
                target = y
            return self.user_loss(out, target)
        out = out.float()
        if out.ndim == 1 or out.shape[1] == 1:
            out, target = out.reshape(-1), y.to(out.dtype)
            if self.logits:
                per = torch.nn.functional.binary_cross_entropy_with_logits(out, target, reduction="none")
            else:
                per = torch.nn.functional.binary_cross_entropy(
                    out.clamp(1e-7, 1 - 1e-7), target, reduction="none"
                )
        elif self.logits:
            per = torch.nn.functional.cross_entropy(out, y, reduction="none")
        else:
            per = torch.nn.functional.nll_loss(torch.log(out.clamp_min(1e-7)), y, reduction="none")
        return (per * w).sum() / w.sum().clamp_min(1e-12)

    def train_batch(self, batch: tuple) -> None:
        x, y, w = batch
        n = len(y)
        self._last_x = x
        model, scale = self.train_model, self.loss_scale
        if self.train_step_fn is not None:
            kw = {
                k: v
                for k, v in (("optimizer", self.optimizer), ("loss_fn", self.loss))
                if k in self._step_kwargs
            }
            loss = self.train_step_fn(model, TorchBatch(x, y, w), **kw)
            if isinstance(loss, torch.Tensor) and loss.requires_grad:
                self.optimizer.zero_grad(set_to_none=True)
                (loss * scale if scale != 1.0 else loss).backward()
                self.optimizer.step()
            loss = loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
        else:
            with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.amp):
                out = model(x)
            loss = self.loss(out, y, w)
            self.optimizer.zero_grad(set_to_none=True)
            (loss * scale if scale != 1.0 else loss).backward()
            self.optimizer.step()
            loss = loss.detach()
        self._loss_sum += loss.to(self._loss_sum.device) * n
        self._n += n

    def idle_step(self) -> None:
        """A DDP step without events, for a rank whose shard is exhausted while others still train.

        A forward pass (on the last batch, or two zero rows) whose output is
        multiplied by zero gives a zero gradient to DDP's all-reduce; the optimizer
        then steps with the averaged gradients like on every other rank, so
        weights and optimizer states stay identical. No event is trained on twice.
        """
        x = self._last_x if self._last_x is not None else torch.zeros((2, self.n_features), device=self.dev)
        self.train_model.train()
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.amp):
            out = self.train_model(x)
        self.optimizer.zero_grad(set_to_none=True)
        (out.float().sum() * 0.0).backward()
        self.optimizer.step()

    # ------------------------------------------------------------ evaluation
    def _probabilities(self, out: torch.Tensor) -> torch.Tensor:
        out = out.float()
        if out.ndim == 1:
            out = out.unsqueeze(1)
        if self.logits:
            out = torch.sigmoid(out) if out.shape[1] == 1 else torch.softmax(out, dim=1)
        if self.binary:
            out = out[:, -1]
        return out

    @torch.no_grad()
    def predict(self, x: np.ndarray, batch: int = 65536) -> np.ndarray:
        self.model.eval()
        outs = []
        for s in range(0, len(x), batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[s : s + batch], np.float32)).to(self.dev)
            outs.append(self._probabilities(self.model(xb)).cpu().numpy())
        if not outs:
            return np.zeros((0,) if self.binary else (0, self.n_classes), np.float32)
        return np.concatenate(outs)

    # ------------------------------------------------------------ state
    def snapshot(self) -> dict:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def restore(self, snap: dict) -> None:
        self.model.load_state_dict(snap)

    def save(self, directory: Path, best: Any) -> None:
        checkpoint.save_torch(directory, self.model, self.optimizer, best)

    def load(self, directory: Path) -> Any:
        return checkpoint.load_torch(directory, self.model, self.optimizer, self.dev)

    # ------------------------------------------------------------ bundle
    def export_onnx(self, path: Path, sample: np.ndarray) -> dict[str, Any]:
        cpu = copy.deepcopy(self.model).to("cpu").eval()
        onx = export.torch_to_onnx(
            _Probabilities(cpu, self.logits, self.binary), self.n_features, self.cfg.onnx_exporter
        )
        Path(path).write_bytes(onx)
        tol = self.cfg.parity_tolerance or export.TOLERANCE["pytorch"]
        return export.check_parity(onx, sample, self.predict(sample), tol, "PyTorch")

    def save_native(self, directory: Path) -> dict[str, Path]:
        from safetensors.torch import save_file

        p = Path(directory) / "model.safetensors"
        save_file(
            {k: v.detach().cpu().clone().contiguous() for k, v in self.model.state_dict().items()}, str(p)
        )
        return {"model.safetensors": p}
