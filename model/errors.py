"""The errors a trial's set-up or training raises, importable without torch (the CLI and the
driver classify them without loading the training stack)."""

from __future__ import annotations

from typing import Any


class DataError(ValueError):
    """A data set that cannot be loaded; the message says which path and what to do."""


class PretrainedError(ValueError):
    """Weights that cannot be found or do not fit; the message says which file and why."""


class NonFiniteMetricError(FloatingPointError):
    """A loss or metric became NaN/Inf; ``reason`` is ``nan@epoch N``."""

    def __init__(self, epoch: int, metric: str) -> None:
        self.epoch = epoch
        self.metric = metric
        self.reason = f"nan@epoch {epoch}"
        super().__init__(f"{self.reason}: {metric} is not finite")

    def __reduce__(self) -> tuple[Any, ...]:
        # Survive pickling across process boundaries with the original arguments.
        return (type(self), (self.epoch, self.metric))
