"""MLaaS4HEP's trio: ``files.txt``, ``labels.txt`` and ``params.json``, read as dataset settings.

Existing MLaaS4HEP users keep their files: :func:`read_trio` turns them into
the keyword settings of a :class:`~mlaas4hep.io.config.DatasetConfig` (see
:meth:`~mlaas4hep.io.config.DatasetConfig.from_mlaas4hep`), and sorts
``params.json``'s keys by who reads them:

* :data:`PARAMS_DATASET_KEYS`: the dataset layer;
* :data:`PARAMS_TRAINING_KEYS`: the training layer (``epochs`` and
  ``batch_size`` travel in ``extra``);
* :data:`PARAMS_COMPAT_KEYS`: accepted, without effect.

Any other key is ignored with a :class:`ConfigWarning` that names it (and the
closest known key, for a typo).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from .configfile import closest
from .errors import ConfigError, ConfigWarning
from .settings import DEFAULT_REDIRECTOR, FileGroup, as_list

#: MLaaS4HEP's params.json keys, by who reads them; any other key gets a :class:`ConfigWarning`.
PARAMS_DATASET_KEYS = frozenset(
    {"nevts", "chunk_size", "shuffle", "branch", "identifier", "selected_branches", "exclude_branches"}
    | {"redirector", "nan"}
)
PARAMS_TRAINING_KEYS = frozenset({"epochs", "batch_size", "learning_rate", "validation_fraction", "seed"})
#: Accepted for compatibility, no effect: metrics are always computed, training is always
#: MLaaS4HEP's "standard" (every epoch over all chunks), progress shows on terminals.
PARAMS_COMPAT_KEYS = frozenset({"verbose", "metrics", "training"})
PARAMS_KEYS = PARAMS_DATASET_KEYS | PARAMS_TRAINING_KEYS | PARAMS_COMPAT_KEYS


def read_trio(
    files: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None,
    params: str | os.PathLike[str] | dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], str, str]:
    """The settings, the ``extra`` section, the base folder, and what to call ``params`` in messages.

    ``labels`` may be a file (one label per line, ``#`` comments), a comma
    list such as ``"1,0"``, or the name of a branch that holds the label.
    Unknown keys of ``params`` get a :class:`ConfigWarning`.
    """
    p = params if isinstance(params, dict) else _read_json(params)
    where = "params" if isinstance(params, dict) else str(params)
    for key in p:
        if key not in PARAMS_KEYS:
            guess = closest(key, PARAMS_KEYS)
            hint = f" (did you mean {guess!r}?)" if guess else ""
            warnings.warn(
                f"{where}: key {key!r} is not used by mlaas4hep and is ignored{hint}",
                ConfigWarning,
                stacklevel=3,  # the caller of DatasetConfig.from_mlaas4hep
            )
    redirector = p.get("redirector", DEFAULT_REDIRECTOR)
    paths = _lines(files)
    label_branch: str | None = None
    label_values: list[int | None] = [None] * len(paths)
    if labels is not None:
        lab = str(labels)
        if os.path.isfile(lab):
            label_values = [int(float(x)) for x in _lines(lab)]
        elif "," in lab or lab.strip().lstrip("-").isdigit():
            label_values = [int(x) for x in lab.split(",") if x.strip()]
        else:
            label_branch = lab
        if label_branch is None and len(label_values) != len(paths):
            raise ConfigError(
                f"{len(paths)} files in {str(files)!r} but {len(label_values)} labels in {lab!r}"
            )
    groups = [FileGroup(path=f, label=lv) for f, lv in zip(paths, label_values)]
    selected = p.get("selected_branches") or ["*"]
    nan = p.get("nan", 0.0)
    data: dict[str, Any] = {
        "tree": p.get("branch", "Events"),
        "files": groups,
        "branches": _list_or_file(selected),
        "exclude": _list_or_file(p.get("exclude_branches") or []),
        "identifier": as_list(p.get("identifier", "run,luminosityBlock,event"), "identifier"),
        "chunk_size": _param_int(p, "chunk_size", 100_000, where),
        "nevts": _param_int(p, "nevts", -1, where),
        "shuffle": bool(p.get("shuffle", True)),
        "redirector": redirector,
        "label_branch": label_branch,
        "pad_value": 0.0 if nan is None or (isinstance(nan, float) and nan != nan) else float(nan),
    }
    extra: dict[str, Any] = {
        k: p[k] for k in ("epochs", "batch_size", "verbose", "metrics", "training") if k in p
    }
    base = Path(files).parent if not isinstance(files, (list, tuple)) else Path(".")
    return data, extra, str(base), where


def _param_int(p: dict[str, Any], key: str, default: int, where: str) -> int:
    value = p.get(key, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key} must be an integer, got {value!r}") from None


def _list_or_file(value: Any) -> list[str]:
    if isinstance(value, str) and os.path.isfile(value):
        return _lines(value)
    return as_list(value, "branches")


def _lines(path: str | os.PathLike[str] | list[Any] | tuple[Any, ...]) -> list[str]:
    if isinstance(path, (list, tuple)):
        return [str(p) for p in path]
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"file {str(path)!r} does not exist") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        params: dict[str, Any] = json.loads(Path(path).read_text())
        return params
    except FileNotFoundError:
        raise ConfigError(f"params file {str(path)!r} does not exist") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"params file {str(path)!r} is not valid JSON: {err}") from None
