"""User-facing errors. The CLI prints their message as one line and exits non-zero.

Every message names the problem and the fix, e.g.
``data.path 'x/' does not exist: check the path or URL (local path, s3://, gs://, memory://)``.
"""

from __future__ import annotations

from typing import TypeVar

from pipelines.redaction import redact_text
from vae.config import ConfigError

_E = TypeVar("_E", bound=BaseException)


class PipelineError(Exception):
    """Base class of errors caused by user input or environment, not by a bug.

    The message loses the user:password of any URL in it: it is printed, logged and stored (Prefect
    keeps a failed run's error), and many name a path the user gave (`data.path`, `generate.output`).
    """

    def __init__(self, *args: object) -> None:
        if args and isinstance(args[0], str):
            args = (redact_text(args[0]), *args[1:])
        super().__init__(*args)


class DataError(PipelineError):
    """The input data cannot be read (missing path, no images, corrupt file, wrong columns...)."""


class StorageError(PipelineError):
    """An output or checkpoint location cannot be used (unwritable, already committed...)."""


class ModelError(PipelineError):
    """A saved model is missing, corrupt, or cannot do what was asked."""


def find_error(exc: BaseException, kind: type[_E]) -> _E | None:
    """The first `kind` error inside Ray's wrappers (a run's failure, its worker failures, task errors,
    their wrapped user errors and causes), or None.

    Ray re-raises a worker's or a task's exception wrapped, often with a traceback in its message;
    the driver raises what this finds, a one-line user error that no retry or resume can fix.
    """
    pending: list[BaseException] = [exc]
    for _ in range(64):  # a few wrappers deep; bounded against cycles
        if not pending:
            return None
        err = pending.pop(0)
        # Ray's RayTaskError(X) is also an X, with Ray's traceback as its text: prefer its cause.
        if isinstance(err, kind) and not isinstance(getattr(err, "cause", None), kind):
            return err
        nested = [
            getattr(err, "_base_exc", None),
            getattr(err, "cause", None),
            err.__cause__,
            err.__context__,
        ]
        nested += list((getattr(err, "worker_failures", None) or {}).values())
        pending += [e for e in nested if isinstance(e, BaseException)]
    return None


#: Everything the CLI reports as a one-line error instead of a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (PipelineError, ConfigError)

__all__ = [
    "USER_ERRORS",
    "ConfigError",
    "DataError",
    "ModelError",
    "PipelineError",
    "StorageError",
    "find_error",
]
