"""Errors a user can cause. The CLI prints them without a traceback and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: the message names the field, path or URL and what to do."""

    exit_code = 2


class ConfigError(UserError):
    """A malformed study file; ``path`` is the dotted field path (``asha.max_epochs``)."""

    def __init__(self, path: str, message: str, source: str | None = None) -> None:
        self.path = path
        self.message = message
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{path}: {message}")


class StorageError(UserError):
    """The storage URL cannot be opened, or holds something we cannot use."""


class StudyNotFoundError(UserError):
    """A study name that is not in the storage."""


class IncompatibleStudyError(UserError):
    """The study in the database was run with a different set-up (space, objective, plan)."""


class RunAbortedError(UserError):
    """The run could not go on (the study database became unreachable, a disk filled up):
    trials in flight are settled where possible, the rest by the next run."""

    exit_code = 1
