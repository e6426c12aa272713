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
import json
from collections.abc import Callable
from typing import Any

from ..terminal import CommandError, UsageError, count, format_scores, print_json, print_table

SERVE_HELP = """\
Serve a repository of model bundles over HTTP: the TFaaS API (/upload, /models,
/delete/{model}, /json, /status), the Open Inference Protocol v2 (/v2/..., with
binary tensors and the repository extension; tritonclient works unmodified),
predict_root over whole ROOT files, a web page at / and Prometheus /metrics.

The repository DIR holds DIR/{name}/{version}/ bundles and survives restarts.
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

CLIENT_HELP = """\
Talk to an mlaas4hep (or TFaaS-compatible) server: upload bundles, list and
delete models, predict feature rows or raw branch values, and score whole ROOT
files that the server reads. --url defaults to $MLAAS4HEP_URL or
http://127.0.0.1:8083; the token to $MLAAS4HEP_TOKEN.

examples:
  mlaas4hep client models
  mlaas4hep client --token-file token.txt upload out/bundle --name tth
  mlaas4hep client predict tth --values 0.1,0.5,0.3,...      (one feature row)
  mlaas4hep client predict tth --input rows.json             ([[...], ...] or {"MET_pt": [...], "Jet_pt": [[...]]})
  mlaas4hep client predict-root tth root://host//store/f.root --stop 1000 --out scores.root
  mlaas4hep client --token-file token.txt delete tth
