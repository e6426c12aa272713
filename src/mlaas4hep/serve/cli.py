"""``mlaas4hep serve`` and ``mlaas4hep client``: argparse wiring and terminal output.

:func:`add_serve_commands` registers both on the main parser's subparsers;
:func:`add_serve_arguments` and :func:`add_client_arguments` fill one parser each
(``python -m mlaas4hep.serve`` uses the former on its own parser). Each parser
sets ``func(args) -> int``; errors are raised and turned into one-line messages
and exit statuses by :func:`mlaas4hep.terminal.run`.

The client prints for people (predictions with their labels, lists as tables)
and, with ``--json``, for programs.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..terminal import CommandError

SERVE_HELP = """\
Serve a repository of model bundles over HTTP: the TFaaS API (/upload, /models,
/delete/{model}, /json, /status), the Open Inference Protocol v2 (/v2/..., with
binary tensors and the repository extension; tritonclient works unmodified),
predict_root over whole ROOT files, a web page at / and Prometheus /metrics.

The repository DIR holds DIR/{name}/{version}/ bundles and survives restarts.
Every option can also come from a YAML file (--config serve.yaml, keys as the
options: port: 8000) or from the environment (MLAAS4HEP_PORT=8000, as container
platforms pass settings); the command line wins over the environment, which
wins over the file.
Uploading, deleting, loading and unloading need the bearer token given by
--token-file or $MLAAS4HEP_TOKEN; reading and inference are open (unless
--private). Without any token the server refuses changes (unless --no-auth).

Concurrent requests for a model are merged into one onnxruntime call (dynamic
batching): up to --max-batch rows, the first request waiting at most
--max-delay-ms for company. Per model: DIR/{name}/serving.json, e.g.
{"max_batch": 64, "max_delay_ms": 0.5}. --max-batch 1 turns batching off.

example:
  echo s3cret > token.txt
  mlaas4hep serve --repo models/ --token-file token.txt --port 8083
  mlaas4hep client --token-file token.txt upload out/bundle
  curl -s localhost:8083/json -d '{"model":"tth","keys":[...],"values":[...]}'
"""


def add_serve_commands(subparsers: Any) -> None:
    """Register ``serve`` on an :mod:`argparse` subparsers object."""
    fmt = argparse.RawDescriptionHelpFormatter
    s = subparsers.add_parser(
        "serve",
        help="serve model bundles over HTTP (TFaaS API + Open Inference Protocol v2)",
        description=SERVE_HELP,
        formatter_class=fmt,
    )
    add_serve_arguments(s)
    c = subparsers.add_parser(
        "compile",
        help="compile the server's request path to C with mypyc (less CPU per request)",
        description=COMPILE_HELP,
        formatter_class=fmt,
    )
    c.add_argument(
        "--check", action="store_true", help="only say whether servers started now use compiled modules"
    )
    c.add_argument("--log", metavar="FILE", help="keep mypyc's and the C compiler's output in FILE")
    c.add_argument("--json", action="store_true", help="print the outcome as JSON")
    c.set_defaults(func=run_compile)


COMPILE_HELP = """\
Compile the modules every inference request goes through (the HTTP and gRPC
front ends, the data plane, the batcher, the tensor codecs, the metrics) to C
extensions with mypyc, into the installed package. Servers started afterwards
use them: the same code, with less CPU per small request under load
(single rows from 64 clients: about 1.2x the requests/s, HTTP and gRPC).
They are used only while they match the sources they were built from (the
compiled modules and every module of mlaas4hep.serve and mlaas4hep they use);
an edited source or another Python falls back to the interpreted modules, and
`mlaas4hep compile --check` says which a server would use, and why.
MLAAS4HEP_COMPILED=0 turns them off. Needs mypy (pip install 'mlaas4hep[compile]'),
a C compiler and write access to the installed package (they go into its
serve/_compiled/, which pip uninstall leaves behind); about a minute and a half on two cores,
then seconds after an edit that leaves the compiled code as it was (the build folder is kept in
~/.cache/mlaas4hep/compile; MLAAS4HEP_COMPILE_CACHE=off builds afresh each time).

example:
  mlaas4hep compile            # once after installing or upgrading
  mlaas4hep compile --check    # exit 0 when servers use the compiled modules
