"""``mlaas4hep serve`` and ``mlaas4hep client``: argparse wiring.

:func:`add_serve_commands` registers both on the main parser's subparsers;
each parser sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

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

    c = subparsers.add_parser(
        "client",
        help="talk to a server: upload, models, delete, predict, predict-root",
        description=CLIENT_HELP,
        formatter_class=fmt,
    )
    c.add_argument("--url", default=None, help="server URL (default $MLAAS4HEP_URL or http://127.0.0.1:8083)")
    c.add_argument(
        "--token-file", metavar="F", help="file holding the bearer token (default $MLAAS4HEP_TOKEN)"
    )
    cs = c.add_subparsers(dest="client_command", metavar="COMMAND")
    c.set_defaults(func=lambda a: (c.print_help(), 2)[1])
    up = cs.add_parser("upload", help="install a bundle directory or .tar.gz")
    up.add_argument("bundle", help="bundle directory or .tar.gz")
    up.add_argument("--name", help="model name (default: the bundle's)")
    up.add_argument("--version", type=int, help="version (default: the bundle's if free, else latest+1)")
    up.set_defaults(func=_client(lambda cl, a: cl.upload(a.bundle, a.name, a.version)))
    cs.add_parser("models", help="list models").set_defaults(func=_client(lambda cl, a: cl.models()))
    cs.add_parser("status", help="server status").set_defaults(func=_client(lambda cl, a: cl.status()))
    de = cs.add_parser("delete", help="delete a model (every version, or --version)")
    de.add_argument("name")
    de.add_argument("--version", type=int)
    de.set_defaults(func=_client(lambda cl, a: cl.delete(a.name, a.version)))
    pr = cs.add_parser("predict", help="probabilities for feature rows or raw branch values")
    pr.add_argument("name")
    pr.add_argument("--values", help="one feature row, comma separated")
    pr.add_argument("--input", help="JSON file: a list of rows, or {branch: values} of raw branches")
    pr.add_argument("--version", type=int)
    pr.set_defaults(func=_client(_predict))
    rt = cs.add_parser("predict-root", help="scores for the entries of a ROOT file the server reads")
    rt.add_argument("name")
    rt.add_argument("url", help="file path (under the server's --data-dir), root:// or http(s):// URL")
    rt.add_argument("--tree", help="tree name (default: the bundle's)")
    rt.add_argument("--start", type=int, default=0, help="first entry")
    rt.add_argument("--stop", type=int, default=None, help="entry after the last one")
    rt.add_argument("--out", help="write a friend-tree ROOT file of scores here (else print CSV)")
    rt.add_argument("--version", type=int)
    rt.set_defaults(func=_client(_predict_root))


def run_serve(args: argparse.Namespace) -> int:
    from . import serve

    prefixes = list(args.data_dir) + ([] if args.no_remote else ["root://", "http://", "https://"])
    if (args.tls_cert is None) != (args.tls_key is None):
        print("error: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
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


def _client(action):
    def run(args: argparse.Namespace) -> int:
        from ..client import Client, ClientError
        from .auth import load_token

        try:
            with Client(args.url, token=load_token(None, args.token_file)) as cl:
                result = action(cl, args)
        except ClientError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        except OSError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        if result is not None:
            print(json.dumps(result, indent=1, default=_plain))
        return 0

    return run


def _plain(obj: Any) -> Any:
    import numpy as np

    return obj.tolist() if isinstance(obj, np.ndarray) else str(obj)


def _predict(cl: Any, a: argparse.Namespace) -> Any:
    import numpy as np

    if a.values:
        return cl.predict(
            a.name, np.array([[float(v) for v in a.values.split(",")]]), version=a.version
        ).tolist()
    if a.input:
        with open(a.input) as f:
            data = json.load(f)
        if isinstance(data, dict):
            return cl.predict(a.name, raw=data, version=a.version).tolist()
        return cl.predict(a.name, np.asarray(data, dtype=np.float32), version=a.version).tolist()
    raise SystemExit("predict: give --values or --input")


def _predict_root(cl: Any, a: argparse.Namespace) -> Any:
    if a.out:
        path = cl.predict_root_file(
            a.name, a.url, a.out, tree=a.tree, entry_start=a.start, entry_stop=a.stop, version=a.version
        )
        return {"written": str(path)}
    res = cl.predict_root(a.name, a.url, a.tree, a.start, a.stop, version=a.version)
    scores = res.pop("scores")
    cols = list(res)
    print(",".join(cols + [f"score{i}" for i in range(scores.shape[1])]))
    for i in range(len(scores)):
        print(",".join([str(res[c][i]) for c in cols] + [f"{s:.6g}" for s in scores[i]]))
    return None
