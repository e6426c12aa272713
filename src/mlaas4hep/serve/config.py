"""The server's configuration: every option of ``mlaas4hep serve``, its default, and where it came from.

:class:`ServeConfig` is the single home of the serving options. One is built
from three sources, the later ones winning (as container platforms expect)::

    defaults  <  --config FILE (YAML)  <  MLAAS4HEP_* environment  <  command line

* the YAML file holds the options by name, e.g. ``port: 8000`` or
  ``data_dir: [/data]`` (``--config`` or ``$MLAAS4HEP_CONFIG``);
* each option also reads ``MLAAS4HEP_<NAME>``: ``MLAAS4HEP_PORT=8000``,
  ``MLAAS4HEP_GRPC_PORT=8001``, ``MLAAS4HEP_REPO=/models`` (lists comma-separated,
  booleans ``1/0``, ``true/false``, ``yes/no``); the token itself stays in
  ``$MLAAS4HEP_TOKEN`` (never in a file that gets printed or committed);
* the command line's options are the same names with dashes: ``--grpc-port``.

A wrong value or an unknown key is a :class:`~mlaas4hep.errors.ConfigError`
naming its source (exit status 2). :func:`options_table` is the table of
``docs/serve.md``; the banner shows what differs from the defaults, and from where.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

ENV_PREFIX = "MLAAS4HEP_"
CONFIG_ENV = "MLAAS4HEP_CONFIG"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def _opt(default: Any, help: str, kind: type = str, metavar: str | None = None) -> Any:
    return field(default=default, metadata={"help": help, "kind": kind, "metavar": metavar})


@dataclass(frozen=True)
class ServeConfig:
    """Every option of the server (see the module docstring for where they come from)."""

    repo: str = _opt("", "model repository directory (created if missing)", metavar="DIR")
    read_only: bool = _opt(
        False, "serve the repository as it is and refuse changes (detected when it cannot be written)", bool
    )
    host: str = _opt("127.0.0.1", "address to listen on (0.0.0.0 for all)")
    port: int = _opt(8083, "HTTP port (8083 as TFaaS; Triton's is 8000)", int, "N")
    grpc_port: int | None = _opt(
        None, "also serve Triton's gRPC API on this port (Triton's is 8001; needs grpcio)", int, "N"
    )
    metrics_port: int | None = _opt(
        None, "also serve /metrics on this port (Triton's is 8002); /metrics stays on --port", int, "N"
    )
    workers: int = _opt(
        1,
        "server processes sharing the ports and the repository; auto: one per CPU this process may use "
        "(its CPU affinity, capped by a container's CPU limit)",
        int,
        "N|auto",
    )
    token_file: str | None = _opt(
        None, "file whose first line is the bearer token ($MLAAS4HEP_TOKEN)", metavar="F"
    )
    private: bool = _opt(False, "require the token for reads and inference too", bool)
    no_auth: bool = _opt(False, "allow repository changes without a token (trusted machines only)", bool)
    max_batch: int = _opt(256, "dynamic batching: most rows per onnxruntime call (1: no batching)", int, "N")
    max_delay_ms: float = _opt(2.0, "dynamic batching: longest wait of a request for company", float, "MS")
    max_loaded: int = _opt(16, "onnxruntime sessions kept in memory (least recently used evicted)", int, "N")
    threads: int | None = _opt(
        None, "onnxruntime intra-op threads per session (default: all cores)", int, "N"
    )
    infer_threads: int = _opt(
        2,
        "onnxruntime calls running at once per model (a full batch starts while another computes)",
        int,
        "N",
    )
    spin: bool = _opt(
        False,
        "let idle onnxruntime threads busy-wait for work, as Triton's do: lower latency, more CPU "
        "(leave off under CPU limits or beside other replicas)",
        bool,
    )
    smoke_seconds: float = _opt(
        10.0, "an upload is run once on example rows, for at most this long", float, "S"
    )
    infer_timeout: float = _opt(
        10.0,
        "seconds one onnxruntime call may run; then it is cut off and the model marked unhealthy",
        float,
        "S",
    )
    max_body_mb: float = _opt(64.0, "largest inference request, MB", float, "MB")
    max_pending_mb: float = _opt(
        512.0,
        "inference request bytes all connections may hold at once, MB (past it, reading waits)",
        float,
        "MB",
    )
    # nginx's client_header_timeout (60 s): connections that send nothing, or a header line now
    # and then, must not hold a file descriptor each for ever
    head_timeout: float = _opt(
        60.0,
        "seconds a request's head may take to arrive whole, from the connection's opening or its "
        "first byte: then HTTP 408 and the connection is closed",
        float,
        "S",
    )
    # nginx's client_body_timeout (60 s): a client that announced a body and stopped sending it
    # must not hold its bytes of --max-pending-mb (and the requests queued behind them) for ever,
    # while a slow link (a few kB/s) still sends something well within a minute
    body_timeout: float = _opt(
        60.0,
        "seconds a request body may go without a byte arriving: then HTTP 408 (gRPC "
        "DEADLINE_EXCEEDED) and its bytes are given back",
        float,
        "S",
    )
    max_upload_mb: float = _opt(512.0, "largest bundle upload, MB", float, "MB")
    max_cells: int = _opt(2**25, "events x features one request may make the server allocate", int, "N")
    pre_timeout: float = _opt(30.0, "seconds of preprocessing per request", float, "S")
    data_dir: tuple[str, ...] = _opt(
        (), "predict_root: local directory it may read (repeatable)", list, "DIR"
    )
    no_remote: bool = _opt(False, "predict_root: refuse root:// and http(s):// URLs", bool)
    allow_remote: tuple[str, ...] = _opt(
        (), "predict_root: hosts whose remote files it may read ('*': any)", list, "HOST[,HOST]"
    )
    root_timeout: float = _opt(300.0, "predict_root: seconds per request", float, "S")
    root_threads: int = _opt(2, "predict_root: files read at once", int, "N")
    tls_cert: str | None = _opt(None, "TLS certificate (PEM): HTTPS, and TLS on gRPC", metavar="PEM")
    tls_key: str | None = _opt(None, "private key of --tls-cert (PEM)", metavar="PEM")
    grpc_listeners: int = _opt(
        4, "--grpc-frontend grpcio: servers sharing the gRPC port in each process", int, "N"
    )
    grpc_frontend: str = _opt(
        "wire",
        "who speaks gRPC without TLS: wire (HTTP/2 on the event loop, bounded per connection) or grpcio",
        metavar="NAME",
    )
    drain_seconds: float = _opt(
        0.0, "on SIGTERM: not ready at once, still serving this long, then stop (0: stop at once)", float, "S"
    )
    saturation_queue_ms: float | None = _opt(
        None,
        "while the recent queue time per execution exceeds this, the repository index answers "
        "UNAVAILABLE (503) so SONIC picks another server; inference goes on",
        float,
        "MS",
    )
    jobs: bool = _opt(
        False,
        "accept training jobs (POST /jobs): each runs in a process of its own, never in the server",
        bool,
    )
    jobs_dir: str | None = _opt(
        None, "jobs: where their state, inputs, logs and outputs live (default REPO/.jobs)", metavar="DIR"
    )
    jobs_scheduler: str | None = _opt(
        None,
        "jobs: run them on this Dask scheduler (tcp://HOST:PORT) instead of local processes",
        metavar="ADDR",
    )
    jobs_running: int = _opt(2, "jobs: how many run at once (the others wait in the queue)", int, "N")
    jobs_per_user: int = _opt(1, "jobs: how many of one user's run at once", int, "N")
    jobs_queued_per_user: int = _opt(10, "jobs: how many of one user's may wait in the queue", int, "N")
    jobs_time_limit: float = _opt(
        3600.0, "jobs: seconds one may run (and the most it may ask for); then it is stopped", float, "S"
    )
    jobs_keep_days: float = _opt(
        30.0, "jobs: days a finished job (record, log, bundle) is kept; 0 keeps them for ever", float, "DAYS"
    )
    jobs_max_cpus: int = _opt(4, "jobs: the most cores one may ask for (default 1)", int, "N")
    jobs_max_memory_gb: float = _opt(
        8.0, "jobs: the most memory one may ask for, GB (its address-space limit; default 4)", float, "GB"
    )
    oidc_issuer: str | None = _opt(
        None, "jobs: also accept OIDC/JWT access tokens of this issuer (its 'iss')", metavar="URL"
    )
    oidc_jwks_url: str | None = _opt(
        None,
        "jobs: the issuer's keys (JWKS; default: from ISSUER/.well-known/openid-configuration)",
        metavar="URL",
    )
    oidc_audience: str | None = _opt(
        None, "jobs: the audience ('aud') access tokens must name", metavar="AUD"
    )
    oidc_user_claim: str = _opt(
        "preferred_username", "jobs: the claim naming the user (else 'sub')", metavar="CLAIM"
    )
    log_level: str = _opt("warning", "server log level: debug, info, warning, error")

    # ------------------------------------------------------------ derived
    @property
    def max_body(self) -> int:
        return int(self.max_body_mb * 2**20)

    @property
    def max_pending(self) -> int:
        return int(self.max_pending_mb * 2**20)

    @property
    def max_upload(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def root_prefixes(self) -> tuple[str, ...]:
        """What predict_root may open: the data directories (resolved), then the remote schemes."""
        dirs = tuple(str(Path(d).resolve()).rstrip("/") + "/" for d in self.data_dir)
        return dirs + (() if self.no_remote else ("root://", "http://", "https://"))

    @property
    def jobs_path(self) -> Path:
        """The jobs directory: ``--jobs-dir``, else ``REPO/.jobs`` (the repository lists no dot names)."""
        return Path(self.jobs_dir) if self.jobs_dir else Path(self.repo) / ".jobs"

    def replace(self, **changes: Any) -> ServeConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(text).items()
        }
        return cls(**values)

    def check(self) -> ServeConfig:
        """Itself, after checking what the types cannot say (``workers="auto"`` becomes a number)."""
        workers: Any = self.workers
        if isinstance(workers, str):  # from Python: ServeConfig(workers="auto")
            return dataclasses.replace(self, workers=_convert("workers", workers, "workers")).check()
        if not self.repo:
            raise ConfigError(
                "the server needs a model repository: --repo DIR, $MLAAS4HEP_REPO or 'repo:' in --config"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together (the certificate and its private key)")
        for name in ("port", "grpc_port", "metrics_port"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 65535:
                raise ConfigError(f"{name} {v} is not a port number (0-65535)")
        ports = [(n, getattr(self, n)) for n in ("port", "grpc_port", "metrics_port") if getattr(self, n)]
        for i, (a, pa) in enumerate(ports):
            for b, pb in ports[i + 1 :]:
                if pa == pb:
                    raise ConfigError(f"{a} and {b} are both {pa}: each needs a port of its own")
        for name in (
            "workers",
            "max_batch",
            "max_loaded",
            "infer_threads",
            "root_threads",
            "grpc_listeners",
            "jobs_running",
            "jobs_per_user",
            "jobs_queued_per_user",
            "jobs_max_cpus",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("max_body_mb", "max_pending_mb", "max_upload_mb"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, not {getattr(self, name)}")
        for name in ("head_timeout", "body_timeout"):
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(
                    f"{name} must be a positive number of seconds, not {_shown(getattr(self, name))}"
                )
        if self.jobs_keep_days < 0:
            raise ConfigError("jobs_keep_days must be 0 (keep for ever) or positive")
        if self.jobs_time_limit <= 0 or self.jobs_max_memory_gb <= 0:
            raise ConfigError("jobs_time_limit and jobs_max_memory_gb must be positive")
        if self.jobs_scheduler and "://" not in self.jobs_scheduler:
            raise ConfigError(
                f"jobs_scheduler {self.jobs_scheduler!r} is not a Dask scheduler address (tcp://HOST:PORT)"
            )
        if self.grpc_frontend not in ("wire", "grpcio"):
            raise ConfigError(f"grpc_frontend must be wire or grpcio, not {self.grpc_frontend!r}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level must be debug, info, warning or error, not {self.log_level!r}")
        return self


FIELDS = {f.name: f for f in dataclasses.fields(ServeConfig)}
DEFAULTS = ServeConfig()


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _convert(name: str, value: Any, source: str) -> Any:
    """``value`` (a string from the environment or the command line, or YAML's type) as option ``name`` takes it."""
    kind = FIELDS[name].metadata["kind"]
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError("expected true or false")
        if kind is list:
            items = value if isinstance(value, (list, tuple)) else str(value).split(",")
            return tuple(str(v).strip() for v in items if str(v).strip())
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            if FIELDS[name].default is None:
                return None
            raise ValueError("a value is needed")
        if name == "workers" and isinstance(value, str) and value.strip().lower() == "auto":
            return usable_cpus()
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected a whole number")
            return int(str(value).strip()) if isinstance(value, str) else int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        return str(value)
    except (ValueError, TypeError) as err:
        what = {int: "a whole number", float: "a number", bool: "true or false"}.get(kind, "a value")
        what += " or auto" if name == "workers" else ""
        reason = str(err) if "expected" in str(err) or "needed" in str(err) else f"expected {what}"
        raise ConfigError(f"{source}: {name} = {value!r}: {reason}") from None


def usable_cpus(
    cgroup_root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> int:
    """The CPUs this process may use, as ``--workers auto`` counts them: its CPU affinity, capped by
    the CPU quota of its cgroup or any cgroup above it (a container's ``--cpus``, a Kubernetes
    pod's ``limits.cpu``; cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), rounded up."""
    from ..io.executor import default_workers  # the CPU affinity (io is imported once serving anyway)

    n = default_workers()
    quotas = [q for q in map(_cpu_quota, _cgroup_dirs(cgroup_root, proc_cgroup)) if q is not None]
    if quotas:
        n = min(n, math.ceil(min(quotas)))
    return max(1, n)


def _cgroup_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """This process's cgroup folders, its own first, then each one above it up to ``root``."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return [root, root / "cpu"]
    out = []
    for line in lines:  # "0::/kubepods/pod1/c1" (v2), "4:cpu,cpuacct:/docker/c1" (v1)
        _, controllers, path = line.split(":", 2)
        base = root if controllers == "" else root / "cpu"
        if controllers == "" or "cpu" in controllers.split(","):
            parts = [p for p in path.split("/") if p]
            out += [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
    return out


def _cpu_quota(folder: Path) -> float | None:
    """CPUs granted by ``folder``'s quota, or None when it sets none (or cannot be read)."""
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]  # cgroup v2: "200000 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int((folder / "cpu.cfs_quota_us").read_text())
        period_us = int((folder / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def _unknown(key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, FIELDS, n=1)
    hint = (
        f" (did you mean '{close[0]}'?)" if close else "; the options are listed by `mlaas4hep serve --help`"
    )
    return ConfigError(f"{source}: unknown option '{key}'{hint}")


def from_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The options of a YAML file, checked (unknown keys are errors)."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read the configuration {str(path)!r}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{p.name}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p.name}: expected a mapping of options (e.g. 'port: 8000')")
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            raise _unknown(str(key), p.name)
        out[name] = _convert(name, value, p.name)
    return out


def from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The options set by ``MLAAS4HEP_<NAME>`` variables (others of that prefix belong to other tools)."""
    return {n: _convert(n, environ[env_name(n)], env_name(n)) for n in FIELDS if env_name(n) in environ}


def load(
    cli: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[ServeConfig, dict[str, str]]:
    """The configuration from its sources, and the source of each option that is not a default.

    ``cli``: the options given on the command line (only those given), by name.
    ``config_file``: a YAML file (default ``$MLAAS4HEP_CONFIG``).
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    config_file = config_file or environ.get(CONFIG_ENV) or None
    if config_file:
        for k, v in from_file(config_file).items():
            values[k], sources[k] = v, Path(config_file).name
    for k, v in from_env(environ).items():
        values[k], sources[k] = v, env_name(k)
    for k, v in (cli or {}).items():
        values[k], sources[k] = _convert(k, v, flag(k)), flag(k)
    return ServeConfig(**values).check(), sources


# ------------------------------------------------------------------ command line and docs
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One command-line option per field; an option not given is absent from the namespace."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"YAML file of these options (${CONFIG_ENV})",
    )
    for name, f in FIELDS.items():
        meta = f.metadata
        default = "" if f.default in (None, (), "") else f" (default {_shown(f.default)})"
        helptext = f"{meta['help']}{default}; ${env_name(name)}"
        if meta["kind"] is bool:
            parser.add_argument(flag(name), action="store_true", default=argparse.SUPPRESS, help=helptext)
        elif name == "data_dir":
            parser.add_argument(
                flag(name), action="append", default=argparse.SUPPRESS, metavar=meta["metavar"], help=helptext
            )
        else:
            parser.add_argument(flag(name), default=argparse.SUPPRESS, metavar=meta["metavar"], help=helptext)


def cli_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on a command line parsed by a parser of :func:`add_arguments`."""
    return {k: v for k, v in vars(args).items() if k in FIELDS}


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def changed(config: ServeConfig, sources: Mapping[str, str]) -> str:
    """``port=8000 (MLAAS4HEP_PORT), max_batch=512 (serve.yaml)``: what differs from the defaults."""
    parts = []
    for name in FIELDS:
        value = getattr(config, name)
        if name in sources and value != getattr(DEFAULTS, name):
            parts.append(f"{name}={_shown(value)} ({sources[name]})")
    return ", ".join(parts)


def options_table() -> str:
    """The Markdown table of every option (``docs/serve.md`` holds it; a test keeps them equal)."""
    rows = ["| option | environment | default | meaning |", "|---|---|---|---|"]
    for name, f in FIELDS.items():
        default = "" if f.default in (None, (), "") else _shown(f.default)
        rows.append(f"| `{flag(name)}` | `{env_name(name)}` | {default} | {f.metadata['help']} |")
    return "\n".join(rows)
