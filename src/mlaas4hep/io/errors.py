"""Errors of the streaming layer.

Every error names what went wrong *and where*: the file, the tree, the branch,
and what was expected, so that a user staring at a log from a grid job can act
on it without a debugger.
"""

from __future__ import annotations


class Mlaas4hepError(Exception):
    """Base class of every error raised on purpose by mlaas4hep."""

    def __reduce__(self):  # survive the trip back from a worker process
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls, args, state):
    err = cls.__new__(cls, *args)  # OSError subclasses need their own __new__
    err.args = args
    err.__dict__.update(state)
    return err


class ConfigError(Mlaas4hepError, ValueError):
    """The dataset configuration is invalid (a bad key, type or expression)."""


class FileOpenError(Mlaas4hepError, OSError):
    """A file could not be opened or read (missing, unreachable, not ROOT)."""

    def __init__(self, file: str, reason: str):
        self.file = file
        self.reason = reason
        super().__init__(f"cannot read file {file!r}: {reason}")


class CorruptFileError(FileOpenError):
    """A file opened but its content could not be decoded (truncated or corrupt)."""

    def __init__(self, file: str, reason: str, branch: str | None = None):
        self.branch = branch
        where = f" (branch {branch!r})" if branch else ""
        FileOpenError.__init__(self, file, f"corrupt or truncated data{where}: {reason}")


class TreeNotFoundError(Mlaas4hepError, KeyError):
    """The requested tree does not exist in a file."""

    def __init__(self, file: str, tree: str, available: list[str]):
        self.file, self.tree, self.available = file, tree, available
        super().__init__(f"no tree {tree!r} in file {file!r}; trees there: {available}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class BranchNotFoundError(Mlaas4hepError, KeyError):
    """A requested branch (or pattern) matches nothing in a file."""

    def __init__(self, file: str, branch: str, hint: str = ""):
        self.file, self.branch = file, branch
        msg = f"no branch matching {branch!r} in tree of file {file!r}"
        super().__init__(msg + (f"; {hint}" if hint else ""))

    def __str__(self) -> str:
        return self.args[0]


class UnsupportedBranchError(Mlaas4hepError, TypeError):
    """A branch holds a type that cannot become a numeric feature."""

    def __init__(self, file: str, branch: str, typename: str):
        self.file, self.branch, self.typename = file, branch, typename
        super().__init__(
            f"branch {branch!r} in file {file!r} has type {typename!r}; expected a number "
            "(bool, integer, float) or a jagged list of numbers. Exclude it with 'exclude:'"
        )


class StaleSpecsError(Mlaas4hepError):
    """Specs on disk were computed for other files or another configuration."""
