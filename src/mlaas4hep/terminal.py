"""What every ``mlaas4hep`` command shares on a terminal: errors, exit statuses, tables.

Exit statuses (the same for every command)::

    0    success
    1    the command ran and failed (a file unreadable, a server unreachable or refusing)
    2    the command was given something wrong (an option, a configuration, an expression)
    130  interrupted (Ctrl-C)

An error prints one or two lines, ``error: what is wrong ... what to do``, on
standard error; ``mlaas4hep --debug COMMAND`` prints the traceback as well.
:func:`run` applies this to a subcommand's ``func(args)``; :class:`ArgumentParser`
makes argparse's usage errors one line too; :func:`report_error` is for a command
that catches an error itself. :func:`json_or` prints a command's answer, for a person
or as JSON (``--json``); :func:`add_executor_options` declares where decoding runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

EXIT_STATUS_HELP = """\
exit status:
  0    success
  1    the command ran and failed (unreadable file, server down or refusing, ...)
  2    usage or configuration error (bad option, YAML key, expression, model file)
  130  interrupted
errors print one or two lines; add --debug for the traceback.
"""


class UsageError(Exception):
    """Something the user typed is wrong: exit status 2, the message as is."""


class CommandError(Exception):
    """The command ran and failed (a server down, a request refused): exit status 1, the message as is."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error on one line that points to ``--help``."""

    def error(self, message: str) -> NoReturn:
        message = _with_guess(message, _options(self))
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def _options(parser: argparse.ArgumentParser) -> list[str]:
    """Every ``--option`` of ``parser`` and of its subcommands."""
    out: list[str] = []
    for action in parser._actions:
        out += [o for o in action.option_strings if o.startswith("--")]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _options(sub)
    return out


def _with_guess(message: str, options: list[str]) -> str:
    """argparse's "invalid choice: 'sumbit' (choose from ...)" with "did you mean 'submit'?" in front,
    and "unrecognized arguments: --jobs-kep-days" with "did you mean --jobs-keep-days?" after."""
    import difflib
    import re

    m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
    if m is not None:
        choices = re.findall(r"'([^']*)'", m.group(2))
        close = difflib.get_close_matches(m.group(1), choices, n=1, cutoff=0.6)
        return (
            f"{message[: m.start(2) - len('(choose from ')]}(did you mean {close[0]!r}?)"
            if close
            else message
        )
    m = re.match(r"unrecognized arguments: (.*)$", message)
    if m is not None:
        unknown = next((a.split("=")[0] for a in m.group(1).split() if a.startswith("--")), None)
        close = difflib.get_close_matches(unknown, sorted(set(options)), n=1, cutoff=0.75) if unknown else []
        if close:
            return f"{message}; did you mean {close[0]}?"
    return message


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (events, files, epochs, batch sizes)."""
    return _int_at_least(text, 1)


def count(text: str) -> int:
    """argparse type: an integer >= 0 (workers, entry numbers)."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} is too small: give {low} or more")
    return value


def add_executor_options(
    p: argparse.ArgumentParser, title: str = "parallelism", workers: str = "the config's, else all cores"
) -> None:
    """``--workers``, ``--executor`` and ``--scheduler`` (where decoding runs), in a group
    ``title``; ``workers`` says what ``--workers`` defaults to. The options override the
    dataset configuration's ``workers``, ``executor`` and ``scheduler``."""
    g = p.add_argument_group(title)
    g.add_argument(
        "--workers",
        type=count,
        help=f"decoding workers: 1-2 are threads, more are processes (0 = none; default: {workers})",
    )
    g.add_argument(
        "--executor",
        choices=["local", "threads", "processes", "dask"],
        help="where decoding runs (default: the config's, else local)",
    )
    g.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="Dask scheduler address, e.g. tcp://10.0.0.1:8786 (implies --executor dask)",
    )


def exit_status(err: BaseException) -> int:
    """1 for a failure while running, 2 for a wrong input (see the module docstring)."""
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(err, UsageError):
        return EXIT_USAGE
    status: int = getattr(err, "exit_status", EXIT_FAILURE)  # mlaas4hep's errors say which
    return status