"""


def run_compile(args: argparse.Namespace) -> int:
    from ..terminal import json_or
    from . import native

    if args.check:
        state = native.check()
        out = {"compiled": state.active, "reason": state.reason, "folder": str(native.COMPILED)}
        json_or(
            args.json, out, lambda: print(("in use: " if state.active else "not in use: ") + state.reason)
        )
        return 0 if state.active else 1
    from pathlib import Path

    from ..progress import bar
    from .compiler import compile_hot_path

    with bar(f"compiling {len(native.MODULES)} modules with mypyc (1-2 min)", total=None, unit="modules"):
        manifest = compile_hot_path(Path(args.log) if args.log else None)
    state = native.check(ignore_env=True)
    if not state.active:  # built, yet not usable: say so rather than claim success
        raise CommandError(f"compiled, but servers would not use it: {state.reason}")
    off = native.turned_off()
    out = {"compiled": True, "folder": str(native.COMPILED), "turned_off": off, **manifest}
    used = (
        f"servers use them unless {native.ENV} turns them off, as it does now"
        if off
        else ("servers started from now on use them")
    )
    return json_or(
        args.json,
        out,
        lambda: print(
            f"compiled {len(native.MODULES)} modules in {manifest['seconds']} s into {native.COMPILED}; {used}"
        ),
    )


def add_serve_arguments(s: argparse.ArgumentParser) -> None:
    """The options of ``mlaas4hep serve`` (and ``python -m mlaas4hep.serve``): one per
    :class:`~mlaas4hep.serve.config.ServeConfig` field, plus ``--config FILE``."""
    from .config import add_arguments

    add_arguments(s)
    s.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from . import config as serve_config
    from . import serve

    config, sources = serve_config.load(serve_config.cli_options(args), getattr(args, "config", None))
    _check_port(config.host, config.port, "--port")
    for name in ("grpc_port", "metrics_port"):
        port = getattr(config, name)
        if port:
            _check_port(config.host, port, serve_config.flag(name))
    print(startup_banner(config, sources), flush=True)
    serve(config=config)
    return 0


def _check_port(host: str, port: int, option: str) -> None:
    """One line, before anything starts, when the address is taken (uvicorn would exit 3)."""
    from .listeners import check_free

    try:
        check_free(host, port)
    except OSError as err:
        raise CommandError(
            f"cannot listen on {host}:{port}: {(err.strerror or str(err)).lower()}; "
            f"is another server running there? Choose another {option}"
        ) from None


def startup_banner(config: Any, sources: dict[str, str] | None = None) -> str:
    """What ``serve`` prints at start: where it listens, what it serves, who may do what, and
    the settings that differ from the defaults with where each came from (``config``: a
    :class:`~mlaas4hep.serve.config.ServeConfig`)."""
    from pathlib import Path

    from .auth import load_token
    from .config import changed
    from .repository import Repository

    repo = Repository(config.repo)
    models = [f"{n} (v{', v'.join(str(v) for v in repo.versions(n))})" for n in repo.names()]
    if load_token(None, config.token_file):
        auth = "token required to upload, delete, load and unload"
        auth += (
            "; also to read and predict (--private)" if config.private else "; reading and predicting open"
        )
    elif config.no_auth:
        auth = "none: anyone who reaches the port may change the repository (--no-auth)"
    else:
        auth = "no token set, so uploads and deletions are refused (give --token-file or $MLAAS4HEP_TOKEN)"
    local = list(config.data_dir)
    reads = "local files under " + ", ".join(local) if local else "no local files (add --data-dir DIR)"
    hosts = list(config.allow_remote)
    if config.no_remote:
        reads += "; no remote URLs (--no-remote)"
    elif "*" in hosts:
        reads += "; remote URLs from any host (--allow-remote '*')"
    elif hosts:
        reads += f"; remote URLs from {', '.join(hosts)} only"
    else:
        reads += "; no remote URLs (allow hosts with --allow-remote HOST)"
    host = f"[{config.host}]" if ":" in config.host else config.host
    scheme = "https" if config.tls_cert else "http"
    lines = [
        f"mlaas4hep serve: {scheme}://{host}:{config.port}  (stop with Ctrl-C)",
        f"  repository:   {Path(config.repo).resolve()}",
        f"  models:       {', '.join(models) if models else 'none yet (mlaas4hep client upload BUNDLE)'}",
        f"  auth:         {auth}",
        f"  predict_root: {reads}",
    ]
    if config.grpc_port:
        lines.append(f"  gRPC:         {host}:{config.grpc_port} (Triton's API)")
    if config.metrics_port:
        # prometheus_client's own server, plain HTTP (as Triton's metrics port)
        lines.append(f"  metrics:      http://{host}:{config.metrics_port}/metrics (no token)")
    if config.jobs:
        engine = (
            f"the Dask cluster at {config.jobs_scheduler}" if config.jobs_scheduler else "local processes"
        )
        who = (
            f"; also access tokens of {config.oidc_issuer or config.oidc_jwks_url}"
            if (config.oidc_issuer or config.oidc_jwks_url)
            else ""
        )
        lines.append(
            f"  jobs:         POST /jobs, run as {engine}, {config.jobs_running} at once "
            f"({config.jobs_per_user} per user); state in {config.jobs_path.resolve()}{who}"
        )
    if config.workers > 1:
        lines.append(f"  workers:      {config.workers} processes")
    from . import native

    state = native.state()
    lines.append(f"  request path: {'compiled' if state.active else 'interpreted'}: {state.reason}")
    settings = changed(config, sources or {})
    if settings:
        lines.append(f"  settings:     {settings}")
    return "\n".join(lines)
