"""The ``scan:`` section of a train configuration: the search space of ``mlaas4hep scan``.

Each key names a ``training:`` key and how to draw it; four more keys say what
is optimised and how::

    scan:
      learning_rate: {log_uniform: [1.0e-4, 1.0e-2]}   # a float, uniform in log
      batch_size: {choice: [256, 512, 1024]}          # one of a list (a plain list says the same)
      dropout: {uniform: [0.0, 0.5]}                  # (a training key of yours: see below)
      epochs: {int: [2, 6]}                           # an integer in [2, 6]; log_int: uniform in log
      metric: val_auc            # a value of metrics.json: val_auc (default), val_loss, val_accuracy
      direction: maximize        # default: minimize for a loss, maximize otherwise
      sampler: tpe               # Optuna's TPE (default) or random
      seed: 42                   # the sampler's seed (default: training.seed)

Without a ``scan:`` section (or with only ``metric``/``direction``...), the
space is :data:`DEFAULT_SPACE`: the learning rate, log-uniform in [1e-4, 1e-2],
and the batch size, one of 256, 512, 1024, 2048. Every parameter must be a key
of the ``training:`` section (:class:`.config.TrainConfig`); a typo gets the
same "did you mean" as everywhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import ConfigError
from ..io import DatasetConfig
from ..io.configfile import ConfigSource, unknown_key
from .config import TrainConfig

#: How each parameter may be drawn.
KINDS = ("log_uniform", "uniform", "int", "log_int", "choice")
#: The keys of ``scan:`` that are not parameters.
SETTINGS = ("metric", "direction", "sampler", "seed")
#: What may be optimised: the final values of ``metrics.json`` (the restored best epoch's).
METRICS = ("val_auc", "val_loss", "val_accuracy")
#: The space of a configuration without parameters in ``scan:``.
DEFAULT_SPACE: dict[str, Any] = {
    "learning_rate": {"log_uniform": [1e-4, 1e-2]},
    "batch_size": {"choice": [256, 512, 1024, 2048]},
}


@dataclass
class Param:
    """One parameter: its ``training:`` key, how it is drawn, and the bounds or choices."""

    name: str
    kind: str
    values: list[Any]

    def distribution(self) -> Any:
        """The Optuna distribution that draws it."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(self.values)
        lo, hi = self.values
        if self.kind in ("int", "log_int"):
            return IntDistribution(int(lo), int(hi), log=self.kind == "log_int")
        return FloatDistribution(float(lo), float(hi), log=self.kind == "log_uniform")

    @property
    def log(self) -> bool:
        return self.kind.startswith("log")

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name} in {self.values}"
        return f"{self.name} {self.kind.replace('_', '-')} in [{self.values[0]:g}, {self.values[1]:g}]"


@dataclass
class ScanSpace:
    """The parsed ``scan:`` section."""

    params: list[Param]
    metric: str = "val_auc"
    direction: str = "maximize"
    sampler: str = "tpe"
    seed: int | None = None
    defaulted: bool = field(default=False)  # the parameters are DEFAULT_SPACE's

    @classmethod
    def parse(cls, section: Any, source: ConfigSource | None = None) -> ScanSpace:
        """Read a ``scan:`` mapping (or ``None``); every mistake is a :class:`ConfigError` naming its key."""
        src = source or ConfigSource()

        def error(msg: str, *keys: str) -> ConfigError:
            return src.error(msg, "scan", *keys)

        if section is None:
            section = {}
        if not isinstance(section, Mapping):
            raise error(f"the scan section must be a mapping of training keys to ranges, got {section!r}")
        known = [f.name for f in fields(TrainConfig) if f.name != "model"]
        params: list[Param] = []
        for name, spec in section.items():
            if name in SETTINGS:
                continue
            if name not in known:
                raise error(unknown_key(name, [*known, *SETTINGS], "the scan section"), str(name))
            params.append(_param(str(name), spec, error))
        metric = str(section.get("metric", "val_auc"))
        if metric not in METRICS:
            raise error(f"scan.metric must be one of {', '.join(METRICS)}, got {metric!r}", "metric")
        direction = str(section.get("direction", "minimize" if "loss" in metric else "maximize"))
        if direction not in ("maximize", "minimize"):
            raise error(f"scan.direction must be maximize or minimize, got {direction!r}", "direction")
        sampler = str(section.get("sampler", "tpe")).lower()
        if sampler not in ("tpe", "random"):
            raise error(f"scan.sampler must be tpe or random, got {sampler!r}", "sampler")
        seed = section.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise error(f"scan.seed must be an integer, got {seed!r}", "seed")
        defaulted = not params
        if defaulted:
            params = [_param(k, v, error) for k, v in DEFAULT_SPACE.items()]
        return cls(params, metric, direction, sampler, seed, defaulted)

    @classmethod
    def of(cls, dcfg: DatasetConfig) -> ScanSpace:
        return cls.parse(dcfg.extra.get("scan"), dcfg.source)

    def better(self, a: float, b: float) -> bool:
        """``a`` is better than ``b`` in this scan's direction."""
        return a > b if self.direction == "maximize" else a < b


def _number(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _param(name: str, spec: Any, error: Any) -> Param:
    if isinstance(spec, list):
        spec = {"choice": spec}
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise error(
            f"scan.{name} must be one of {{log_uniform: [lo, hi]}}, {{uniform: [lo, hi]}}, {{int: [lo, hi]}}, "
            f"{{log_int: [lo, hi]}} or {{choice: [a, b, ...]}}, got {spec!r}",
            name,
        )
    ((kind, values),) = spec.items()
    if kind not in KINDS:
        raise error(unknown_key(kind, KINDS, f"scan.{name}"), name, str(kind))
    if not isinstance(values, list) or not values:
        raise error(f"scan.{name}.{kind} must be a list, got {values!r}", name, str(kind))
    if kind == "choice":
        return Param(name, kind, list(values))
    values = [_number(v) for v in values]  # PyYAML reads 1e-4 (no dot) as a string
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if len(values) != 2 or not numeric or not values[0] < values[1]:
        raise error(
            f"scan.{name}.{kind} must be [low, high] with low < high, got {values!r}", name, str(kind)
        )
    if kind.startswith("log") and values[0] <= 0:
        raise error(f"scan.{name}.{kind} needs a positive low bound, got {values[0]!r}", name, str(kind))
    if kind in ("int", "log_int") and not all(isinstance(v, int) for v in values):
        raise error(f"scan.{name}.{kind} bounds must be integers, got {values!r}", name, str(kind))
    return Param(name, kind, list(values))
