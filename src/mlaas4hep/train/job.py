"""One training job of the server's jobs API, run in a process of its own: ``python -m mlaas4hep.train.job DIR``.

The server (``mlaas4hep serve --jobs``, :mod:`mlaas4hep.serve.jobs`) never
imports the training layer nor a user's model file: it writes a job directory
and starts this module in a new process (on this machine, on a Dask worker, or
in a Kubernetes ``Job``), which reads it, trains, and leaves its outcome there::

    DIR/
      spec.json        what to run (written by the server): kind "config" or "folder",
                       device, cpus, data_dirs, allow_remote, no_remote
      input/           the upload: config.yaml + model.py, or MLaaS4HEP's folder
                       (a model file, files.txt, labels.txt, params.json)
      progress.json    rewritten after every epoch: epoch, events, rate, validation metrics
      result.json      at the end: {"state": "succeeded", "metrics": ...} or
                       {"state": "failed", "error": "one line", "exit_status": 2}
      out/bundle/      the trained bundle

Before the user's model file is imported, every input file of the dataset is
checked against what the server may read (its ``--data-dir`` directories,
``--allow-remote`` hosts), the way ``predict_root`` checks a URL: a job cannot
read the server's other files through its dataset. Relative paths are taken
under the first data directory. The process's resources (memory, CPU time, a
wall-clock limit) are set by whoever started it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError, Mlaas4hepError
from ..io.config import DatasetConfig
from ..terminal import error_message, exit_status
from .errors import PathRefused

log = logging.getLogger("mlaas4hep.train")

#: MLaaS4HEP's folder: the files besides the model file (any other ``.py``).
FOLDER_FILES = ("files.txt", "labels.txt", "params.json")
PROGRESS_KEYS = ("epoch", "events", "events_per_s", "train_loss", "val_loss", "val_auc", "val_accuracy")


def _write(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, default=float))
    os.replace(tmp, path)


def _remote_ok(url: str, hosts: list[str], no_remote: bool) -> None:
    host = (urlsplit(url).hostname or "").lower()
    if no_remote or not ("*" in hosts or host in hosts):
        raise PathRefused(
            f"the dataset file {url[:200]!r} is on a host this server does not read from "
            f"(allowed: {', '.join(hosts) or 'none'}; see --allow-remote)"
        )


def _local_ok(path: str, dirs: list[str], shown: str | None = None) -> None:
    real = os.path.realpath(path)
    if not any((real + "/").startswith(d) for d in dirs):
        raise PathRefused(
            f"the dataset file {(shown or path)[:200]!r} is outside this server's data directories (--data-dir)"
        )


def check_paths(dcfg: DatasetConfig, data_dirs: list[str], hosts: list[str], no_remote: bool) -> int:
    """Refuse (:class:`PathRefused`) a dataset file the server may not read; the number of files.

    The patterns are checked before they are expanded (a glob outside the data
    directories is refused, not searched), then every file they match.
    """
    dirs = [os.path.realpath(d).rstrip("/") + "/" for d in data_dirs]
    for g in dcfg.files:
        path = os.path.expanduser(str(g.path))
        if path.startswith("/store/"):
            path = dcfg.redirector.rstrip("/") + "//" + path.lstrip("/")
        if "://" in path and not path.startswith("file://"):
            _remote_ok(path, hosts, no_remote)
            continue
        path = os.path.join(dcfg.base_dir, path.removeprefix("file://"))
        fixed = path[: min((path.find(c) for c in "*?[" if c in path), default=len(path))]
        _local_ok(fixed if fixed.endswith("/") or fixed == path else os.path.dirname(fixed), dirs, path)
    urls = [u for u, _ in dcfg.resolve_files()]
    for url in urls:
        if "://" in url and not url.startswith("file://"):
            _remote_ok(url, hosts, no_remote)
        else:
            _local_ok(url.removeprefix("file://"), dirs)
    return len(urls)


def _dataset(job: Path, spec: dict[str, Any]) -> DatasetConfig:
    """The dataset and training configuration of the upload, with the uploaded model file."""
    inp = job / "input"
    if spec["kind"] == "folder":
        models = sorted(p for p in inp.glob("*.py"))
        missing = [f for f in FOLDER_FILES if f != "labels.txt" and not (inp / f).is_file()]
        if missing or len(models) != 1:
            raise ConfigError(
                "the folder must hold one model file (.py), files.txt, labels.txt and params.json; "
                f"it has {sorted(p.name for p in inp.iterdir())}"
            )
        labels = inp / "labels.txt"
        dcfg = DatasetConfig.from_mlaas4hep(
            inp / "files.txt", labels if labels.exists() else None, inp / "params.json"
        )
        model = models[0]
        # MLaaS4HEP's workflow writes no plots nor report: neither does its folder (the bundle is the point)
        training = dcfg.extra.get("training")
        dcfg.extra["training"] = {**(training if isinstance(training, dict) else {}), "plots": False}
    else:
        dcfg = DatasetConfig.from_yaml(inp / "config.yaml")
        model = inp / "model.py"
    if spec.get("data_dirs"):
        dcfg.base_dir = str(spec["data_dirs"][0])
    dcfg.extra["model"] = str(model.resolve())
    dcfg.cache_dir = str(job / "cache")
    return dcfg


def run(job: Path) -> int:
    """Train the job of directory ``job``; its exit status (0, 1 failed, 2 a configuration error)."""
    from .runner import train

    spec = json.loads((job / "spec.json").read_text())
    started = time.monotonic()

    def progress(rec: dict[str, Any]) -> None:
        out = {k: rec[k] for k in PROGRESS_KEYS if k in rec}
        out["seconds"] = round(time.monotonic() - started, 3)
        _write(job / "progress.json", out)

    try:
        dcfg = _dataset(job, spec)
        n = check_paths(
            dcfg, spec.get("data_dirs", []), spec.get("allow_remote", []), spec.get("no_remote", False)
        )
        print(f"job {spec.get('id', job.name)}: {n} input files; training", flush=True)
        overrides = {"threads": int(spec["cpus"])} if spec.get("cpus") else None
        if spec.get("cpus") and int(spec["cpus"]) <= 1:
            dcfg.workers = 0
        result = train(
            dcfg,
            job / "out",
            device=spec.get("device"),
            callbacks=[progress],
            show_progress=False,
            overrides=overrides,
            overwrite=True,
            resume=True,  # a job its server interrupted continues from its last epoch's checkpoint
        )
    except Mlaas4hepError as err:
        # the user's file names, not the server's directories
        message = error_message(err).removeprefix("error: ").splitlines()[0]
        for stored, given in spec.get("names", {}).items():
            message = message.replace(str(job / "input" / stored), given)
        message = message.replace(f"{job / 'input'}/", "")
        print(f"error: {message}", file=sys.stderr, flush=True)
        _write(job / "result.json", {"state": "failed", "error": message, "exit_status": exit_status(err)})
        return exit_status(err)
    except Exception as err:  # the user's model failed: its traceback in the log, one line in the state
        traceback.print_exc()
        message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
        _write(job / "result.json", {"state": "failed", "error": message, "exit_status": 1})
        return 1
    m = result.metrics
    final = {
        k: m[k] for k in ("framework", "val_auc", "val_accuracy", "val_loss", "epochs_trained") if k in m
    }
    _write(job / "result.json", {"state": "succeeded", "metrics": final})
    print(f"job {spec.get('id', job.name)}: succeeded: {json.dumps(final, default=float)}", flush=True)
    return 0


def limit_memory(gb: float | None) -> None:
    """Cap this process's address space at ``gb`` (before the user's code runs): past it, allocations fail."""
    if gb:
        import resource

        limit = int(gb * 2**30)
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard if 0 <= hard < limit else limit))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m mlaas4hep.train.job JOB_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    job = Path(argv[0])
    spec = json.loads((job / "spec.json").read_text())
    # CUDA reserves far more address space than it uses: a GPU job's memory is its engine's to limit
    if not str(spec.get("device") or "cpu").startswith(("cuda", "auto")):
        limit_memory(spec.get("memory_gb"))
    return run(job)


if __name__ == "__main__":
    sys.exit(main())
