"""Ctrl-C and SIGTERM during a run: stop the trials, settle them, exit non-zero.

While trials run, the first SIGINT or SIGTERM only sets a flag: the run stops its trials,
records them FAIL ``interrupted`` (the next run reruns them first, from their checkpoints)
and returns; the CLI then exits with 128 + the signal number. A second signal raises at
once. Outside that window (loading data, preparing the study, writing the summary) a signal
raises :class:`Interrupted` at once: there is nothing in flight to settle, and the cleanup
(lease, storage, Ray) runs as the exception unwinds. Ray's own handlers (Tune's SIGINT
handler, the runtime's SIGTERM abort) are replaced for the duration of the run, and the
previous handlers come back afterwards.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any

WATCHED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A SIGINT or SIGTERM that ends the run; ``exit_code`` is 128 + the signal number."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.exit_code = 128 + number
        super().__init__(signal.Signals(number).name)


class InterruptWatch:
    """Context manager over a whole run; :meth:`deferring` marks the window where a signal
    only sets :attr:`signal_number` (the trials are then stopped and settled)."""

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._deferring = False
        self._previous: dict[int, Any] = {}

    @property
    def signal_name(self) -> str | None:
        return signal.Signals(self.signal_number).name if self.signal_number else None

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self._deferring and self.signal_number is None:
            self.signal_number = number
            return
        raise Interrupted(number)  # a second signal, or nothing to settle: stop now

    def install(self) -> None:
        """(Re)install the handlers: Ray's start-up installs its own."""
        if threading.current_thread() is not threading.main_thread():
            return
        for number in WATCHED:
            previous = signal.signal(number, self._handle)
            self._previous.setdefault(number, previous)

    @contextmanager
    def deferring(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def __enter__(self) -> InterruptWatch:
        self.install()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
