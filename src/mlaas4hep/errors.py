"""The base errors of mlaas4hep, shared by every layer.

Every error raised on purpose derives from :class:`Mlaas4hepError`, so that the
command line can print it in one or two lines (and a traceback only with
``--debug``), and so that errors raised in worker processes or on Dask workers
come back intact (:meth:`Mlaas4hepError.__reduce__`). Each layer defines its
own errors on top: :mod:`mlaas4hep.io.errors` (files, trees, branches),
:mod:`mlaas4hep.train.errors`, the server's :mod:`mlaas4hep.serve.errors`.
"""

from __future__ import annotations

from typing import Any, TypeVar

_E = TypeVar("_E", bound=BaseException)


class Mlaas4hepError(Exception):
    """Base class of every error raised on purpose by mlaas4hep.

    ``exit_status`` is what the command line exits with when it stops on the
    error: 1, a failure while running (a file, a server); 2, a mistake in what
    the user wrote (a configuration, a model file, a branch name).
    """

    exit_status: int = 1

    #: The retries made before the error (set by the dataset's tasks; see ``Dataset.report``).
    retry_events: list[dict[str, Any]]

    def __reduce__(self) -> tuple[Any, ...]:  # survive the trip back from a worker process
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[_E], args: tuple[Any, ...], state: dict[str, Any]) -> _E:
    err = cls.__new__(cls, *args)  # OSError subclasses need their own __new__
    err.args = args
    err.__dict__.update(state)
    return err


class ConfigError(Mlaas4hepError, ValueError):
    """A configuration is invalid (a bad key, type or expression)."""

    exit_status = 2
