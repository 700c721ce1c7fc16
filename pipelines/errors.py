"""User-facing errors. The CLI prints their message as one line and exits non-zero.

Every message names the problem and the fix, e.g.
``data.path 'x/' does not exist: check the path or URL (local path, s3://, gs://, memory://)``.
"""

from __future__ import annotations

from pipelines.redaction import redact_text
from vae.config import ConfigError


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


#: Everything the CLI reports as a one-line error instead of a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (PipelineError, ConfigError)

__all__ = ["USER_ERRORS", "ConfigError", "DataError", "ModelError", "PipelineError", "StorageError"]