"""


def add_serve_commands(subparsers: Any) -> None:
    """Register ``serve`` and ``client`` on an :mod:`argparse` subparsers object."""
    fmt = argparse.RawDescriptionHelpFormatter
    s = subparsers.add_parser(
        "serve",
        help="serve model bundles over HTTP (TFaaS API + Open Inference Protocol v2)",
        description=SERVE_HELP,
        formatter_class=fmt,
    )
    add_serve_arguments(s)
    c = subparsers.add_parser(
        "client",
        help="talk to a server: upload, models, delete, predict, predict-root",
        description=CLIENT_HELP,
        formatter_class=fmt,
    )
    add_client_arguments(c)


def add_serve_arguments(s: argparse.ArgumentParser) -> None:
    """The options of ``mlaas4hep serve`` (and ``python -m mlaas4hep.serve``)."""
    s.add_argument(
        "--repo", required=True, metavar="DIR", help="model repository directory (created if missing)"
    )
    s.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)"
    )
    s.add_argument("--port", type=int, default=8083, help="port (default 8083, as TFaaS)")
    s.add_argument(
        "--token-file",
        metavar="F",
        help="file whose first line is the bearer token (default: $MLAAS4HEP_TOKEN)",
    )
    s.add_argument(
        "--max-batch",
        type=int,
        default=256,
        help="dynamic batching: most rows per onnxruntime call (default 256; 1 disables batching)",
    )
    s.add_argument(
        "--max-delay-ms",
        type=float,
        default=2.0,
        help="dynamic batching: longest wait of a request for company (default 2 ms)",
    )
    s.add_argument(
        "--max-loaded", type=int, default=16, help="onnxruntime sessions kept in memory (LRU, default 16)"
    )
    s.add_argument(
        "--threads",
        type=int,
        default=None,
        help="onnxruntime intra-op threads per session (default: all cores)",
    )
    s.add_argument(
        "--infer-threads", type=int, default=2, help="onnxruntime calls running at once (default 2)"
    )
    s.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port and the repository (default 1; each has its own "
        "batcher and /metrics; 2 roughly doubles small-request throughput on 2 cores)",
    )
    s.add_argument(
        "--data-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="local directory whose ROOT files predict_root may read (repeatable; default none)",
    )
    s.add_argument(
        "--no-remote", action="store_true", help="predict_root: refuse root:// and http(s):// URLs"
    )
    s.add_argument(
        "--allow-remote",
        metavar="HOST[,HOST]",
        default="",
        help="predict_root: hosts whose root:// and http(s):// files it may read ('*': any; default none)",
    )
    s.add_argument(
        "--root-timeout", type=float, default=300, help="predict_root: seconds per request (default 300)"
    )
    s.add_argument("--private", action="store_true", help="require the token for reads and inference too")
    s.add_argument(
        "--no-auth",
        action="store_true",
        help="allow repository changes without a token (only on a trusted machine)",
    )
    s.add_argument("--max-body-mb", type=float, default=64, help="largest inference request (default 64 MB)")
    s.add_argument("--max-upload-mb", type=float, default=512, help="largest bundle upload (default 512 MB)")
    s.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        metavar="N",
        help="also serve Triton's gRPC API (inference.GRPCInferenceService) on this port, same models "
        "and token (Triton's default is 8001; needs grpcio)",
    )
    s.add_argument(
        "--tls-cert", metavar="PEM", help="TLS certificate: HTTPS, and TLS on gRPC (with --tls-key)"
    )
    s.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    s.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    s.set_defaults(func=run_serve)
    _help(s, log_level="server log level (default warning; info logs every request)")


def add_client_arguments(c: argparse.ArgumentParser) -> None:
    """The options and subcommands of ``mlaas4hep client``."""
    c.add_argument("--url", default=None, help="server URL (default $MLAAS4HEP_URL or http://127.0.0.1:8083)")
    c.add_argument(
        "--token-file", metavar="F", help="file holding the bearer token (default $MLAAS4HEP_TOKEN)"
    )
    c.add_argument("--json", action="store_true", help="machine output: print the server's answer as JSON")
    cs = c.add_subparsers(dest="client_command", metavar="COMMAND")
    c.set_defaults(func=lambda a: _help_and_usage_status(c))

    def sub(name: str, help: str) -> argparse.ArgumentParser:
        p = cs.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
        # also accepted after the subcommand: `client models --json`
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
        return p

    up = sub("upload", "install a bundle directory or .tar.gz (needs the token)")
    up.add_argument("bundle", help="bundle directory or .tar.gz")
    up.add_argument("--name", help="model name (default: the bundle's)")
    up.add_argument("--version", type=int, help="version (default: the bundle's if free, else latest+1)")
    up.set_defaults(func=_client(_upload))
    sub("models", "list the models with versions, labels and features").set_defaults(func=_client(_models))
    sub("status", "the server's health, models and loaded sessions").set_defaults(func=_client(_status))
    de = sub("delete", "delete a model, every version or --version (needs the token)")
    de.add_argument("name", help="model name")
    de.add_argument("--version", type=int, help="delete only this version")
    de.set_defaults(func=_client(_delete))
    pr = sub("predict", "class probabilities for feature rows or raw branch values")
    pr.add_argument("name", help="model name")
    pr.add_argument(
        "--values",
        type=_numbers,
        metavar="X,Y,...",
        help="one feature row, comma separated, in feature order",
    )
    pr.add_argument(
        "--input", metavar="FILE", help="JSON file: a list of rows, or {branch: values} of raw branches"
    )
    pr.add_argument("--version", type=int, help="model version (default: the latest)")
    pr.set_defaults(func=_client(_predict))
    rt = sub("predict-root", "scores for the entries of a ROOT file that the server reads")
    rt.add_argument("name", help="model name")
    rt.add_argument(
        "file", metavar="URL", help="file path (under the server's --data-dir), root:// or http(s):// URL"
    )
    rt.add_argument("--tree", help="tree name (default: the bundle's)")
    rt.add_argument("--start", type=count, default=0, help="first entry (default 0)")
    rt.add_argument("--stop", type=count, default=None, help="entry after the last one (default: the end)")
    rt.add_argument(
        "-o", "--out", metavar="FILE", help="write a friend-tree ROOT file of scores here (else print them)"
    )
    rt.add_argument("--csv", action="store_true", help="print CSV: entry, event ids, one column per label")
    rt.add_argument("--version", type=int, help="model version (default: the latest)")
    rt.set_defaults(func=_client(_predict_root))


def run_serve(args: argparse.Namespace) -> int:
    from . import serve

    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together (the certificate and its private key)")
    _check_port(args.host, args.port)
    print(startup_banner(args), flush=True)
    prefixes = list(args.data_dir) + ([] if args.no_remote else ["root://", "http://", "https://"])
    serve(
        args.repo,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        workers=args.workers,
        token_file=args.token_file,
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        max_loaded=args.max_loaded,
        threads=args.threads,
        infer_threads=args.infer_threads,
        private=args.private,
        allow_anonymous_admin=args.no_auth,
        root_prefixes=prefixes,
        allow_remote=[h.strip() for h in args.allow_remote.split(",") if h.strip()],
        root_timeout=args.root_timeout,
        max_body=int(args.max_body_mb * 2**20),
        max_upload=int(args.max_upload_mb * 2**20),
        grpc_port=args.grpc_port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
    return 0


def _check_port(host: str, port: int) -> None:
    """One line, before anything starts, when the address is taken (uvicorn would exit 3)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            raise CommandError(
                f"cannot listen on {host}:{port}: {(err.strerror or str(err)).lower()}; "
                "is another server running there? Choose another --port"
            ) from None


