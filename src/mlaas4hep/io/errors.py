"""Errors of the streaming layer.

Every error names what went wrong *and where*: the file, the tree, the branch,
and what was expected, so that a user staring at a log from a grid job can act
on it without a debugger.
"""

from __future__ import annotations

import errno

from ..errors import ConfigError, Mlaas4hepError, _rebuild

__all__ = ["ConfigError", "Mlaas4hepError", "_rebuild"]  # the base errors, re-exported


class FileOpenError(Mlaas4hepError, OSError):
    """A file could not be opened or read (missing, unreachable, not ROOT).

    ``transient`` is True when the cause was the network or the server (a
    refused or expired connection, a timeout), not the file: such errors are
    retried, and never skipped by ``on_error: skip``.
    """

    def __init__(self, file: str, reason: str, transient: bool = False):
        self.file = file
        self.reason = reason
        self.transient = transient
        super().__init__(f"cannot read file {file!r}: {reason}")


class ServerUnavailableError(FileOpenError):
    """A remote read kept failing with transient errors until the retry budget ran out.

    The storage, not the file, is at fault, so ``on_error: skip`` never skips
    it: skipping would silently drop good events. The epoch fails instead, and
    can be rerun when the storage is back.
    """

    def __init__(self, file: str, reason: str, attempts: int = 0, seconds: float = 0.0):
        self.attempts, self.seconds = attempts, seconds
        FileOpenError.__init__(self, file, reason, transient=True)


class CorruptFileError(FileOpenError):
    """A file opened but its content could not be decoded (truncated or corrupt)."""

    def __init__(self, file: str, reason: str, branch: str | None = None):
        self.branch = branch
        where = f" (branch {branch!r})" if branch else ""
        FileOpenError.__init__(self, file, f"corrupt or truncated data{where}: {reason}")