def error_message(err: BaseException) -> str:
    """``error: ...`` for an exception: mlaas4hep's own messages as they are, others with their type."""
    from .errors import Mlaas4hepError

    if isinstance(err, (Mlaas4hepError, UsageError, CommandError)):
        text = str(err)
        from .io.errors import BranchNotFoundError

        if isinstance(err, BranchNotFoundError) and "did you mean" not in text:
            from .io.inspect import suggest_branches

            text += suggest_branches(getattr(err, "file", ""), getattr(err, "branch", ""))
    elif isinstance(err, OSError) and err.filename and err.strerror:
        text = f"{err.strerror.lower()}: {err.filename}"
    elif isinstance(err, MemoryError):
        text = "out of memory; try a smaller chunk_size or fewer workers"
    else:
        text = f"{type(err).__name__}: {err}".rstrip(": ")
    lines = [ln for ln in text.strip().splitlines() if ln.strip()] or [type(err).__name__]
    if len(lines) > 2:  # a library's long help text: keep its first line
        lines = lines[:1]
    return "error: " + "\n".join(lines)


def run(func: Callable[[Any], int | None], args: Any, debug: bool = False) -> int:
    """Call ``func(args)`` and turn any exception into a message and an exit status."""
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `mlaas4hep inspect f.root | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        return EXIT_OK
    except Exception as err:  # SystemExit (a message of its own) passes through
        if debug:
            traceback.print_exc()
        print(error_message(err), file=sys.stderr)
        if not debug and exit_status(err) == EXIT_FAILURE and not _explained(err):
            print("(run `mlaas4hep --debug ...` for the traceback)", file=sys.stderr)
        return exit_status(err)


def report_error(err: BaseException, args: Any) -> int:
    """For a command that catches an error itself (to say more, or to go on): with ``--debug``
    the error goes on to :func:`run` (the traceback); otherwise its message, as :func:`run`
    prints it, and its exit status."""
    if getattr(args, "debug", False):
        raise err
    print(error_message(err), file=sys.stderr)
    return exit_status(err)


def _explained(err: BaseException) -> bool:
    from .errors import Mlaas4hepError

    return isinstance(err, (Mlaas4hepError, UsageError, CommandError, OSError))


# ------------------------------------------------------------------ output
def print_json(obj: Any) -> None:
    """Machine output: JSON on standard output (numpy arrays become lists)."""
    print(json.dumps(obj, indent=1, default=_plain))


def json_or(as_json: bool, data: Any, show: Callable[[], object]) -> int:
    """A command's answer: with ``--json``, ``data`` as JSON on standard output (a callable
    is called for it first, so that only machine output builds it); otherwise ``show()``
    prints it for a person. Returns the exit status, 0.

    ::

        return json_or(args.json, plan, lambda: print(format_plan(plan)))
    """
    if as_json:
        print_json(data() if callable(data) else data)
    else:
        show()
    return EXIT_OK


def _plain(obj: Any) -> Any:
    tolist = getattr(obj, "tolist", None)
    return tolist() if callable(tolist) else str(obj)


def print_table(
    rows: Sequence[Sequence[Any]], columns: Sequence[str], title: str | None = None, right: Sequence[str] = ()
) -> None:
    """A rich table on standard output; columns named in ``right`` are right-aligned (numbers)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, justify="right" if c in right else "left")
    for r in rows:
        table.add_row(*("-" if v is None else str(v) for v in r))
    Console().print(table)


def format_scores(labels: Sequence[str], probs: Sequence[float], likeliest_first: bool = True) -> str:
    """``ttH 0.82  ttbar 0.18``: each class with its probability.

    The likeliest class comes first; with ``likeliest_first=False`` (rows listed
    one under the other) the order is fixed, the last label (the signal, label 1) first.
    """
    pairs = list(zip(labels, probs))[::-1]
    if likeliest_first:
        pairs.sort(key=lambda p: -float(p[1]))
    return "  ".join(f"{name} {float(p):.4g}" for name, p in pairs)
