"""``mlaas4hep client``: the command line of the Python client (:mod:`mlaas4hep.client`).

It imports nothing of the server (:mod:`mlaas4hep.serve`), so it works where only
the client is installed. :func:`add_client_commands` registers ``client`` on the
main parser's subparsers. The client prints for people (predictions with their
labels, lists as tables) and, with ``--json``, for programs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from .jobcli import add_job_commands
from .terminal import CommandError, UsageError, count, format_scores, json_or, print_table

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
  mlaas4hep client submit train.yaml --model my_model.py --follow   (a server with --jobs)
  mlaas4hep client jobs
"""


def _help_and_usage_status(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def add_client_commands(subparsers: Any) -> None:
    """Register ``client`` on an :mod:`argparse` subparsers object."""
    c = subparsers.add_parser(
        "client",
        help="talk to a server: upload, models, delete, predict, predict-root, submit, jobs",
        description=CLIENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_client_arguments(c)


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
    add_job_commands(sub, _client)


# ------------------------------------------------------------------ client
def _client(action: Callable[[Any, argparse.Namespace], Any]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from .client import Client
        from .tokens import load_token

        with Client(args.url, token=load_token(None, args.token_file)) as cl:
            try:
                return int(action(cl, args) or 0)
            except Exception as err:
                raise _client_error(err, cl.url, cl) from err

    return run


def _client_error(err: Exception, url: str, cl: Any = None) -> Exception:
    """The one line a person needs for a failed request."""
    import httpx

    from .client import ClientError

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
    return json_or(a.json, r, lambda: print(f"installed {r['name']} version {r['version']}"))


def _delete(cl: Any, a: argparse.Namespace) -> Any:
    r = cl.delete(a.name, a.version)
    versions = r.get("deleted_versions", [])
    return json_or(
        a.json,
        r,
        lambda: print(
            f"deleted {a.name} version{'s' if len(versions) != 1 else ''} {', '.join(map(str, versions))}"
        ),
    )


def _models(cl: Any, a: argparse.Namespace) -> Any:
    models = cl.models()
    return json_or(a.json, models, lambda: _print_models(models))


def _print_models(models: list[dict[str, Any]]) -> None:
    if not models:
        print("no models (install one with: mlaas4hep client upload BUNDLE)")
        return
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


def _status(cl: Any, a: argparse.Namespace) -> Any:
    st = cl.status()
    rows = [[k, ", ".join(map(str, v)) if isinstance(v, list) else v] for k, v in st.items()]
    return json_or(a.json, st, lambda: print_table(rows, ["", cl.url]))


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
    return json_or(a.json, scores.tolist, lambda: _print_scores(cl, a, scores))


def _print_scores(cl: Any, a: argparse.Namespace, scores: Any) -> None:
    probs, labels = _class_probabilities(scores, _labels(cl, a.name, a.version))
    if len(probs) == 1:
        print(format_scores(labels, probs[0]))
    else:
        for i, row in enumerate(probs):
            print(f"{i}: {format_scores(labels, row, likeliest_first=False)}")


def _predict_root(cl: Any, a: argparse.Namespace) -> Any:
    """Scores per entry: the classes in label order (as in --csv, --json and the friend tree)."""
    if a.out:
        path = cl.predict_root_file(
            a.name, a.file, a.out, tree=a.tree, entry_start=a.start, entry_stop=a.stop, version=a.version
        )
        return json_or(
            a.json, {"written": str(path)}, lambda: print(f"wrote the scores of {a.file} to {path}")
        )
    res = cl.predict_root(a.name, a.file, a.tree, a.start, a.stop, version=a.version)
    # JSON: the friend tree's branches (entry, ids, score...), and "scores" as before
    return json_or(a.json, res, lambda: _print_entry_scores(cl, a, res))


def _print_entry_scores(cl: Any, a: argparse.Namespace, res: dict[str, Any]) -> None:
    scores = res.pop("scores")
    cols = [k for k in res if k != "score" and not k.startswith("score_")]  # entry and the ids
    probs, labels = _class_probabilities(scores, _labels(cl, a.name, a.version))
    if a.csv:
        print(",".join(cols + labels))
        for i in range(len(probs)):
            print(",".join([str(res[c][i]) for c in cols] + [f"{p:.6g}" for p in probs[i]]))
        return
    for i in range(len(probs)):
        ids = "  ".join(f"{c} {res[c][i]}" for c in cols)
        print(f"{ids}  " + "  ".join(f"{name} {float(p):.4g}" for name, p in zip(labels, probs[i])))
