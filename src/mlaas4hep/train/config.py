"""The ``training:`` and ``model:`` sections of a train configuration.

A train configuration is a dataset configuration (see :mod:`mlaas4hep.io.config`)
with two more sections, which the dataset layer keeps in
:attr:`DatasetConfig.extra <mlaas4hep.io.DatasetConfig.extra>`::

    tree: Events
    files:
      - {path: "ttH_*.root", label: 1, name: ttH}
      - {path: "ttbar_*.root", label: 0, name: ttbar}
    branches: [MET_pt, nJet, "Jet_*"]
    jagged: {Jet: 6}
    model: models/tth_mlp.py          # or {path: ..., name: ..., version: ...}
    training:
      epochs: 10
      batch_size: 1024
      learning_rate: 0.001
      validation_fraction: 0.2
      early_stopping: 3               # patience in epochs; 0 or null: off
      seed: 42
      framework: auto                 # pytorch | keras | sklearn | xgboost

MLaaS4HEP's ``params.json`` keys ``epochs`` and ``batch_size`` are honoured too
(they land at the top level of ``extra``). A relative ``model`` path is taken
relative to the configuration file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import DatasetConfig
from ..io.configfile import ConfigSource, unknown_key

FRAMEWORKS = ("auto", "pytorch", "keras", "sklearn", "xgboost")


@dataclass
class TrainConfig:
    """How to train: every key of the ``training:`` section, with its default.

    * ``epochs``, ``batch_size``, ``learning_rate``: the usual meaning
      (``learning_rate`` goes to the default optimizer, or to the model file's
      ``optimizer(params, learning_rate)``);
    * ``validation_fraction``: share of events held out, chosen by a hash of the
      event id (:mod:`mlaas4hep.train.split`);
    * ``early_stopping``: patience in epochs on the validation loss (``0``/``None``
      disables it); ``min_delta``: the smallest improvement that counts. The best
      epoch's weights are restored at the end;
    * ``seed``: seeds the model initialisation, dropout and batch order;
    * ``framework``: ``auto`` detects it from what ``model()`` returns;
    * ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N`` (PyTorch only);
    * ``amp``: mixed precision (bfloat16 autocast) for PyTorch;
    * ``threads``: CPU threads of PyTorch's operators (PyTorch, and Keras on its
      torch backend); ``None`` leaves PyTorch's default, one per core. On small or
      shared machines fewer are often faster (``bench/RESULTS-train.md``: on a
      2-core VM one thread trained 2-3x faster than two);
    * ``loader_workers``: DataLoader worker processes for PyTorch (``0``: decoding
      parallelism comes from the dataset's own ``workers`` pool, the default);
    * ``accumulate``: let a scikit-learn estimator without ``partial_fit`` be
      fitted on all training events gathered in memory;
    * ``name``, ``version``, ``description``: identity of the bundle;
    * ``plots``: write PNG plots; ``onnx_exporter``: ``legacy`` (fast, TorchScript
      based) or ``dynamo`` for PyTorch; ``parity_tolerance``: absolute tolerance of
      the ONNX-vs-native check (default per framework, see :mod:`.export`);
    * ``shuffle_buffer``: events pooled and permuted before batches are cut
      (default: the dataset's ``shuffle_buffer``, else max(8 chunks, 262144)).
    """

    model: str = ""
    epochs: int = 10
    batch_size: int = 1024
    learning_rate: float = 1e-3
    validation_fraction: float = 0.2
    early_stopping: int | None = 5
    min_delta: float = 0.0
    seed: int = 42
    framework: str = "auto"
    device: str = "auto"
    amp: bool = False
    threads: int | None = None
    loader_workers: int = 0
    accumulate: bool = False
    name: str | None = None
    version: int = 1
    description: str = ""
    plots: bool = True
    onnx_exporter: str = "legacy"
    parity_tolerance: float | None = None
    shuffle_buffer: int | None = None

    def __post_init__(self) -> None:
        if self.framework not in FRAMEWORKS:
            raise ConfigError(f"training.framework must be one of {FRAMEWORKS}, got {self.framework!r}")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"training.device must be auto, cpu or cuda, got {self.device!r}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"training.epochs must be a positive integer, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"training.batch_size must be a positive integer, got {self.batch_size!r}")
        if not 0.0 < float(self.validation_fraction) < 1.0:
            raise ConfigError(
                f"training.validation_fraction must be strictly between 0 and 1, got {self.validation_fraction!r}"
            )
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ConfigError(
                f"training.threads must be a positive integer (or absent), got {self.threads!r}"
            )
        if self.early_stopping in (False, 0):
            self.early_stopping = None
        if self.onnx_exporter not in ("legacy", "dynamo"):
            raise ConfigError(f"training.onnx_exporter must be legacy or dynamo, got {self.onnx_exporter!r}")

    @property
    def bundle_name(self) -> str:
        return self.name or (Path(self.model).stem if self.model else "model")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: ConfigSource | None = None) -> TrainConfig:
        """Build from the ``training:`` section; an unknown key is a :class:`ConfigError`.

        ``source`` (the dataset configuration's) puts the file and line of the
        key in front of the message, as for the dataset's own keys.
        """
        src = source or ConfigSource()
        known = [f.name for f in fields(cls) if f.name != "model"]
        unknown = [k for k in data if k not in known and k != "model"]
        if unknown:
            lines = [
                src.error(unknown_key(k, known, "the training section"), "training", k).args[0]
                for k in unknown
            ]
            raise ConfigError("\n".join(lines))
        return cls(**dict(data))


def split_config(
    config: str | os.PathLike | Mapping[str, Any] | DatasetConfig,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[DatasetConfig, TrainConfig]:
    """Read a train configuration into its dataset part and its :class:`TrainConfig`.

    ``overrides`` (e.g. ``{"epochs": 3}`` from the command line) win over the file.
    """
    if isinstance(config, DatasetConfig):
        dcfg = config
    elif isinstance(config, Mapping):
        dcfg = DatasetConfig.from_dict(dict(config))
    else:
        dcfg = DatasetConfig.from_yaml(config)
    extra = dict(dcfg.extra)
    section: dict[str, Any] = {}
    for key in ("epochs", "batch_size"):  # MLaaS4HEP's params.json keys
        if key in extra:
            section[key] = extra[key]
    training = extra.get("training") or {}
    if isinstance(training, str):  # MLaaS4HEP's "training": "standard"
        training = {}
    if not isinstance(training, Mapping):
        raise ConfigError(f"the training section must be a mapping, got {training!r}")
    section.update(training)
    model = extra.get("model")
    if isinstance(model, Mapping):
        model = dict(model)
        path = model.pop("path", None) or model.pop("file", None)
        for key in ("name", "version", "description", "framework"):
            if key in model:
                section.setdefault(key, model.pop(key))
        if model:
            key = next(iter(model))
            known = ["path", "name", "version", "description", "framework"]
            raise dcfg.source.error(unknown_key(key, known, "the model section"), "model", key)
        model = path
    if model is not None:
        section.setdefault("model", str(model))
    section.update({k: v for k, v in (overrides or {}).items() if v is not None})
    tcfg = TrainConfig.from_dict(section, dcfg.source)
    if not tcfg.model:
        raise ConfigError("the configuration names no model file: add 'model: path/to/model.py'")
    path = Path(os.path.expanduser(tcfg.model))
    if not path.is_absolute():
        path = Path(dcfg.base_dir) / path
    tcfg.model = str(path)
    return dcfg, tcfg
