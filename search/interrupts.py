"""Ctrl-C and SIGTERM during a run: stop the trials, settle them, exit non-zero.

The first SIGINT or SIGTERM only sets a flag: the run stops its trials, records them FAIL
``interrupted`` (the next run reruns them first, from their checkpoints) and returns; the
CLI then exits with 128 + the signal number. A second signal raises KeyboardInterrupt at
once. Ray's own handlers (Tune's SIGINT handler, the runtime's SIGTERM abort) are replaced
for the duration of the run, and the previous handlers come back afterwards.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

WATCHED = (signal.SIGINT, signal.SIGTERM)


class InterruptWatch:
    """Context manager; :attr:`signal_name` is set once a signal arrived."""

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def signal_name(self) -> str | None:
        return signal.Signals(self.signal_number).name if self.signal_number else None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signal_number or 0)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.signal_number is not None:
            raise KeyboardInterrupt  # a second signal: stop now
        self.signal_number = number

    def __enter__(self) -> InterruptWatch:
        if threading.current_thread() is threading.main_thread():
            for number in WATCHED:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
