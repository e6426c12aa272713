"""What the documents say about the command line, checked against the command line itself.

Running a block proves that its commands work, but many blocks cannot run here
(a Dask cluster, a GPU, the CERN network: ``syntax-only``), synopses are not
run at all, and prose quotes commands in backticks. So:

* :func:`commands` finds every ``mlaas4hep ...`` command of a document: in its
  shell blocks (run or not), in blocks without a language (synopses, outputs)
  and in inline code; :func:`unknown_options` walks each one through the real
  argparse parser (:func:`mlaas4hep.cli.build_parser`), subcommand by
  subcommand, and names every option that the parser does not have;
* :func:`transcript_steps` reads the ``[n/N] title ...`` lines of the demo's
  transcript in the README, to be compared with the demo's own
  :data:`mlaas4hep.demo.run.STEPS`.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

from .harness import _logical_lines, extract

SHELL_LANGS = {"bash", "sh", "shell", "console", ""}
#: A command in inline code: `mlaas4hep train --threads 1`.
INLINE = re.compile(r"`((?:mlaas4hep|python3? -m mlaas4hep\.serve)\s[^`]*)`")
#: Where a shell command ends (a pipe, a list, a redirection, a comment).
ENDS = {"|", "||", "&&", ";", "&", ">", ">>", "2>", "2>&1", "<", "#"}
#: A step line of the demo's transcript: ``[3/8] specs pass, then ... ...``.
STEP_LINE = re.compile(r"^\[(\d+)/(\d+)\] (.*) \.\.\.$")


def commands(path: Path, name: str) -> list[tuple[str, list[str]]]:
    """``(where, words after 'mlaas4hep')`` for every mlaas4hep command in the document."""
    found: list[tuple[str, list[str]]] = []
    for block in extract(path, name=name):
        if block.lang not in SHELL_LANGS:
            continue
        text = block.commands() if block.lang == "console" else block.code
        for i, line in enumerate(_logical_lines(text)):
            words = _words(line)
            if words is not None:
                found.append((f"{block.where} (+{i + 1})", words))
    for n, line in enumerate(path.read_text().splitlines(), 1):
        for m in INLINE.finditer(line):
            words = _words(m.group(1))
            if words is not None:
                found.append((f"{name}:{n}", words))
    return found


def _words(line: str) -> list[str] | None:
    """The words after ``mlaas4hep`` of a shell line that runs it (None if it does not)."""
    try:
        words = shlex.split(line.replace("$(", "( "), comments=False)
    except ValueError:  # an unbalanced quote in an output line
        words = line.split()
    while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value mlaas4hep ...
        words = words[1:]
    if words[:1] == ["$"]:
        words = words[1:]
    if words[:3] in (["python", "-m", "mlaas4hep.serve"], ["python3", "-m", "mlaas4hep.serve"]):
        words = ["mlaas4hep", "serve", *words[3:]]
    for i in range(len(words) - 1):  # python -m mlaas4hep.cli ..., torchrun ... -m mlaas4hep.cli ...
        if words[i : i + 2] == ["-m", "mlaas4hep.cli"]:
            words = ["mlaas4hep", *words[i + 2 :]]
            break
    if not words or words[0] != "mlaas4hep":
        return None
    out = []
    for w in words[1:]:
        if w in ENDS or w.startswith(("#", ">", "|")):
            break
        out.append(w)
    return out


def unknown_options(parser: argparse.ArgumentParser, words: list[str]) -> list[str]:
    """The options in ``words`` that ``parser`` (descending into subcommands) does not define.

    A synopsis's brackets and bars (``[--device cpu|cuda]``) are read as the
    options they show; values are not checked, nor abbreviations allowed.
    """
    bad: list[str] = []
    current = parser
    for raw in words:
        for word in filter(None, re.split(r"[\[\]{}()]", raw)):
            if word.startswith("-") and len(word) > 1 and not _number(word):
                option = word.split("=", 1)[0]
                if option not in current._option_string_actions and not _short_flags(current, option):
                    bad.append(f"{option} (mlaas4hep {current.prog.split(' ', 1)[-1]})")
                continue
            sub = _subcommands(current)
            if sub is not None and word in sub:
                current = sub[word]
    return bad


def _number(word: str) -> bool:
    try:
        float(word)
        return True
    except ValueError:
        return False


def _short_flags(parser: argparse.ArgumentParser, option: str) -> bool:
    """``-vv``: a repeated short flag."""
    return (
        len(option) > 2
        and option[1] != "-"
        and all(f"-{c}" in parser._option_string_actions for c in option[1:])
    )


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return None


def transcript_steps(readme: str) -> list[tuple[int, int, str]]:
    """``(n, N, title)`` of each ``[n/N] title ...`` line of the README's blocks."""
    steps = []
    for line in readme.splitlines():
        m = STEP_LINE.match(line.strip())
        if m:
            steps.append((int(m[1]), int(m[2]), m[3]))
    return steps


def step_pattern(template: str) -> re.Pattern[str]:
    """A demo step's title template as a regex: each ``{field}`` matches whatever was filled in."""
    parts = re.split(r"\{[^}]*\}", template)
    return re.compile("^" + ".+?".join(re.escape(p) for p in parts) + "$")
