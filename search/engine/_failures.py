"""Turning a trial's exception into a short, stable failure reason for the database."""

from __future__ import annotations

import errno
import traceback

import torch
from ray.exceptions import RayActorError

from model.errors import NonFiniteMetricError
from search.keys import Reason

MAX_ERROR_CHARS = 4000


def root_cause(error: BaseException) -> BaseException:
    """Unwrap Ray's task-error wrappers down to the exception the trial raised."""
    seen: set[int] = set()
    while id(error) not in seen:
        seen.add(id(error))
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException):
            error = cause
            continue
        break
    return error


def failure_reason(error: BaseException | None) -> str:
    """``nan@epoch N``, ``oom``, ``worker_died``, ``exception:TypeName``, or for an OS error
    with an errno ``exception:TypeName[ERRNO]`` (``exception:OSError[ENOSPC]``: a full disk),
    so that failures of one cause share one reason."""
    if error is None:
        return "exception:unknown"
    cause = root_cause(error)
    if isinstance(cause, NonFiniteMetricError):
        return cause.reason
    if isinstance(cause, torch.OutOfMemoryError):
        return Reason.OOM
    if isinstance(error, RayActorError) or isinstance(cause, RayActorError):
        return Reason.WORKER_DIED
    if isinstance(cause, OSError) and cause.errno in errno.errorcode:
        return f"exception:{type(cause).__name__}[{errno.errorcode[cause.errno]}]"
    return f"exception:{type(cause).__name__}"


def error_text(error: BaseException | None) -> str:
    """The error message and the tail of its traceback, bounded for a database column."""
    if error is None:
        return "the trial failed without an error message"
    cause = root_cause(error)
    text = "".join(traceback.format_exception(cause)).strip() or repr(cause)
    if cause is not error and str(error) and str(cause) not in text:
        text = f"{text}\n{error}"
    return text[-MAX_ERROR_CHARS:]
