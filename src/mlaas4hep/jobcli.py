"""``mlaas4hep client submit|jobs|job|logs|cancel|fetch``: training jobs from the command line.

Registered by :mod:`mlaas4hep.clientcli` on the ``client`` command; each
subcommand calls :class:`mlaas4hep.client.Client`'s jobs methods
(:mod:`mlaas4hep.jobclient`) and prints for people, or JSON with ``--json``.
``job ID --follow`` shows the job's progress until it ends (one line that
updates on a terminal, a line per change otherwise) and exits 0 when the job
succeeded, 1 when it failed or was cancelled.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from .terminal import CommandError, UsageError, json_or, positive_int, print_json, print_table

Sub = Callable[[str, str], argparse.ArgumentParser]
Wrap = Callable[[Callable[[Any, argparse.Namespace], Any]], Callable[[argparse.Namespace], int]]


def add_job_commands(sub: Sub, client: Wrap) -> None:
    """Add the jobs subcommands with ``sub(name, help)``; ``client`` wraps an action as a command."""
    s = sub("submit", "submit a training job (a config and a model file, or MLaaS4HEP's folder)")
    s.add_argument("config", nargs="?", help="training configuration (YAML)")
    s.add_argument("--model", metavar="FILE", help="the Python model file of the configuration")
    s.add_argument(
        "--folder", metavar="DIR", help="MLaaS4HEP's folder: model file, files.txt, labels.txt, params.json"
    )
    s.add_argument("--name", help="name of the model it installs (default: the model file's)")
    s.add_argument("--cpus", type=positive_int, help="cores (default 1)")
    s.add_argument("--memory", type=float, metavar="GB", help="memory in GB (default: the server's, 4)")
    s.add_argument("--device", help="cpu, cuda, cuda:N or auto (default cpu)")
    s.add_argument(
        "--time-limit", type=float, metavar="S", help="seconds it may run (default: the server's limit)"
    )
    s.add_argument("--follow", action="store_true", help="then show its progress until it ends")
    s.set_defaults(func=client(_submit))
    sub("jobs", "list your training jobs, newest first").set_defaults(func=client(_jobs))
    j = sub("job", "one training job: state, progress, error, model")
    j.add_argument("id", help="job id")
    j.add_argument("--follow", action="store_true", help="show its progress until it ends")
    j.set_defaults(func=client(_job))
    lg = sub("logs", "a training job's log")
    lg.add_argument("id", help="job id")
    lg.add_argument("--follow", "-f", action="store_true", help="until the job ends")
    lg.set_defaults(func=client(_logs))
    c = sub("cancel", "cancel a training job (its processes end)")
    c.add_argument("id", help="job id")
    c.set_defaults(func=client(_cancel))
    f = sub("fetch", "download a finished job's bundle (.tar.gz)")
    f.add_argument("id", help="job id")
    f.add_argument("-o", "--out", metavar="FILE", help="where to write it (default: NAME-ID.tar.gz here)")
    f.set_defaults(func=client(_fetch))


def _submit(cl: Any, a: argparse.Namespace) -> Any:
    if a.folder and (a.config or a.model):
        raise UsageError("give CONFIG --model FILE, or --folder DIR, not both")
    if not a.folder and not (a.config and a.model):
        raise UsageError("submit needs CONFIG and --model FILE (or --folder DIR)")
    for path in (a.config, a.model, a.folder):
        if path is not None:
            import os

            if not os.path.exists(path):
                raise UsageError(f"no such file or folder {path!r}")
    job = cl.submit(
        a.config,
        a.model,
        folder=a.folder,
        name=a.name,
        cpus=a.cpus,
        memory=a.memory,
        device=a.device,
        time_limit=a.time_limit,
    )
    said = f"job {job['id']} ({job['name']}): {job['state']}"
    if a.follow:
        print(said)
        return _follow(cl, job["id"], a.json)
    return json_or(
        a.json, job, lambda: print(f"{said}\nfollow it with: mlaas4hep client job {job['id']} --follow")
    )


def _metric(p: dict[str, Any] | None) -> str:
    if not p:
        return ""
    if p.get("val_auc") is not None:
        return f"val AUC {p['val_auc']:.4f}"
    if p.get("val_accuracy") is not None:
        return f"val accuracy {p['val_accuracy']:.4f}"
    return ""


def _jobs(cl: Any, a: argparse.Namespace) -> Any:
    jobs = cl.jobs()
    return json_or(a.json, jobs, lambda: _print_jobs(jobs))


def _print_jobs(jobs: list[dict[str, Any]]) -> None:
    if not jobs:
        print("no jobs (submit one with: mlaas4hep client submit CONFIG --model FILE)")
        return
    rows = []
    for j in jobs:
        p = j.get("progress") or {}
        model = j.get("model")
        progress = f"epoch {p['epoch']}" + (f", {_metric(p)}" if _metric(p) else "") if p else None
        error = j.get("error") or ""
        outcome = (
            f"{model['name']} v{model['version']}"
            if model
            else (error[:60] + ("…" if len(error) > 60 else ""))
        )
        rows.append([j["id"], j["name"], j["user"], j["state"], progress, outcome or None])
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for col in ("id", "name", "user", "state"):  # never cut: the id is what the other commands take
        table.add_column(col, no_wrap=True)
    table.add_column("progress")
    table.add_column("model / error")
    for r in rows:
        table.add_row(*("-" if v is None else str(v) for v in r))
    Console().print(table)


def _line(j: dict[str, Any]) -> str:
    """``running: epoch 3, 4,919 events at 78,108 events/s, val AUC 0.7182``."""
    parts = [j["state"]]
    p = j.get("progress")
    if p and j["state"] == "running":
        parts.append(
            f"epoch {p.get('epoch')}, {p.get('events', 0):,} events at {p.get('events_per_s', 0):,.0f} events/s"
        )
        if _metric(p):
            parts.append(_metric(p))
    if j.get("model"):
        parts.append(f"model {j['model']['name']} version {j['model']['version']} is served")
    if j.get("error"):
        parts.append(j["error"])
    return ": ".join(parts[:2]) + (", " + ", ".join(parts[2:]) if len(parts) > 2 else "")


def _job(cl: Any, a: argparse.Namespace) -> Any:
    if a.follow:
        return _follow(cl, a.id, a.json)
    j = cl.job(a.id)
    return json_or(a.json, j, lambda: _print_job(j))


def _print_job(j: dict[str, Any]) -> None:
    res = j.get("resources") or {}
    rows = [
        ["state", _line(j)],
        ["name", j["name"]],
        ["user", j["user"]],
        ["created", j["created"]],
        ["started", j.get("started")],
        ["finished", j.get("finished")],
        ["resources", ", ".join(f"{k} {v}" for k, v in res.items())],
    ]
    print_table(rows, ["job", j["id"]])


def _follow(cl: Any, job_id: str, as_json: bool) -> Any:
    """Show the job's progress until it ends; exit status 1 unless it succeeded."""
    from .progress import enabled

    live = enabled() and not as_json
    last = ""
    try:
        while True:
            j = cl.job(job_id)
            line = _line(j)
            if line != last and j["state"] in ("queued", "running", "succeeded"):
                if live:
                    sys.stderr.write("\r\x1b[2K" + line[:200])
                    sys.stderr.flush()
                elif not as_json:
                    print(line, flush=True)
                last = line
            if j["state"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(1.0)
    except KeyboardInterrupt:
        if live:
            sys.stderr.write("\n")
        print(
            f"the job goes on: follow it again with `mlaas4hep client job {job_id} --follow`, "
            f"or cancel it with `mlaas4hep client cancel {job_id}`",
            file=sys.stderr,
        )
        raise
    if live:
        sys.stderr.write("\n")
    if as_json:
        print_json(j)
    if j["state"] != "succeeded":
        raise CommandError(f"job {job_id} {j['state']}" + (f": {j['error']}" if j.get("error") else ""))
    return None


def _logs(cl: Any, a: argparse.Namespace) -> Any:
    for line in cl.logs(a.id, follow=a.follow):
        print(line, flush=True)
    return None


def _cancel(cl: Any, a: argparse.Namespace) -> Any:
    j = cl.cancel(a.id)
    return json_or(a.json, j, lambda: print(f"job {j['id']}: {_line(j)}"))


def _fetch(cl: Any, a: argparse.Namespace) -> Any:
    path = cl.fetch(a.id, a.out)
    return json_or(a.json, {"bundle": str(path)}, lambda: print(f"wrote {path}"))
