"""Checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a directory ``OUT/checkpoint/``, rewritten at the end of every
epoch (into a temporary directory, then renamed, so a crash never leaves half a
checkpoint; a write stopped between its two renames, by Ctrl-C or a crash, is completed by
the next :func:`read_state`, see :func:`recover`):

* ``state.json``: the epoch reached, the metric history, early-stopping state
  (best validation loss, its epoch, epochs without improvement), and a
  ``signature`` of the run (model file, framework, features) that ``--resume``
  checks;
* the framework's files: for PyTorch ``model.safetensors``, ``best.safetensors``,
  ``optimizer.safetensors`` + ``optimizer.json`` and ``rng.safetensors`` (the
  random generators, so dropout continues identically); for Keras
  ``model.keras`` (weights and optimizer) and ``best.weights.h5``; for XGBoost
  the booster's ``model.json``.

The data position needs no file: an epoch's batch order is a pure function of
``(seed, epoch)``, so continuing at epoch ``k + 1`` reads exactly what the
uninterrupted run would have read. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..jsonutil import jsonable

STATE = "state.json"


def write(directory: str | os.PathLike, state: dict[str, Any], save_files: Callable[[Path], None]) -> Path:
    """Write ``state`` and the backend's files (``save_files(tmpdir)``) atomically."""
    final = Path(directory)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_files(tmp)
    # state.json last, and whole: its presence says the temporary directory is complete (recover)
    part = tmp / (STATE + ".part")
    part.write_text(json.dumps(state, indent=1, default=jsonable))
    os.replace(part, tmp / STATE)
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def recover(directory: str | os.PathLike) -> None:
    """Complete a :func:`write` that stopped between its two renames.

    Ctrl-C (or a crash) there leaves no ``checkpoint`` but ``checkpoint.tmp``,
    complete (its ``state.json`` is written last), and ``checkpoint.old``, the
    epoch before: the newer one becomes the checkpoint, as the write would have
    made it; the older one if the newer is incomplete. Without this, the message
    of the interruption said there was no checkpoint, and ``--resume`` started
    again from epoch 0.
    """
    final = Path(directory)
    for candidate in (final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")):
        if final.exists():
            return
        if (candidate / STATE).is_file():
            try:
                os.replace(candidate, final)
            except OSError:  # another rank of a DDP run recovered it meanwhile
                pass


def read_state(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The ``state.json`` of a checkpoint directory, or None when there is none (:func:`recover` first)."""
    recover(directory)
    p = Path(directory) / STATE
    if not p.is_file():
        return None
    return json.loads(p.read_text())


# ------------------------------------------------------------------ PyTorch
def save_torch(directory: Path, model, optimizer, best_state: dict | None) -> None:
    """Model, best weights, optimizer and RNG states as safetensors (+ JSON)."""
    import torch
    from safetensors.torch import save_file

    save_file(_tensors(model.state_dict()), str(directory / "model.safetensors"))
    if best_state is not None:
        save_file(_tensors(best_state), str(directory / "best.safetensors"))
    if optimizer is not None:
        sd = optimizer.state_dict()
        tensors: dict[str, Any] = {}
        meta: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
        for pid, st in sd["state"].items():
            entry = meta["state"][str(pid)] = {}
            for k, v in st.items():
                if torch.is_tensor(v):
                    key = f"{pid}.{k}"
                    tensors[key] = v.detach().cpu().clone().contiguous()
                    entry[k] = {"tensor": key}
                else:
                    entry[k] = {"value": v}
        save_file(tensors, str(directory / "optimizer.safetensors"))
        (directory / "optimizer.json").write_text(json.dumps(meta, default=jsonable))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda{i}"] = s
    save_file(rng, str(directory / "rng.safetensors"))


def load_torch(directory: Path, model, optimizer, device) -> dict | None:
    """Restore what :func:`save_torch` wrote; returns the best weights (or None)."""
    import torch
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(directory / "model.safetensors"), device=str(device)))
    best = None
    if (directory / "best.safetensors").is_file():
        best = load_file(str(directory / "best.safetensors"), device=str(device))
    if optimizer is not None and (directory / "optimizer.json").is_file():
        meta = json.loads((directory / "optimizer.json").read_text())
        tensors = load_file(str(directory / "optimizer.safetensors"))
        state = {}
        for pid, st in meta["state"].items():
            state[int(pid)] = {
                k: (tensors[v["tensor"]] if "tensor" in v else v["value"]) for k, v in st.items()
            }
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    rng = load_file(str(directory / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return best


def _tensors(sd: dict) -> dict:
    return {k: v.detach().cpu().clone().contiguous() for k, v in sd.items()}