class TreeNotFoundError(Mlaas4hepError, KeyError):
    """The requested tree does not exist in a file."""

    exit_status = 2  # a mistake in what the user wrote

    def __init__(self, file: str, tree: str, available: list[str]):
        self.file, self.tree, self.available = file, tree, available
        super().__init__(f"no tree {tree!r} in file {file!r}; trees there: {available}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class BranchNotFoundError(Mlaas4hepError, KeyError):
    """A requested branch (or pattern) matches nothing in a file."""

    exit_status = 2  # a mistake in what the user wrote

    def __init__(self, file: str, branch: str, hint: str = ""):
        self.file, self.branch = file, branch
        msg = f"no branch matching {branch!r} in tree of file {file!r}"
        super().__init__(msg + (f"; {hint}" if hint else ""))

    def __str__(self) -> str:
        return str(self.args[0])


class UnsupportedBranchError(Mlaas4hepError, TypeError):
    """A branch holds a type that cannot become a numeric feature.

    ``expected`` is the branch's type in the dataset's reference schema, when
    the other files hold it as numbers.
    """

    def __init__(
        self, file: str, branch: str, typename: str, expected: str | None = None, reference: str = ""
    ):
        self.file, self.branch, self.typename, self.expected = file, branch, typename, expected
        self.reference = reference
        if expected is None:
            hint = ". Exclude it with 'exclude:'"
        else:
            hint = f", as the dataset's schema has it: {expected!r}" + (
                f" ({reference})" if reference else ""
            )
        super().__init__(
            f"branch {branch!r} in file {file!r} has type {typename!r}; expected a number "
            f"(bool, integer, float) or a jagged list of numbers{hint}"
        )


class SchemaMismatchError(Mlaas4hepError, TypeError):
    """A branch is flat in the dataset's schema but jagged in a file, or the other way round."""

    def __init__(self, file: str, branch: str, typename: str, expected: str, reference: str = ""):
        self.file, self.branch, self.typename, self.expected = file, branch, typename, expected
        self.reference = reference
        super().__init__(
            f"branch {branch!r} in file {file!r} has type {typename!r} ({_kind(typename)}), "
            f"but {expected!r} ({_kind(expected)}) in the dataset's schema"
            + (f" ({reference})" if reference else "")
        )


class SchemaDifferencesError(ConfigError):
    """The dataset's files differ in more than one selected branch (``branches_policy: strict``).

    Every difference of every file is in the one message, grouped by what the
    files lack, so one run shows them all. ``errors`` holds one error per
    difference (:class:`BranchNotFoundError`, :class:`UnsupportedBranchError`
    or :class:`SchemaMismatchError`).
    """

    def __init__(self, errors: list[Mlaas4hepError], n_files: int, reference: str = ""):
        self.errors = errors
        by_file: dict[str, tuple[list[str], list[str]]] = {}
        for err in errors:
            missing, other = by_file.setdefault(getattr(err, "file", "?"), ([], []))
            name = getattr(err, "branch", "?")
            if isinstance(err, BranchNotFoundError):
                missing.append(name)
            else:
                other.append(f"{name} is {getattr(err, 'typename', '?')!r}")
        groups: dict[str, list[str]] = {}  # files with the same differences are named together
        for file, (lacks, others) in by_file.items():
            said = ([f"no {', '.join(lacks)}"] if lacks else []) + others
            groups.setdefault(" and ".join(said), []).append(file)
        parts = []
        for said_, urls in groups.items():
            more = f" and {len(urls) - 2} more" if len(urls) > 2 else ""
            parts.append(f"{', '.join(repr(f) for f in urls[:2])}{more}: {said_}")
        self.files = list(by_file)
        super().__init__(
            f"{len(by_file)} of {n_files} files differ from the dataset's schema"
            + (f" ({reference})" if reference else "")
            + " in "
            + f"{len(errors)} branches: "
            + "; ".join(parts)
            + "\nset 'branches_policy: common' to use the branches every file has, or exclude these"
        )


def _kind(typename: str) -> str:
    return "jagged" if typename.endswith("[]") else "flat"


class CacheWriteError(Mlaas4hepError, OSError):
    """The decoded cache could not be written: its disk is full, or it is not writable.

    Never skipped by ``on_error: skip``: the files are good, the cache's disk is not.
    """


def cache_write_error(where: object, err: OSError) -> CacheWriteError:
    """A :class:`CacheWriteError` for ``err``, met writing below the cache directory ``where``.

    numpy reports a short write (a full disk) as ``OSError: N requested and M
    written``, with no errno: that says "full" too.
    """
    detail = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT) or " requested and " in str(err):
        return CacheWriteError(
            f"the disk holding the decoded cache {where} is full ({detail}): free space there, "
            "or set cache_dir to a folder on a larger disk, or lower cache_max_gb"
        )
    return CacheWriteError(f"cannot write the decoded cache {where}: {detail} (set cache_dir elsewhere)")


def skippable(err: BaseException) -> bool:
    """Whether ``on_error: skip`` may skip the file or range that raised ``err``.

    Bad files are skippable (corrupt, missing, another schema); a server that is
    down is not: the events are there, and skipping would lose them.
    """
    return (
        isinstance(err, Mlaas4hepError)
        and not getattr(err, "transient", False)
        and not isinstance(err, CacheWriteError)
    )


class StaleSpecsError(Mlaas4hepError):
    """Specs on disk were computed for other files or another configuration."""


class InvalidSetting(ConfigError):
    """A setting has a wrong type or value; ``key`` is its path, e.g. ``("files", 0, "label")``.

    :meth:`DatasetConfig.from_yaml` turns it into a :class:`ConfigError` that
    starts with the file and line of that key.
    """

    def __init__(self, key: tuple[str | int, ...], message: str):
        super().__init__(message)
        self.key = key


class GroupError(ConfigError):
    """A group is declared wrongly; ``key`` is where, from the group's name down.

    The configuration turns it into a message that starts with the file and
    line of that key.
    """

    def __init__(self, key: tuple[str | int, ...], message: str):
        super().__init__(message)
        self.key = key


class ConfigWarning(UserWarning):
    """A configuration key that is accepted but has no effect (MLaaS4HEP's ``params.json``)."""
