"""PyTorch: the first-class backend.

Data path, per epoch::

    Dataset.batches (select: training rows) ──► torch.from_numpy (pinned on CUDA)   [background thread]
        ──► .to(device, non_blocking) ──► train step

The batches are those of :meth:`.data.Source.batches`, the same for every
framework and the ones ``mlaas4hep stream`` measures. With ``loader_workers >
0`` they come instead from a :class:`torch.utils.data.DataLoader` over
:class:`StreamingDataset`, an ``IterableDataset`` that gives each DataLoader
worker a disjoint share of the epoch's units (``Dataset.batches(rank=worker,
world=workers)``). By default (``loader_workers: 0``) decoding already runs in
the dataset's own process pool and the DataLoader would only add a copy
through shared memory.

The default step is ``BCEWithLogitsLoss`` (one output) or ``CrossEntropyLoss``
(several), weighted by the event weights, with Adam at ``learning_rate``; the
model file's ``loss()``, ``optimizer(params)`` and ``train_step(...)`` replace
the respective pieces (see :mod:`.userfile`). ``amp: true`` runs forward passes
under bfloat16 autocast.

An *object-level* model (``model(input_shapes)``, see :mod:`.userfile`) is
called as ``model(inputs, masks)`` with the batch's per-group tensors instead
of ``model(x)``.

Under DDP the backend's strategy (:class:`mlaas4hep.train.ddp.Context`) wraps
the model for the training step (``train_model``); the runner passes each
step's loss scale to :meth:`TorchBackend.train_batch`, and
:meth:`TorchBackend.idle_step` keeps a rank whose shard is exhausted in step
with the others.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint, export
from .backend import Backend, use_torch_threads
from .config import TrainConfig
from .data import Part, Source, prefetch
from .strategy import Local
from .userfile import UserModel, example_inputs

log = logging.getLogger(__name__)


@dataclass
class TorchBatch:
    """What ``train_step(model, batch, ...)`` receives: tensors on the training device.

    ``inputs`` and ``masks`` hold the per-group tensors of datasets with ``inputs:`` groups.
    """

    x: torch.Tensor
    y: torch.Tensor  # int64 class ids
    weight: torch.Tensor
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:  # batch["x"] works too
        return getattr(self, key)


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``cuda:N`` must exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from .errors import TrainError

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"device {device!r} was asked for but PyTorch sees no CUDA device")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise TrainError(
            f"device {device!r} was asked for but PyTorch sees {n} CUDA device{'s' if n != 1 else ''} "
            f"(cuda:0{f' to cuda:{n - 1}' if n > 1 else ''})"
        )
    return dev


def call_optimizer(hook: Any, params: Any, learning_rate: float, path: str) -> Any:
    """The model file's ``optimizer(params[, learning_rate])``, given ``training.learning_rate``.

    The learning rate goes to a parameter named ``learning_rate`` or ``lr`` (or
    to ``**kwargs`` as ``learning_rate``); a hook with only ``params`` (files
    written before) still works, with a warning that it chose its own rate.
    """
    sig: Mapping[str, inspect.Parameter]
    try:
        sig = inspect.signature(hook).parameters
    except (TypeError, ValueError):
        sig = {}
    if "learning_rate" in sig or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values()):
        return hook(params, learning_rate=learning_rate)
    if "lr" in sig:
        return hook(params, lr=learning_rate)
    log.warning(
        "training.learning_rate (%g) is not passed to optimizer(params) in %s: give the function a "
        "learning_rate argument to receive it",
        learning_rate,
        path,
    )
    return hook(params)


class StreamingDataset(torch.utils.data.IterableDataset):
    """An epoch's training batches, sharded across DataLoader workers.

    Each worker ``i`` of ``n`` reads the units that :meth:`Dataset.units` assigns
    to rank ``i`` of ``n`` (composed with the source's own rank and world), so
    the workers together read every unit exactly once. The validation rows stay
    in the workers; the trainer gathers them with :meth:`.data.Source.ensure_val`.
    """

    def __init__(self, source: Source, epoch: int, batch_size: int):
        self.source, self.epoch, self.batch_size = source, epoch, batch_size

    def __iter__(self) -> Iterator[Part]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        src = self.source
        if info is not None and src.ds.workers != 0:  # a daemonic worker cannot start a process pool
            src.ds.config = dataclasses.replace(src.ds.config, workers=0)
        rank, world = src.rank * nw + wid, src.world * nw
        for b in src.ds.batches(self.batch_size, self.epoch, rank, world, select=src.selector()):
            yield Part.of_batch(b)


class Probabilities(torch.nn.Module):
    """The user's model followed by what turns its output into probabilities (for export)."""

    def __init__(self, model: torch.nn.Module, logits: bool, binary: bool):
        super().__init__()
        self.model, self.logits, self.binary = model, logits, binary

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out = self.model(*args)
        if out.ndim == 1:
            out = out.unsqueeze(1)
        if self.logits:
            out = torch.sigmoid(out) if out.shape[1] == 1 else torch.softmax(out, dim=1)
        if self.binary and out.shape[1] == 2:
            out = out[:, 1:2]
        return out


class GroupInputs(torch.nn.Module):
    """An object-level model taking its tensors positionally, in the order of :func:`.export.onnx_inputs`.

    ONNX inputs are a flat, named list; ``forward(jets, jets_mask, event)``
    rebuilds the ``inputs`` and ``masks`` dicts and calls the model with them.
    """

    def __init__(self, model: torch.nn.Module, input_shapes: dict[str, tuple[int, ...]]):
        super().__init__()
        self.model = model
        self.specs = export.onnx_inputs(input_shapes)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        inputs, masks = {}, {}
        for (name, _, kind), t in zip(self.specs, tensors):
            if kind == "BOOL":
                masks[name[: -len("_mask")]] = t
            else:
                inputs[name] = t
        return self.model(inputs, masks)


class TorchBackend(Backend):
    framework = "pytorch"

    def __init__(
        self,
        um: UserModel,
        cfg: TrainConfig,
        n_features: int,
        n_classes: int,
        device: str = "auto",
        strategy: Local | None = None,
    ):
        super().__init__(um, cfg, n_features, n_classes, device, strategy)
        use_torch_threads(cfg.threads)
        self.dev = resolve_device(device)
        self.device = str(self.dev)
        self.cuda = self.dev.type == "cuda"
        self.model = um.model.to(self.dev)
        #: The module the training step calls: ``model``, or its DDP wrapper (``strategy.wrap``).
        self.train_model: torch.nn.Module = self.strategy.wrap(self.model)
        #: Object-level model: called as ``model(inputs, masks)`` (see :mod:`.userfile`).
        self.object_level = um.input_shapes is not None
        self._last: Part | None = None
        self.logits = um.output != "probabilities"
        hooks = um.hooks
        self.user_loss = hooks["loss"]() if "loss" in hooks else None
        params = self.model.parameters()
        self.optimizer = (
            call_optimizer(hooks["optimizer"], params, cfg.learning_rate, um.path)
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
    def _batches(self, source: Source, epoch: int) -> Iterator[Part]:
        if source.in_memory or self.cfg.loader_workers <= 0:
            yield from source.batches(epoch, self.cfg.batch_size)
            return
        loader = torch.utils.data.DataLoader(
            StreamingDataset(source, epoch, self.cfg.batch_size),
            batch_size=None,
            num_workers=self.cfg.loader_workers,
            pin_memory=False,
            prefetch_factor=2,
            multiprocessing_context="forkserver",
        )
        yield from loader
        source.ensure_val()

    def _to_host_tensor(self, a: Any) -> torch.Tensor:
        t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
        return t.pin_memory() if self.cuda else t

    def epoch_batches(self, source: Source, epoch: int) -> Iterator[Part]:
        """The epoch's batches as tensors on the device; reading and pinning run ahead in a thread."""
        host = prefetch(
            self._batches(source, epoch), depth=4, transform=lambda p: p.map(self._to_host_tensor)
        )
        return (p.map(lambda t: t.to(self.dev, non_blocking=True)) for p in host)

    def _forward(self, model: torch.nn.Module, part: Part) -> torch.Tensor:
        """The model's output for a batch of tensors: ``model(inputs, masks)`` or ``model(x)``."""
        if self.object_level:
            return model(part.inputs, part.masks)
        return model(part.x)

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

    def train_batch(self, batch: Part, loss_scale: float = 1.0) -> None:
        x, y, w = batch.x, batch.y, batch.w
        n = len(y)
        self._last = batch
        model, scale = self.train_model, loss_scale
        if self.train_step_fn is not None:
            kw = {
                k: v
                for k, v in (("optimizer", self.optimizer), ("loss_fn", self.loss))
                if k in self._step_kwargs
            }
            loss = self.train_step_fn(model, TorchBatch(x, y, w, batch.inputs, batch.masks), **kw)
            if isinstance(loss, torch.Tensor) and loss.requires_grad:
                self.optimizer.zero_grad(set_to_none=True)
                (loss * scale if scale != 1.0 else loss).backward()
                self.optimizer.step()
            loss = loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
        else:
            with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.amp):
                out = self._forward(model, batch)
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
        last = self._last if self._last is not None else self._zeros(2)
        self.train_model.train()
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.amp):
            out = self._forward(self.train_model, last)
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

    def _zeros(self, n: int) -> Part:
        """``n`` events of zeros on the device (features, and the groups of an object-level model)."""
        inputs, masks = example_inputs(self.um.input_shapes or {}, n)
        zeros = Part(
            torch.zeros((n, self.n_features)), torch.zeros(n, dtype=torch.int64), torch.ones(n), inputs, masks
        )
        return zeros.map(lambda t: t.to(self.dev))

    @torch.no_grad()
    def scores(self, part: Part, batch: int = 65536) -> np.ndarray:
        """Probabilities of the rows of ``part`` (its groups for an object-level model)."""
        self.model.eval()
        outs = []
        for s in range(0, len(part), batch):
            rows = part.take(slice(s, s + batch)).map(
                lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.dev)
            )
            outs.append(self._probabilities(self._forward(self.model, rows)).cpu().numpy())
        if not outs:
            return np.zeros((0,) if self.binary else (0, self.n_classes), np.float32)
        return np.concatenate(outs)

    def predict(self, x: np.ndarray, batch: int = 65536) -> np.ndarray:
        """Probabilities of feature rows (flat models; an object-level model needs :meth:`scores`)."""
        x = np.asarray(x, np.float32)
        return self.scores(Part(x, np.zeros(len(x), np.int64), np.ones(len(x), np.float32)), batch)

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
    def export_onnx(self, path: Path, sample: Part) -> dict[str, Any]:
        """``model.onnx`` (probabilities out), checked against :meth:`scores` on every input of ``sample``."""
        cpu: torch.nn.Module = copy.deepcopy(self.model).to("cpu").eval()
        shapes = self.um.input_shapes
        if shapes is not None:
            cpu = GroupInputs(cpu, shapes)
        onx = export.torch_to_onnx(
            Probabilities(cpu, self.logits, self.binary), self.n_features, self.cfg.onnx_exporter, shapes
        )
        Path(path).write_bytes(onx)
        tol = self.cfg.parity_tolerance or export.TOLERANCE["pytorch"]
        feeds = export.group_feeds(shapes, sample.inputs, sample.masks) if shapes is not None else sample.x
        return export.check_parity(onx, feeds, self.scores(sample), tol, "PyTorch")

    def save_native(self, directory: Path) -> dict[str, Path]:
        from safetensors.torch import save_file

        p = Path(directory) / "model.safetensors"
        save_file(
            {k: v.detach().cpu().clone().contiguous() for k, v in self.model.state_dict().items()}, str(p)
        )
        return {"model.safetensors": p}
