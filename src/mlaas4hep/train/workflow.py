"""MLaaS4HEP's ``workflow`` command, with its files and its meaning.

::

    mlaas4hep workflow --files=files.txt --labels=labels.txt --model=model.py \\
                       --params=params.json [--specs=specs.json] [--preproc=preproc.json] [--fout=DIR]

* ``files.txt``: one file per line (local, ``root://``, or ``/store/...``, which
  gets params' ``redirector``); ``labels.txt``: one label per line (``#``
  comments), or a comma list ``1,0``, or the name of a branch holding the label;
* ``params.json``: ``nevts``, ``chunk_size``, ``epochs``, ``batch_size``,
  ``shuffle``, ``branch`` (the tree), ``identifier``, ``selected_branches``,
  ``exclude_branches``, ``redirector``, ``nan`` ... as in MLaaS4HEP (read by
  :meth:`DatasetConfig.from_mlaas4hep <mlaas4hep.io.DatasetConfig.from_mlaas4hep>`),
  plus optionally ``learning_rate`` and ``validation_fraction``;
* ``--specs``: where the specs pass is kept. Unlike MLaaS4HEP it is validated
  against the files and the configuration, and recomputed when stale, never
  silently reused;
* ``--preproc``: MLaaS4HEP's ``new_branch`` (``def`` expressions), ``flat_cut``
  and ``jagged_cut`` (``cut_1``, ``cut_2``... such as ``">=4"``; jagged cuts
  take ``"type": "any"`` or ``"all"``, default ``all``), mapped onto
  ``new_variables`` and ``selection``;
* ``--fout``: the output directory (bundle, metrics, plots, checkpoint).

The model file is MLaaS4HEP's: ``model(idim)`` returning a compiled Keras
model, or a PyTorch / scikit-learn / XGBoost model (see :mod:`.userfile`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import DatasetConfig
from .runner import TrainResult, train


def preproc_to_config(pre: dict[str, Any]) -> dict[str, Any]:
    """MLaaS4HEP's ``preproc.json`` as ``new_variables``, ``selection`` and ``exclude``."""
    new_vars: dict[str, str] = {}
    cuts: list[str] = []
    exclude: list[str] = []

    def add_cuts(name: str, spec: dict[str, Any], jagged: bool) -> None:
        mode = str(spec.get("type", "all")).lower()
        mode = mode if mode in ("any", "all") else "all"
        for key in sorted(k for k in spec if k.startswith("cut")):
            cond = f"{name} {str(spec[key]).strip()}"
            cuts.append(f"{mode}({cond})" if jagged else f"({cond})")

    for name, spec in (pre.get("new_branch") or {}).items():
        if "def" not in spec:
            raise ConfigError(f"preproc new_branch {name!r} has no 'def' expression")
        new_vars[name] = str(spec["def"])
        add_cuts(name, spec, str(spec.get("type", "")).lower() == "jagged")
        if str(spec.get("remove", "false")).lower() == "true":
            exclude.extend(spec.get("keys_to_remove") or [])
    for name, spec in (pre.get("flat_cut") or {}).items():
        add_cuts(name, spec, False)
    for name, spec in (pre.get("jagged_cut") or {}).items():
        add_cuts(name, spec, True)
    out: dict[str, Any] = {}
    if new_vars:
        out["new_variables"] = new_vars
    if cuts:
        out["selection"] = " & ".join(cuts)
    if exclude:
        out["exclude"] = exclude
    return out


def workflow(
    files: str | os.PathLike,
    labels: str | os.PathLike | None,
    model: str | os.PathLike,
    params: str | os.PathLike | dict,
    specs: str | os.PathLike | None = None,
    preproc: str | os.PathLike | None = None,
    fout: str | os.PathLike | None = None,
    *,
    in_memory: bool = False,
    device: str | None = None,
    resume: bool = False,
    cache_dir: str | None = None,
    workers: int | None = None,
    show_progress: bool | None = None,
    executor: str | None = None,
    scheduler: str | None = None,
    overwrite: bool = True,
) -> TrainResult:
    """Run MLaaS4HEP's workflow: read the trio, train, write the bundle into ``fout``.

    ``workers``, ``executor`` and ``scheduler`` set how the data is read (a
    scheduler implies Dask); ``overwrite=False`` refuses a ``fout`` that holds a run.
    """
    dcfg = DatasetConfig.from_mlaas4hep(files, labels, params)
    p = params if isinstance(params, dict) else json.loads(Path(params).read_text())
    if preproc is not None:
        try:
            pre = json.loads(Path(preproc).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"cannot read preproc file {str(preproc)!r}: {err}") from None
        mapped = preproc_to_config(pre)
        dcfg.new_variables.update(mapped.get("new_variables", {}))
        if mapped.get("selection"):
            dcfg.selection = (
                f"({dcfg.selection}) & ({mapped['selection']})" if dcfg.selection else mapped["selection"]
            )
        dcfg.exclude = list(dcfg.exclude) + mapped.get("exclude", [])
    if specs is not None:
        dcfg.extra["specs"] = str(specs)
    if cache_dir is not None:
        dcfg.cache_dir = str(cache_dir)
    dcfg.extra["model"] = str(Path(model).expanduser().resolve())
    training = {k: p[k] for k in ("learning_rate", "validation_fraction", "seed") if k in p}
    out = Path(fout) if fout else Path("mlaas4hep-out") / Path(model).stem
    return train(
        dcfg,
        out,
        in_memory=in_memory,
        device=device,
        resume=resume,
        overrides=training,
        show_progress=show_progress,
        dataset_overrides={"workers": workers, "executor": executor, "scheduler": scheduler},
        overwrite=overwrite,
    )