def _help_and_usage_status(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _help(parser: argparse.ArgumentParser, **helps: str) -> None:
    """Set the help text of options by ``dest`` (keeps the option lines above short to merge)."""
    for action in parser._actions:
        if action.dest in helps and not action.help:
            action.help = helps[action.dest]


def startup_banner(args: argparse.Namespace) -> str:
    """What ``serve`` prints at start: where it listens, what it serves, who may do what.

    It prints what the options say; an option it does not know (a newer one) is not shown.
    """
    from pathlib import Path

    from .auth import load_token
    from .repository import Repository

    repo = Repository(args.repo)
    models = [f"{n} (v{', v'.join(str(v) for v in repo.versions(n))})" for n in repo.names()]
    if load_token(None, args.token_file):
        auth = "token required to upload, delete, load and unload"
        auth += "; also to read and predict (--private)" if args.private else "; reading and predicting open"
    elif args.no_auth:
        auth = "none: anyone who reaches the port may change the repository (--no-auth)"
    else:
        auth = "no token set, so uploads and deletions are refused (give --token-file or $MLAAS4HEP_TOKEN)"
    local = list(args.data_dir)
    reads = "local files under " + ", ".join(local) if local else "no local files (add --data-dir DIR)"
    allow = getattr(args, "allow_remote", None)  # the remote allow-list, where the server has one
    if args.no_remote:
        reads += "; no remote URLs (--no-remote)"
    elif allow is None:
        reads += "; remote URLs root:// http:// https://"
    else:
        hosts = [h.strip() for h in str(allow).split(",") if h.strip()]
        if "*" in hosts:
            reads += "; remote URLs from any host (--allow-remote '*')"
        elif hosts:
            reads += f"; remote URLs from {', '.join(hosts)} only"
        else:
            reads += "; no remote URLs (allow hosts with --allow-remote HOST)"
    host = f"[{args.host}]" if ":" in args.host else args.host
    scheme = "https" if getattr(args, "tls_cert", None) else "http"
    lines = [
        f"mlaas4hep serve: {scheme}://{host}:{args.port}  (stop with Ctrl-C)",
        f"  repository:   {Path(args.repo).resolve()}",
        f"  models:       {', '.join(models) if models else 'none yet (mlaas4hep client upload BUNDLE)'}",
        f"  auth:         {auth}",
        f"  predict_root: {reads}",
    ]
    if getattr(args, "grpc_port", None):
        lines.append(f"  gRPC:         {host}:{args.grpc_port} (Triton's API)")
    if args.workers > 1:
        lines.append(f"  workers:      {args.workers} processes")
    return "\n".join(lines)


# ------------------------------------------------------------------ client
def _client(action: Callable[[Any, argparse.Namespace], Any]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from ..client import Client
        from .auth import load_token

        with Client(args.url, token=load_token(None, args.token_file)) as cl:
            try:
                result = action(cl, args)
            except Exception as err:
                raise _client_error(err, cl.url, cl) from err
        if result is not None:
            print_json(result)
        return 0

    return run


def _client_error(err: Exception, url: str, cl: Any = None) -> Exception:
    """The one line a person needs for a failed request."""
    import httpx

    from ..client import ClientError

    if isinstance(err, httpx.ConnectError):
        return CommandError(
            f"cannot connect to {url}: is `mlaas4hep serve` running? (--url or $MLAAS4HEP_URL)"
        )
    if isinstance(err, httpx.TimeoutException):
        return CommandError(f"{url} did not answer in time ({type(err).__name__})")
    if isinstance(err, httpx.UnsupportedProtocol):
        return UsageError(f"{url} is not an http:// or https:// URL")
    if isinstance(err, ClientError):
        needs_token = err.status == 401 or (err.status == 403 and "token" in err.message)
        hint = " (give the token: --token-file F or $MLAAS4HEP_TOKEN)" if needs_token else ""
        if err.status == 404 and "unknown model" in err.message and cl is not None:
            hint = _model_hint(cl, err.message)
        return CommandError(f"the server answered {err.status}: {err.message}{hint}")
    return err


def _model_hint(cl: Any, message: str) -> str:
    """``; did you mean 'tth'?``, or the list of models, for an unknown model name."""
    import difflib
    import re

    try:
        names = [m["name"] for m in cl.models()]
    except Exception:
        return ""
    wrong = re.search(r"unknown model '([^']*)'", message)
    close = difflib.get_close_matches(wrong.group(1), names, n=1) if wrong else []
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; models here: {', '.join(names)}" if names else "; the server has no models yet"


def _numbers(text: str) -> list[float]:
    """argparse type of ``--values``: ``0.1,2,3e4``."""
    out = []
    for item in text.split(","):
        try:
            out.append(float(item))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item.strip()!r} is not a number; give numbers separated by commas, e.g. 0.3,1.2,45"
            ) from None
    return out


def _upload(cl: Any, a: argparse.Namespace) -> Any:
    r = cl.upload(a.bundle, a.name, a.version)
    if a.json:
        return r
    print(f"installed {r['name']} version {r['version']}")
    return None


def _delete(cl: Any, a: argparse.Namespace) -> Any:
    r = cl.delete(a.name, a.version)
    if a.json:
        return r
    versions = r.get("deleted_versions", [])
    print(f"deleted {a.name} version{'s' if len(versions) != 1 else ''} {', '.join(map(str, versions))}")
    return None


def _models(cl: Any, a: argparse.Namespace) -> Any:
    models = cl.models()
    if a.json:
        return models
    if not models:
        print("no models (install one with: mlaas4hep client upload BUNDLE)")
        return None
    rows = []
    for m in models:
        auc = (m.get("metrics") or {}).get("val_auc", (m.get("metrics") or {}).get("auc"))
        rows.append(
            [
                m["name"],
                ", ".join(str(v) for v in m.get("versions", [])),
                m.get("framework"),
                ", ".join(m.get("label_names") or []),
                m.get("n_features"),
                None if auc is None else f"{auc:.4f}",
                "yes" if m.get("ready") else "no",
            ]
        )
    cols = ["model", "versions", "framework", "labels", "features", "AUC", "ready"]
    print_table(rows, cols, right=["features", "AUC"])
    return None


def _status(cl: Any, a: argparse.Namespace) -> Any:
    st = cl.status()
    if a.json:
        return st
    rows = [[k, ", ".join(map(str, v)) if isinstance(v, list) else v] for k, v in st.items()]
    print_table(rows, ["", cl.url])
    return None


def _labels(cl: Any, name: str, version: int | None) -> list[str]:
    for m in cl.models():
        if m["name"] == name and (version is None or int(version) in m.get("versions", [])):
            return list(m.get("label_names") or [])
    return []


def _class_probabilities(scores: Any, labels: list[str]) -> tuple[Any, list[str]]:
    """One column per label: a single sigmoid output p becomes (1 - p, p)."""
    import numpy as np

    scores = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    if scores.shape[1] == 1 and len(labels) == 2:
        scores = np.hstack([1 - scores, scores])
    if len(labels) != scores.shape[1]:
        labels = [f"class{i}" for i in range(scores.shape[1])]
    return scores, labels


def _predict(cl: Any, a: argparse.Namespace) -> Any:
    import numpy as np

    if a.values:
        scores = cl.predict(a.name, np.array([a.values]), version=a.version)
    elif a.input:
        with open(a.input) as f:
            data = json.load(f)
        if isinstance(data, dict):
            scores = cl.predict(a.name, raw=data, version=a.version)
        else:
            scores = cl.predict(a.name, np.asarray(data, dtype=np.float32), version=a.version)
    else:
        raise UsageError("predict needs --values X,Y,... (one row) or --input FILE (JSON)")
    if a.json:
        return scores.tolist()
    probs, labels = _class_probabilities(scores, _labels(cl, a.name, a.version))
    if len(probs) == 1:
        print(format_scores(labels, probs[0]))
    else:
        for i, row in enumerate(probs):
            print(f"{i}: {format_scores(labels, row, likeliest_first=False)}")
    return None


def _predict_root(cl: Any, a: argparse.Namespace) -> Any:
    if a.out:
        path = cl.predict_root_file(
            a.name, a.file, a.out, tree=a.tree, entry_start=a.start, entry_stop=a.stop, version=a.version
        )
        if a.json:
            return {"written": str(path)}
        print(f"wrote the scores of {a.file} to {path}")
        return None
    res = cl.predict_root(a.name, a.file, a.tree, a.start, a.stop, version=a.version)
    scores = res.pop("scores")
    if a.json:
        return {**res, "scores": scores}
    probs, labels = _class_probabilities(scores, _labels(cl, a.name, a.version))
    cols = list(res)
    if a.csv:
        print(",".join(cols + labels))
        for i in range(len(probs)):
            print(",".join([str(res[c][i]) for c in cols] + [f"{p:.6g}" for p in probs[i]]))
        return None
    for i in range(len(probs)):
        ids = "  ".join(f"{c} {res[c][i]}" for c in cols)
        print(f"{ids}  {format_scores(labels, probs[i], likeliest_first=False)}")
    return None
